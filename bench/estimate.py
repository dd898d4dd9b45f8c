"""The scoring cost estimate's error on the embedded model (issue #11 item 4): for each attribution
method, the estimate (timing probe + pass count) against the measured wall time of the same scoring
run in a fresh workspace, in one process. Prints one JSON line.

    .venv/bin/python bench/estimate.py [--samples 16] [--methods eap,eap-ig-inputs]
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cud_core.estimate import estimate_score  # noqa: E402
from cud_core.jobs import prepare_scenario  # noqa: E402
from cud_core.models import load_model  # noqa: E402
from cud_core.scoring import ScoreSettings, score_run  # noqa: E402
from cud_core.store import Workspace  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--methods", default="eap,eap-ig-inputs")
    args = p.parse_args()
    lm = load_model("embedded")
    sc = prepare_scenario(lm, "builtin:world-facts", forget_fraction=0.2, seed=0, need_retain=False)
    samples = sc.forget[:args.samples]
    out = {"model": lm.name, "samples": len(samples), "cells": []}
    for method in args.methods.split(","):
        settings = ScoreSettings(method=method, generation=False)
        e = estimate_score(lm, samples, settings)
        with tempfile.TemporaryDirectory() as folder:
            t = time.perf_counter()
            score_run(lm, samples, settings, Workspace(Path(folder) / "ws"), "builtin:world-facts")
            measured = time.perf_counter() - t
        out["cells"].append({"method": method, "estimate_s": round(e["seconds"], 1), "measured_s": round(measured, 1),
                             "error": round(e["seconds"] / measured - 1, 3), "probe_s": e["probe_s"],
                             "peak_estimate_bytes": e["peak_bytes"]})
    out["max_abs_error"] = max(abs(c["error"]) for c in out["cells"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
