"""How repeatable MRD is: one JSON line.

MRD (`cud_core.difficulty.predictors.mrd`, its authors' definition: σ = 1e-5 absolute noise, K = 10 draws) on a
stored calibration's forget set with two independent noise seeds; the Spearman ρ between the two
is MRD's own test–retest reliability, the ceiling of any correlation it can show with an outcome.
Also ρ with the calibration's stored MRD (seed 0: should be 1) and with the original answer NLL.
    .venv/bin/python bench/mrd.py --workspace W [--run R] [--seeds 0,1]
"""
import argparse
import json
import sys
import time

from cud_core.difficulty.predictors import MRD_DRAWS, MRD_SIGMA, mrd
from cud_core.engine.models import load_model
from cud_core.store.workspace import Workspace


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--run", default=None, help="a finished calibration (default: the newest)")
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args()
    from scipy.stats import spearmanr

    ws = Workspace(args.workspace)
    run_id = args.run or next(r["id"] for r in ws.list_runs("calibrate") if r["status"] == "done")
    run = ws.get_run(run_id)
    forget = ws.load_samples(run_id)
    lm = load_model("embedded", device="cpu")
    if lm.name != run["model"]:
        sys.exit(f"--run {run_id}: a calibration of {run['model']}, not of the embedded model")
    ids = [s.id for s in forget]
    by_seed, seconds = {}, []
    for seed in (int(s) for s in args.seeds.split(",")):
        t = time.time()
        values = mrd(lm.model, lm.tokenizer, forget, seed=seed)["mrd"]
        seconds.append(round(time.time() - t, 1))
        by_seed[seed] = [values[i] for i in ids]
    seeds = list(by_seed)
    stored = ws.load_artifact(run_id, "predictors")["mrd"]
    results = ws.load_results(ws.load_artifact(run_id, "score_run"))
    rho = lambda a, b: round(float(spearmanr(a, b).statistic), 4)  # noqa: E731
    print(json.dumps({
        "bench": "mrd", "model": lm.name, "run": run_id, "n_samples": len(ids), "sigma": MRD_SIGMA,
        "draws": MRD_DRAWS, "seeds": seeds, "seconds_per_mrd": seconds,
        "test_retest_spearman": rho(by_seed[seeds[0]], by_seed[seeds[1]]) if len(seeds) > 1 else None,
        "spearman_with_stored": rho(by_seed[seeds[0]], [stored[i] for i in ids]),
        "spearman_with_original_nll": rho(by_seed[seeds[0]], [results[i]["answer_nll"] for i in ids]),
        "median": sorted(by_seed[seeds[0]])[len(ids) // 2]}))


if __name__ == "__main__":
    main()
