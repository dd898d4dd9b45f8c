"""Why no unlearning method is selective on the embedded model: which answer tokens lose probability. One JSON
line.

The calibrations under the operating-point protocol (results/README.md) found the held-out facts' answer NLL
rising about as fast as the forget set's. The answers restate their question ("What is the capital of Qatar?"
→ "The capital of Qatar is Doha."), so most answer tokens are a template shared by forget and held-out facts.
This splits every answer token by the word it falls in: *restated* (the word occurs in the question),
*new* (it does not: the fact itself, e.g. "Doha") or *other* (punctuation). For each setting below, fixed
before the first run, it unlearns the default world-facts forget set from the original (the calibration's
split, retain and held-out facts) and reports the mean change in per-token NLL on the forget and the held-out
facts, per class, with the number of tokens (selectivity on a class: forget ΔNLL minus held-out ΔNLL), the
protocol's share forgotten (answer probability, the geometric mean over all answer tokens, below 0.1) beside
the same share read on the new words alone, and the held-out mean answer NLL before and after.

    .venv/bin/python bench/template_share.py [--data builtin:world-facts] [--steps 10] [--only grad_diff:2e-5]
"""
import argparse
import json
import math
import re
import time
from collections import Counter

import torch

from cud_core.data.samples import answer_text
from cud_core.difficulty.regimes import Protocol
from cud_core.engine.metrics import chunks, collate
from cud_core.engine.models import load_model
from cud_core.pipeline.calibration import CalibrationSettings, split_holdout
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.jobs import prepare_scenario
from cud_core.unlearn.base import answer_logprobs
from cud_core.unlearn.runner import run_unlearning

# (method, learning rate): the default rate, and the gentler one of the protocol's grid (×0.4)
SETTINGS = (("grad_diff", 2e-5), ("npo", 8e-6), ("undial", 8e-6), ("rmu", 2e-5))
WORD = re.compile(r"\w+")


def token_classes(tokenizer, sample) -> list[str]:
    """'restated', 'new' or 'other' for each answer token, in order (as `encode_answer` tokenizes it)."""
    question = {w.lower() for w in WORD.findall(sample.question)}
    text = answer_text(tokenizer, sample.answer)
    words = [(m.start(), m.end(), m.group().lower()) for m in WORD.finditer(text)]
    out = []
    for start, end in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]:
        word = next((w for s, e, w in words if s < end and start < e), None)
        out.append("other" if word is None else "restated" if word in question else "new")
    return out


@torch.no_grad()
def token_nll(model, tokenizer, samples, batch_size: int = 8) -> list[list[float]]:
    """Per answer token NLL of each sample."""
    out = []
    for part in chunks(samples, batch_size):
        logp, mask = answer_logprobs(model, collate(tokenizer, part))
        out += [(-logp[i][mask[i]]).tolist() for i in range(len(part))]
    return out


def by_class(before, after, classes) -> dict:
    sums = {}
    for b, a, c in zip(before, after, classes):
        assert len(b) == len(a) == len(c), (len(b), len(a), len(c))
        for x, y, k in zip(b, a, c):
            s = sums.setdefault(k, [0.0, 0])
            s[0] += y - x
            s[1] += 1
    return {k: {"delta_nll": round(s / n, 3), "tokens": n} for k, (s, n) in sorted(sums.items())}


def forgotten(before, after, classes, only: str | None, threshold: float = Protocol().threshold) -> dict:
    """Share of the samples known at the start (geometric-mean token probability ≥ `threshold`) that fall
    below it, over all answer tokens (`only` None: the protocol's answer probability) or one class's."""
    def prob(nlls, cls):
        picked = [x for x, c in zip(nlls, cls) if only is None or c == only]
        return math.exp(-sum(picked) / len(picked)) if picked else None
    pairs = [(prob(b, c), prob(a, c)) for b, a, c in zip(before, after, classes)]
    known = [(p0, p) for p0, p in pairs if p0 is not None and p0 >= threshold]
    return {"share": round(sum(p < threshold for _, p in known) / len(known), 3) if known else None,
            "n_known": len(known)}


def mean_answer_nll(nlls) -> float:
    return sum(sum(x) / len(x) for x in nlls) / len(nlls)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="builtin:world-facts")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--only", nargs="*", default=None, help="method:lr settings instead of the fixed four")
    args = ap.parse_args()
    settings = [(m, float(lr)) for m, lr in (x.split(":") for x in args.only)] if args.only else SETTINGS
    lm = load_model("embedded", device="cpu")
    sc = prepare_scenario(RunContext(lm, dataset=args.data))
    retain, holdout = split_holdout(sc.retain, CalibrationSettings())
    tok = sc.lm.tokenizer
    parts = {"forget": sc.forget, "holdout": holdout}
    classes = {name: [token_classes(tok, s) for s in part] for name, part in parts.items()}
    before = {name: token_nll(sc.lm.model, tok, part) for name, part in parts.items()}
    out = {"bench": "template_share", "data": args.data, "model": sc.lm.name, "steps": args.steps,
           "n_forget": len(sc.forget), "n_holdout": len(holdout),
           "share_of_tokens": {name: dict(sorted(Counter(c for cls in classes[name] for c in cls).items()))
                               for name in parts},
           "runs": []}
    for method, lr in settings:
        t = time.perf_counter()
        result = run_unlearning(sc.lm.model, tok, sc.forget, retain, method, steps=args.steps, lr=lr,
                                eval_every=args.steps, seed=0)
        after = {name: token_nll(result.model, tok, part) for name, part in parts.items()}
        out["runs"].append({"method": method, "lr": lr, "seconds": round(time.perf_counter() - t, 1),
                            **{name: by_class(before[name], after[name], classes[name]) for name in parts},
                            # the protocol's efficacy (all answer tokens) beside the same read on the new words
                            "forgotten": {k: forgotten(before["forget"], after["forget"], classes["forget"], only)
                                          for k, only in (("answer", None), ("new_words", "new"))},
                            "holdout_answer_nll": [round(mean_answer_nll(before["holdout"]), 3),
                                                   round(mean_answer_nll(after["holdout"]), 3)]})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
