"""The cost estimates' error on the embedded model: for each attribution method,
the scoring estimate (timing probe + pass count) against the measured wall time of the same scoring
run, and the calibration estimate against a small calibration (its stages too), each in a fresh
workspace, in one process. Prints one JSON line.

    .venv/bin/python bench/estimate.py [--samples 16] [--methods eap,eap-ig-inputs]
        [--calibrate-samples 24 --calibrate-methods grad_diff,npo,rmu --calibrate-steps 10]   (0 samples: skip)
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

from cud_core.engine.models import load_model
from cud_core.pipeline.calibration import CalibrationSettings, calibrate
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.estimate import estimate_calibrate, estimate_score
from cud_core.pipeline.jobs import prepare_scenario
from cud_core.pipeline.scoring import ScoreSettings, score_run
from cud_core.store.workspace import Workspace


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--methods", default="eap,eap-ig-inputs")
    p.add_argument("--calibrate-samples", type=int, default=24)
    p.add_argument("--calibrate-methods", default="grad_diff,npo,rmu")
    p.add_argument("--calibrate-steps", type=int, default=10)
    args = p.parse_args()
    lm = load_model("embedded")
    sc = prepare_scenario(RunContext(lm, dataset="builtin:world-facts"), forget_fraction=0.2, seed=0)
    samples = sc.forget[:args.samples]
    out = {"model": lm.name, "samples": len(samples), "cells": []}
    for method in args.methods.split(","):
        settings = ScoreSettings(method=method, generation=False)
        e = estimate_score(lm, samples, settings)
        with tempfile.TemporaryDirectory() as folder:
            t = time.perf_counter()
            score_run(RunContext(lm, Workspace(Path(folder) / "ws"), "builtin:world-facts"), samples, settings)
            measured = time.perf_counter() - t
        out["cells"].append({"method": method, "estimate_s": round(e["seconds"], 1), "measured_s": round(measured, 1),
                             "error": round(e["seconds"] / measured - 1, 3), "probe_s": e["probe_s"],
                             "peak_estimate_bytes": e["peak_bytes"]})
    if args.calibrate_samples:
        forget = sc.forget[:args.calibrate_samples]
        settings = CalibrationSettings(methods=tuple(args.calibrate_methods.split(",")), steps=args.calibrate_steps,
                                       eval_every=5, seeds=(0,), n_permutations=50, n_boot=500)
        e = estimate_calibrate(lm, forget, sc.retain, settings)
        with tempfile.TemporaryDirectory() as folder:
            ws = Workspace(Path(folder) / "ws")
            t = time.perf_counter()
            run = calibrate(RunContext(lm, ws, "builtin:world-facts"), forget, sc.retain, settings)
            measured = time.perf_counter() - t
            timings = ws.load_artifact(run, "timings")
        stages = {"scoring_s": timings["scoring_s"], "predictors_s": timings["predictors_s"],
                  "validation_s": timings["cud_and_validation_s"],
                  "unlearning_s": round(sum(v for k, v in timings.items() if k.startswith("unlearn_")), 1)}
        out["cells"].append({"method": "calibrate", "samples": len(forget), "settings": {
            "methods": list(settings.methods), "steps": settings.steps, "seeds": list(settings.seeds),
            "n_permutations": settings.n_permutations}, "estimate_s": round(e["seconds"], 1),
            "measured_s": round(measured, 1), "error": round(e["seconds"] / measured - 1, 3), "probe_s": e["probe_s"],
            "stages_estimate_s": {k: round(v, 1) for k, v in e["stages"].items()}, "stages_measured_s": stages})
    out["max_abs_error"] = max(abs(c["error"]) for c in out["cells"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
