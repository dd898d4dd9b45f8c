"""What the "what does the circuit add" stages cost on CPU: one JSON line.

- model stages (the embedded model, the first `--samples` world facts, `--repeats` alternating runs):
  the hidden-state means of the representation baseline against one plain forward pass over the same
  samples (MRD costs 1 + 10 such passes; `mrd_answer` reuses MRD's draws, so it costs nothing more);
- validation stages (with `--workspace`, `--run`: a finished calibration, read from the workspace, no model
  work): the whole `analyse` and, separately, the representation cross-fit, the incremental-value
  tests, leave-one-method-out and the depth test it now contains.

    .venv/bin/python bench/claims.py [--samples 64] [--workspace W --run R]
"""
import argparse
import json
import time

import numpy as np

from cud_core.data.samples import load_builtin
from cud_core.difficulty import claims, incremental, representation, stats
from cud_core.difficulty.analysis import PRIMARY, Inputs, Settings, analyse, hardness, seed_mean_nll
from cud_core.difficulty.crossfit import assign_folds, fold_labels
from cud_core.difficulty.cud import label_easy_hard
from cud_core.difficulty.predictors import hidden_state_means, token_logprobs
from cud_core.engine.graph import Graph
from cud_core.engine.models import load_model
from cud_core.pipeline.calibration import load_hidden
from cud_core.pipeline.outcomes import load_outcomes
from cud_core.store.score_files import load_circuits, load_edge_scores
from cud_core.store.workspace import Workspace


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def model_stages(n: int, repeats: int) -> dict:
    lm = load_model("embedded", device="cpu")
    samples = load_builtin("world-facts")[:n]
    hidden_s, forward_s = [], []
    for _ in range(repeats):  # alternating, so drift on a shared machine hits both
        hidden_s.append(timed(lambda: hidden_state_means(lm.model, lm.tokenizer, samples))[1])
        forward_s.append(timed(lambda: token_logprobs(lm.model, lm.tokenizer, samples))[1])
    h, f = min(hidden_s), min(forward_s)
    return {"samples": n, "hidden_states_s": round(h, 2), "one_forward_pass_s": round(f, 2),
            "hidden_over_forward": round(h / f, 2), "hidden_over_mrd": round(h / (11 * f), 3)}


def validation_stages(root: str, run_id: str) -> dict:
    ws = Workspace(root)
    run = ws.get_run(run_id)
    c = run["config"]
    score_id = ws.load_artifact(run_id, "score_run")
    scored = ws.load_results(score_id)
    ids = [s.id for s in ws.load_samples(run_id)]
    outcomes, steps = load_outcomes(ws, run_id, c)
    graph = Graph.from_model(load_model("embedded", device="cpu").model)  # the calibrations' models share it
    edge_scores = load_edge_scores(ws, score_id, graph.n_edges)
    circuits = load_circuits(ws, score_id, graph.n_edges)
    predictors = ws.load_artifact(run_id, "predictors") or {}
    baselines = {"original_nll": {i: scored[i]["answer_nll"] for i in ids},
                 "circuit_depth": {i: scored[i]["circuit"]["depth_com"] for i in ids},
                 "longest_path": {i: scored[i]["circuit"]["longest_path"] for i in ids}, **predictors}
    s = Settings(q=c["q"], folds=c["folds"], seed=c["seed"], binarise=c["score"]["binarise"],
                 n_edges=c["score"]["n_edges"], similarity=c["similarity"], n_boot=c["n_boot"],
                 n_permutations=c["n_permutations"], anchors=c["anchors"])
    inputs = Inputs(ids, outcomes, steps, baselines, edge_scores, circuits, graph, load_hidden(ws, run_id))
    _, total = timed(lambda: analyse(inputs, s))
    nll = seed_mean_nll(inputs)
    labels = label_easy_hard(nll, s.q)
    folds = assign_folds(ids, labels, s.folds, s.seed)
    y = hardness(inputs)[PRIMARY]
    idx = stats.boot_indices(len(ids), s.seed, s.n_boot)
    labelled = np.array([j for j, i in enumerate(ids) if i in labels], int)
    positive = np.array([labels[ids[j]] == "hard" for j in labelled], bool)
    z = np.array([baselines["original_nll"][i] for i in ids])
    out = {"run": run_id, "n": len(ids), "analyse_s": round(total, 1)}
    if inputs.hidden:
        out["representation_s"] = round(timed(lambda: representation.cross_fit(
            ids, inputs.hidden, folds, fold_labels(ids, nll, s.q, folds)))[1], 2)
    out["incremental_one_predictor_s"] = round(timed(lambda: incremental.incremental_value(
        z, np.random.default_rng(0).normal(size=len(ids)), y["mean"], np.array([folds[i] for i in ids]), labelled,
        positive, idx, s.n_permutations, s.seed, s.n_boot))[1], 2)
    out["leave_one_method_out_s"] = round(timed(lambda: claims.leave_one_method_out(
        ids, nll, y, claims.consensus_fit(ids, inputs, s), folds, idx))[1], 2)
    out["depth_s"] = round(timed(lambda: claims.depth({"d": z}, y["mean"], labelled, positive, idx))[1], 3)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workspace", default=None)
    ap.add_argument("--run", default=None)
    args = ap.parse_args()
    line = {"model": model_stages(args.samples, args.repeats)}
    if args.workspace:
        ws = Workspace(args.workspace)
        run_id = args.run or next(r["id"] for r in ws.list_runs("calibrate") if r["status"] == "done")
        line["validation"] = validation_stages(args.workspace, run_id)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
