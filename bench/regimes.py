"""What a calibration's unlearning cost, per stage and per method, under the operating-point protocol: one JSON
line. Read from a finished calibration (no model work): the stored stage times, each unit's seconds, every
learning rate a method's first seed tried with its verdict, steps run and steps per second (training and
evaluations together), its spillover (held-out NLL rise over the forget set's mean NLL rise, at its last
evaluation), and the operating point. `--before FILE` adds the stage times of an older
calibration's stored report (`report --format json`, e.g. results/world-facts.json) for a before/after.

    .venv/bin/python bench/regimes.py --workspace W [--run R] [--before results/world-facts.json]
"""
import argparse
import json
import statistics

from cud_core.pipeline.outcomes import curve_artifact
from cud_core.pipeline.unlearning import search_artifact
from cud_core.store.workspace import Workspace


def spillover(h0: float, h1: float, first: dict, last: dict) -> float | None:
    forget = statistics.mean(last[i] - first[i] for i in first)
    return round((h1 - h0) / forget, 2) if forget > 0 else None


def tries(ws: Workspace, run_id: str, method: str, seed: int) -> list[dict]:
    """Every stored try of one unit's search: its rate, steps run, seconds, steps per second."""
    out, k = [], 0
    while (c := ws.load_artifact(run_id, search_artifact(method, seed, k))) is not None:
        steps, seconds = len(c["losses"]), c["elapsed"][-1]
        first, last = c["curve"][0], c["curve"][-1]
        out.append({"lr": c["settings"]["lr"], "steps": steps, "evaluations": len(c["steps"]),
                    "seconds": round(seconds, 1), "steps_per_s": round(steps / seconds, 3) if seconds else None,
                    # the table, at this try's last evaluation (its point, or where it ended)
                    "retain_nll": [round(c["retain_curve"][0], 2), round(c["retain_curve"][-1], 2)],
                    "holdout_nll": [round(c["holdout"][0]["nll"], 2), round(c["holdout"][-1]["nll"], 2)],
                    "forget_nll_median": [round(statistics.median(first.values()), 2),
                                          round(statistics.median(last.values()), 2)],
                    "n_delta_nll_below_0.1": sum(last[i] - first[i] < 0.1 for i in first),
                    # held-out NLL rise per nat of mean forget NLL rise: 0 is selective, 1 unlearns the kind
                    "spillover": spillover(c["holdout"][0]["nll"], c["holdout"][-1]["nll"], first, last),
                    "n_prob_below_0.1": sum(p < 0.1 for p in c["prob_curve"][-1].values()), "n": len(first)})
        k += 1
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--run", default=None,
                    help="a calibration that ran its unlearning (default: the newest; one where no method "
                         "reached an operating point ends 'failed' and still holds its regimes)")
    ap.add_argument("--before", default=None, help="an older calibration's stored JSON report, for its stage times")
    args = ap.parse_args()
    ws = Workspace(args.workspace)
    run_id = args.run or next(r["id"] for r in ws.list_runs("calibrate") if r["status"] in ("done", "failed"))
    config = ws.get_run(run_id)["config"]
    timings = ws.load_artifact(run_id, "timings", {})
    seeds = config["seeds"]
    methods = {}
    for method in config["methods"]:
        first = ws.load_artifact(run_id, curve_artifact(method, seeds[0], seeds)) or {}
        methods[method] = {
            "verdict": first.get("verdict"), "lr": first.get("settings", {}).get("lr"),
            "point_step": first["steps"][first["point"]] if first.get("point") is not None else None,
            "unit_s": {str(s): timings.get(f"unlearn_{method}_seed{s}_s") for s in seeds},
            "tries": {str(s): tries(ws, run_id, method, s) for s in seeds}}
    unlearning = sum(v for k, v in timings.items() if k.startswith("unlearn_") and isinstance(v, (int, float)))
    line = {"run": run_id, "protocol": config.get("protocol"), "stages_s": {
        "scoring": timings.get("scoring_s"), "unlearning": round(unlearning, 1),
        "predictors": timings.get("predictors_s"), "validation": timings.get("cud_and_validation_s")},
        "total_s": round(sum(v or 0 for v in (timings.get("scoring_s"), unlearning, timings.get("predictors_s"),
                                               timings.get("cud_and_validation_s"))), 1),
        "methods": methods}
    if args.before:
        with open(args.before, encoding="utf-8") as f:
            old = json.load(f).get("timings", {})
        old_unlearning = sum(v for k, v in old.items() if k.startswith("unlearn_"))
        line["before"] = {"stages_s": {"scoring": old.get("scoring_s"), "unlearning": round(old_unlearning, 1),
                                       "predictors": old.get("predictors_s"),
                                       "validation": old.get("cud_and_validation_s")},
                          "unit_s": {k: v for k, v in old.items() if k.startswith("unlearn_")}}
    print(json.dumps(line))


if __name__ == "__main__":
    main()
