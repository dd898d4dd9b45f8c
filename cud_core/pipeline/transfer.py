"""`transfer`: one calibration's anchors applied to another calibration's forget samples, on the same
model weights (across datasets: world-facts anchors on fictitious authors, and back).

The target calibration's scoring run is compared with the anchors the other calibration built from all
its labels (`predict.predicted_cud`: the same fingerprint and attribution settings are required), and
the representation baseline the same way where both stored hidden states (the anchors calibration's
labelled samples → mean easy and mean hard feature vectors; the features of both calibrations' samples
standardised together, `representation.standardise`). Samples of the target that were also in the
anchors' calibration (the same question and answer) are left out: for them it would be in-sample.
Beside them, on the same samples and resamples: the target's own out-of-fold CUD and original NLL
(`difficulty.transfer`). The report is the artifact "transfer_report" of a run of kind "transfer".
"""
from __future__ import annotations

import numpy as np
import torch

from cud_core.difficulty import representation, stats
from cud_core.difficulty import transfer as measures
from cud_core.pipeline.calibration import load_hidden
from cud_core.pipeline.predict import finished_run, predicted_cud
from cud_core.store.workspace import Workspace

RUN_KIND, ARTIFACT = "transfer", "transfer_report"


def hardness(result: dict) -> float:
    """A sample's realised hardness in its calibration: −NLL after unlearning, mean over the methods
    (each already a mean over seeds), as the validation's primary target."""
    return -float(np.mean([d["nll_after"] for d in result["realised"].values()]))


def transfer(ws: Workspace, anchors_id: str, target_id: str, seed: int = 0, n_boot: int = stats.N_BOOT,
             n_permutations: int = measures.N_PERMUTATIONS) -> str:
    """Evaluate `anchors_id`'s anchors on `target_id`'s forget samples; returns the transfer run's id."""
    if anchors_id == target_id:
        raise ValueError(f"--anchors and --target are both {anchors_id}: that is the calibration's in-sample CUD")
    source, target = finished_run(ws, anchors_id), finished_run(ws, target_id, "--target")
    predicted = predicted_cud(ws, ws.load_artifact(target_id, "score_run"), anchors_id)
    results, source_results = ws.load_results(target_id), ws.load_results(anchors_id)
    texts = {(s.question, s.answer) for s in ws.load_samples(anchors_id)}
    shared = {s.id for s in ws.load_samples(target_id) if (s.question, s.answer) in texts}
    ids = sorted(i for i in results if i not in shared)
    if len(ids) < 3:
        raise ValueError(f"calibration {target_id} has {len(ids)} forget samples outside calibration {anchors_id}: "
                         "too few to evaluate")
    y = np.array([hardness(results[i]) for i in ids])
    z = np.array([results[i]["predictors"]["original_nll"] for i in ids])
    labelled = np.array([j for j, i in enumerate(ids) if results[i].get("label")], int)
    positive = np.array([results[ids[j]]["label"] == "hard" for j in labelled], bool)
    idx = stats.boot_indices(len(ids), seed, n_boot)
    columns = {"cud_transfer": np.array([predicted["cud"][i] for i in ids])}
    hidden_s, hidden_t = load_hidden(ws, anchors_id), load_hidden(ws, target_id)
    if hidden_s and hidden_t:
        labels = {f"s:{i}": r["label"] for i, r in source_results.items() if r.get("label") and i in hidden_s}
        keys = sorted(labels) + [f"t:{i}" for i in ids]
        matrix = representation.standardise(torch.stack(
            [(hidden_s if k[0] == "s" else hidden_t)[k[2:]].float() for k in keys]))
        columns["representation_transfer"] = representation.anchor_scores(
            matrix, list(range(len(labels), len(keys))), labels, keys)
    columns["cud_own"] = np.array([results[i]["cud_oof"] for i in ids])
    columns["original_nll"] = z
    predictors = {name: measures.evaluate(x, y, z, positive, labelled, idx, seed,
                                          n_permutations if name.endswith("_transfer") else 0)
                  for name, x in columns.items()}
    report = {"anchors": anchors_id, "target": target_id, "anchors_data": source["dataset"],
              "target_data": target["dataset"], "model": target["model"],
              "model_fingerprint": target["config"].get("model_fingerprint"), "anchor_kind": predicted["anchors"],
              "similarity": predicted["similarity"], "n": len(ids), "left_out": sorted(shared & set(results)),
              "source_labels": {lab: sum(r.get("label") == lab for r in source_results.values())
                                for lab in ("easy", "hard")},
              "target_methods": sorted(next(iter(results.values()))["realised"]),
              "n_boot": n_boot, "n_permutations": n_permutations, "predictors": predictors,
              "transfer_minus_own": measures.paired_difference(columns["cud_transfer"], columns["cud_own"], y, idx)}
    report["verdict"] = measures.verdict(report)
    config = {"anchors": anchors_id, "target": target_id, "seed": seed, "n_boot": n_boot,
              "n_permutations": n_permutations}
    run_id = (ws.find_run(RUN_KIND, target["model"], target["dataset"], config)
              or ws.create_run(RUN_KIND, target["model"], target["dataset"], config))
    ws.save_artifact(run_id, ARTIFACT, report)
    ws.set_status(run_id, "done", f"anchors of {anchors_id} on {len(ids)} samples of {target_id}")
    return run_id


def reports_for(ws: Workspace, target_id: str) -> list[dict]:
    """The stored transfer reports whose target is `target_id`, newest first."""
    return [r for r in (ws.load_artifact(run["id"], ARTIFACT) for run in ws.list_runs(RUN_KIND)
                        if run["config"].get("target") == target_id and run["status"] == "done") if r]
