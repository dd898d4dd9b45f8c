"""Peak memory of real scoring (and unlearning) runs vs cud_core.engine.memory's estimates. Prints one JSON line.

Each case runs in a fresh Python process: load the model, estimate the peak BEFORE the run (from the
model's dimensions, the longest encoded sample and the batch size), run `scoring.score_run` on
`--batches` batches of built-in world-facts samples into a temporary workspace (what `python -m
cud_core score` does), and read the process's peak resident memory (VmHWM). The estimate is per batch:
with two or more batches, memory that one batch leaves behind shows as a measured peak above it.
rel_error = (estimate − measured) / measured; the target is |rel_error| ≤ 0.30.

    python bench/memory.py                          # embedded SmolLM2 at 1,4,8,16 + tiny models (~4 min, 2 cores)
    python bench/memory.py --sizes 1,4 --tiny-sizes 8 --no-unlearning   # quicker
    python bench/memory.py --sizes 32 --tiny-models ""                  # one big case (~9 GB)
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cud_core.data.samples import load_builtin
from cud_core.engine.memory import estimate_scoring_peak, estimate_unlearning_peak, longest_sequence
from cud_core.engine.models import load_model
from cud_core.engine.tiny import tiny_model
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.scoring import ScoreSettings, score_run
from cud_core.store.workspace import Workspace
from cud_core.unlearn.runner import run_unlearning

ROOT = Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("CUD_NO_PROGRESS", "1")

TINY = "llama,gpt2,gpt_neox,llama:d_model=256:n_layers=4:n_heads=8:n_kv_heads=2:context=512," \
       "gpt2:d_model=256:n_layers=4:n_heads=8:context=512"


def load(spec: str, dtype: str = "float32"):
    """`embedded` or `tiny:FAMILY[:key=value...]` (tiny_model's config overrides; always float32)."""
    if spec == "embedded":
        return load_model("embedded", device="cpu", dtype=dtype)
    family, *overrides = spec.split(":")[1:]
    return tiny_model(family, **{k: int(v) for k, v in (o.split("=") for o in overrides)})


def peak_rss() -> int:
    try:  # VmHWM resets at exec; ru_maxrss would keep a large parent's peak across fork + exec
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def worker(case: dict) -> dict:
    import torch

    torch.set_num_threads(case["threads"])
    lm = load(case["model"], case["dtype"])
    loaded = peak_rss()
    samples = load_builtin("world-facts")
    B = case["batch"]
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        if case["kind"] == "score":
            group = samples[:B * case["batches"]]
            n = len(group)
            seq_len = longest_sequence(lm.tokenizer, group)
            estimate = estimate_scoring_peak(lm.model, seq_len, B, case["method"], case["steps"])
            settings = ScoreSettings(method=case["method"], steps=case["steps"], batch_size=B)
            score_run(RunContext(lm, Workspace(tmp), "bench"), group, settings)
        else:
            forget, retain = samples[:B], samples[B: 2 * B]
            n = 2 * B
            seq_len = longest_sequence(lm.tokenizer, forget + retain)
            estimate = estimate_unlearning_peak(lm.model, seq_len, B)
            run_unlearning(lm.model, lm.tokenizer, forget, retain, method="npo", steps=2, eval_every=2,
                           batch_size=B, retain_eval=B)
    return {"seq_len": seq_len, "samples": n, "estimate": estimate, "measured": peak_rss(), "after_load": loaded,
            "seconds": round(time.time() - t0, 1)}


def run_case(case: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(case)], capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode != 0:
        return {**case, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    got = json.loads(out.stdout.strip().splitlines()[-1])
    rel = (got["estimate"] - got["measured"]) / got["measured"]
    row = {"kind": case["kind"], "model": case["model"], "batch": case["batch"],
           **({"dtype": case["dtype"]} if case["dtype"] != "float32" else {}), "seq_len": got["seq_len"],
           "samples": got["samples"], "measured_gb": round(got["measured"] / 1e9, 3),
           "estimated_gb": round(got["estimate"] / 1e9, 3),
           "rel_error": round(rel, 3), "after_load_gb": round(got["after_load"] / 1e9, 3), "seconds": got["seconds"]}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,4,8,16", help="batch sizes on the embedded model ('' for none)")
    p.add_argument("--tiny-models", default=TINY, help="tiny model specs FAMILY[:key=value...], comma separated")
    p.add_argument("--tiny-sizes", default="8,32", help="batch sizes on each tiny model")
    p.add_argument("--unlearning-sizes", default="4", help="batch sizes of an NPO unlearning run on the embedded "
                                                           "model (2 steps)")
    p.add_argument("--no-unlearning", action="store_true")
    p.add_argument("--method", default="eap-ig-inputs")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", default="float32", help="dtype of the embedded model")
    p.add_argument("--batches", type=int, default=2, help="scoring batches per case (≥ 2 shows a leak across batches)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    common = {"method": args.method, "steps": args.steps, "threads": args.threads, "batches": args.batches}
    cases = [{"kind": "score", "model": "embedded", "batch": b, "dtype": args.dtype, **common}
             for b in sizes(args.sizes)]
    for spec in filter(None, args.tiny_models.split(",")):
        cases += [{"kind": "score", "model": f"tiny:{spec}", "batch": b, "dtype": "float32", **common}
                  for b in sizes(args.tiny_sizes)]
    if not args.no_unlearning:
        cases += [{"kind": "unlearn", "model": "embedded", "batch": b, "dtype": args.dtype, **common}
                  for b in sizes(args.unlearning_sizes)]
    t0 = time.time()
    rows = [run_case(c) for c in cases]
    errors = [abs(r["rel_error"]) for r in rows if "rel_error" in r]
    print(json.dumps({"bench": "memory", "method": args.method, "steps": args.steps, "dtype": args.dtype,
                      "batches": args.batches, "cases": rows,
                      "max_abs_rel_error": max(errors, default=None),
                      "within_30pct": bool(errors) and max(errors) <= 0.30 and len(errors) == len(rows),
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
