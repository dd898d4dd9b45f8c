"""Unlearning regimes: whether an unlearning run forgot, what it cost the model, and the operating point
at which a run counts as evidence of a sample's difficulty.

Forget efficacy at evaluation t, over the forget samples i (TOFU, Maini et al. 2024, arXiv:2401.06121,
§2.5, reads forgetting from the forget set's answer probability; open-unlearning
`src/evals/metrics/memorization.py`, `probability`):
- `relative_prob`: median_i p_t(y_i|x_i) / p_0(y_i|x_i) (1 = nothing forgotten, 0 = all of it);
- `share_forgotten`: among the samples the model knew (p_0 ≥ `threshold`, `forgotten_at`'s threshold),
  the share with p_t(y_i|x_i) < `threshold` (a sample below it from the start was never forgotten);
- `mean_delta_nll`: mean_i NLL_t(i) − NLL_0(i).
Model utility on held-out known facts no loss saw (TOFU §2.5's model utility on retained and real-world
facts, there a harmonic mean of probability, ROUGE-L and truth ratio; here its parts, side by side):
- `nll`: mean answer NLL (teacher-forced);
- `exact_match`: mean teacher-forced answer-token accuracy (open-unlearning `exact_memorization`);
- `rouge_l`: mean ROUGE-L recall of a greedy answer against the reference (TOFU; open-unlearning `rouge`,
  `rougeL_recall`), measured at step 0 and at the run's last evaluation (generation is too slow for
  every evaluation).

The operating point, fixed in code before any outcome is seen (`Protocol`): the first evaluation t > 0
at which `share_forgotten` ≥ `efficacy` while the held-out NLL stays within the utility bound of step
0's: NLL_t ≤ NLL_0 + ln(1 + bound) nats (version 2: the geometric-mean probability of the held-out answer
tokens keeps ≥ 1/(1 + bound) of the original's, 80% at bound 0.25). Version 1 bounded the ratio,
NLL_t ≤ (1 + bound)·NLL_0; that bound degenerates on facts the model has memorised (NLL_0 = 0.046 nats
after fine-tuning on the fictitious authors: +0.012 nats allowed, less than a few steps' noise, with
held-out exact match unchanged at 0.98), so version 2 replaced it before any CUD outcome under the
protocol existed (docs/method.md, "Operating points"); reports stored under version 1 keep its bound.
The first evaluation that breaks the utility bound before the efficacy is
reached ends the run as *collapsed*; a run that reaches its step budget without either is *inert*. The
criterion reads only an aggregate of the forget set (a share, blind to every predictor), so it cannot
favour one predictor's per-sample ranking over another's (docs/method.md, "Operating points").
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

VALID, INERT, COLLAPSED = "valid", "inert", "collapsed"


@dataclass(frozen=True)
class Protocol:
    """The operating-point criterion and the learning-rate search, stated before any run."""
    efficacy: float = 0.5        # share of forget samples below `threshold` answer probability
    utility_bound: float = 0.25  # held-out NLL at most ln(1.25) nats above the original's (version 1: 25% above)
    threshold: float = 0.1       # answer probability under which a sample counts as forgotten
    # learning rates tried, as multiples of the method's default, only when the default finds no valid point:
    # upwards after an inert run, downwards after a collapsed one (at most 1 + 2 runs per method)
    up: tuple[float, ...] = (2.5, 5.0)
    down: tuple[float, ...] = (0.4, 0.16)
    version: int = 2             # of the utility bound (the module docstring); 1 in reports that predate it

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Protocol:
        """The protocol `as_dict` stored (in a run's config or report)."""
        return cls(**{"version": 1, **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}})


PROTOCOL = Protocol()


def efficacy(nll: dict[str, float], prob: dict[str, float], nll0: dict[str, float], prob0: dict[str, float],
             threshold: float) -> dict:
    """Forget efficacy of one evaluation (`nll`, `prob`: per sample) against step 0's (`nll0`, `prob0`)."""
    ids = list(nll0)
    ratio = [prob[i] / prob0[i] if prob0[i] > 0 else 1.0 for i in ids]
    known = [i for i in ids if prob0[i] >= threshold]
    return {"relative_prob": float(np.median(ratio)),
            "share_forgotten": sum(prob[i] < threshold for i in known) / len(known) if known else 0.0,
            "mean_delta_nll": float(np.mean([nll[i] - nll0[i] for i in ids]))}


def allowed_rise(nll_0: float, protocol: Protocol = PROTOCOL) -> float:
    """How far (nats) the held-out NLL may rise above step 0's `nll_0` and stay within the bound."""
    return math.log1p(protocol.utility_bound) if protocol.version >= 2 else protocol.utility_bound * nll_0


def within_bound(nll_t: float, nll_0: float, protocol: Protocol = PROTOCOL) -> bool:
    return math.isfinite(nll_t) and nll_t <= nll_0 + allowed_rise(nll_0, protocol)


def bound_text(p: dict | Protocol) -> str:
    """The utility bound of a protocol (or its stored dict) in words."""
    p = p if isinstance(p, Protocol) else Protocol.from_dict(p)
    if p.version >= 2:
        return (f"held-out NLL at most ln {1 + p.utility_bound:g} = {math.log1p(p.utility_bound):.2f} nats above "
                f"step 0's (the held-out answers keep ≥ {1 / (1 + p.utility_bound):.0%} of their probability)")
    return f"held-out NLL within +{p.utility_bound:.0%} of step 0's"


def verdict(curve: dict, protocol: Protocol = PROTOCOL) -> tuple[str, int | None]:
    """(VALID and the index of the operating point's evaluation, or INERT / COLLAPSED and None) of a stored
    curve (`unlearning.curve_payload`: "curve", "prob_curve", "holdout" per evaluation, step 0 first)."""
    nll0, prob0 = curve["curve"][0], curve["prob_curve"][0]
    h0 = curve["holdout"][0]["nll"]
    for t in range(1, len(curve["steps"])):
        if not within_bound(curve["holdout"][t]["nll"], h0, protocol):
            return COLLAPSED, None
        e = efficacy(curve["curve"][t], curve["prob_curve"][t], nll0, prob0, protocol.threshold)
        if e["share_forgotten"] >= protocol.efficacy:
            return VALID, t
    return INERT, None


def stop_rule(protocol: Protocol = PROTOCOL):
    """A runner `stop_when(result)`: True once the run has found its operating point or collapsed."""
    def stop(result) -> bool:
        return verdict(as_curve(result), protocol)[0] != INERT
    return stop


def as_curve(result) -> dict:
    """The fields `verdict` reads, from a runner's UnlearnResult."""
    return {"steps": result.steps, "curve": result.curve, "prob_curve": result.prob_curve,
            "holdout": result.holdout_curve}


def next_lr(default: float, tried: list[tuple[float, str]], protocol: Protocol = PROTOCOL) -> float | None:
    """The next learning rate of the search after runs `tried` [(lr, verdict)], or None when it ends:
    a valid run, a verdict that flipped (inert at one rate, collapsed at the next: no valid window at this
    budget) or the grid used up."""
    if not tried:
        return default
    verdicts = [v for _, v in tried]
    if VALID in verdicts or len(set(verdicts)) > 1:
        return None
    factors = protocol.up if verdicts[0] == INERT else protocol.down
    return default * factors[len(tried) - 1] if len(tried) - 1 < len(factors) else None


def point_summary(curve: dict, index: int, protocol: Protocol = PROTOCOL) -> dict:
    """Efficacy and held-out utility of evaluation `index` of a stored curve, and its step (utility None
    for a run without held-out samples)."""
    held = curve.get("holdout") or []
    at, first = (held[index], held[0]) if held else ({}, {})
    return {"step": curve["steps"][index],
            **efficacy(curve["curve"][index], curve["prob_curve"][index], curve["curve"][0],
                       curve["prob_curve"][0], protocol.threshold),
            "holdout_nll": at.get("nll"), "holdout_nll_0": first.get("nll"),
            "holdout_exact_match": at.get("exact_match"), "holdout_exact_match_0": first.get("exact_match")}


def trajectory(curve: dict, protocol: Protocol = PROTOCOL) -> list[dict]:
    """`point_summary` of every evaluation: the efficacy-vs-utility curve over steps."""
    return [point_summary(curve, t, protocol) for t in range(len(curve["steps"]))]


def sentence(found: dict) -> str:
    """Which methods a calibration's labels rest on (`outcomes.load_regimes`), in one sentence."""
    voting = [m for m, r in found.items() if r["functional"]]
    rejected = [f"{m} ({', '.join(sorted({s['verdict'] for s in r['search']} or {'no valid point'}))})"
                for m, r in found.items() if not r["functional"]]
    text = (f"The labels rest on {len(voting)} of {len(found)} unlearning methods, each at its operating point: "
            f"{', '.join(voting) or 'none'}")
    return text + (f"; not functional at this budget: {', '.join(rejected)}." if rejected else ".")


COLUMNS = ("lr", "step", "share forgotten", "median p / p₀", "mean ΔNLL", "held-out NLL (step 0 → here)",
           "held-out exact match", "held-out ROUGE-L")


def _num(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def rows(found: dict) -> list[dict]:
    """One row per method and seed: verdict, learning rate, the operating point's step, efficacy and held-out
    utility there (the last evaluation where no point was found), beside step 0's utility."""
    out = []
    for method, r in found.items():
        for seed, s in r["seeds"].items():
            if s["verdict"] == "skipped":
                out.append({"method": method, "seed": seed, "verdict": "skipped (first seed found no point)",
                            **dict.fromkeys(COLUMNS, "–")})
                continue
            rouge, rouge0 = s.get("holdout_rouge"), s.get("holdout_rouge_0")
            out.append({"method": method, "seed": seed, "verdict": s["verdict"], "lr": f"{s['lr']:.2g}",
                        "step": str(s["step"]), "share forgotten": f"{s['share_forgotten']:.2f}",
                        "median p / p₀": f"{s['relative_prob']:.2f}", "mean ΔNLL": f"{s['mean_delta_nll']:.2f}",
                        "held-out NLL (step 0 → here)": f"{s['holdout_nll_0']:.2f} → {s['holdout_nll']:.2f}",
                        "held-out exact match": f"{s['holdout_exact_match_0']:.2f} → {s['holdout_exact_match']:.2f}",
                        "held-out ROUGE-L": f"{_num(rouge0)} → {_num(rouge)}"})
    return out
