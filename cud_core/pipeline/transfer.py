"""`transfer`: one calibration's anchors applied to another calibration's forget samples, on the same
model weights (across datasets: world-facts anchors on fictitious authors, and back).

The target calibration's scoring run is compared with the anchors the other calibration built from all
its labels (`predict.predicted_cud`: the same fingerprint and attribution settings are required), and
the representation baseline the same way where both stored hidden states (`_representation`: the anchors
calibration's labelled samples → mean easy and mean hard feature vectors, each calibration's features
standardised on its own forget set). Samples of the target that were also in the
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
    if n_boot < 20 or n_permutations < 1:
        raise ValueError(f"--bootstrap {n_boot} / --permutations {n_permutations}: a CI needs at least 20 resamples "
                         "and a permutation p at least one shuffle")
    score_id = ws.load_artifact(target_id, "score_run")
    if not score_id or ws.get_run(score_id) is None:
        raise ValueError(f"--target {target_id}: its scoring run is not in {ws.root} (an incomplete copy?)")
    predicted = predicted_cud(ws, score_id, anchors_id)
    results, source_results = ws.load_results(target_id), ws.load_results(anchors_id)
    texts = {(s.question, s.answer) for s in ws.load_samples(anchors_id)}
    shared = {s.id for s in ws.load_samples(target_id) if (s.question, s.answer) in texts}
    ids = sorted(i for i in results if i not in shared)
    if len(ids) < 3:
        raise ValueError(f"calibration {target_id} has {len(ids)} forget samples outside calibration {anchors_id}: "
                         "too few to evaluate")
    missing = [i for i in ids if results[i].get("cud_oof") is None]
    if missing:
        raise ValueError(f"calibration {target_id} has no out-of-fold CUD for {len(missing)} samples (e.g. "
                         f"{missing[0]}): rerun its `calibrate` command with this version first")
    y = np.array([hardness(results[i]) for i in ids])
    z = np.array([results[i]["predictors"]["original_nll"] for i in ids])
    labelled = np.array([j for j, i in enumerate(ids) if results[i].get("label")], int)
    positive = np.array([results[ids[j]]["label"] == "hard" for j in labelled], bool)
    idx = stats.boot_indices(len(ids), seed, n_boot)
    columns = {"cud_transfer": np.array([predicted["cud"][i] for i in ids])}
    unavailable = {}
    try:
        columns["representation_transfer"] = _representation(ws, anchors_id, source_results, target_id, results, ids)
    except ValueError as exc:
        unavailable["representation_transfer"] = str(exc)
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
              "n_boot": n_boot, "n_permutations": n_permutations, "predictors": predictors, "unavailable": unavailable,
              "transfer_minus_own": measures.paired_difference(columns["cud_transfer"], columns["cud_own"], y, idx)}
    report["verdict"] = measures.verdict(report)
    config = {"anchors": anchors_id, "target": target_id, "seed": seed, "n_boot": n_boot,
              "n_permutations": n_permutations}
    run_id = (ws.find_run(RUN_KIND, target["model"], target["dataset"], config)
              or ws.create_run(RUN_KIND, target["model"], target["dataset"], config))
    ws.save_artifact(run_id, ARTIFACT, report)
    ws.set_status(run_id, "done", f"anchors of {anchors_id} on {len(ids)} samples of {target_id}")
    return run_id


def _representation(ws: Workspace, anchors_id: str, source_results: dict, target_id: str, results: dict,
                    ids: list[str]) -> np.ndarray:
    """The hidden-state baseline with the anchors calibration's labels: each calibration's features
    standardised on its own forget set, as in its own validation (`representation.standardise`: this uses no
    outcome, and an offset between the two datasets does not enter the distances); the mean easy and mean
    hard vectors of the anchors calibration's labelled samples; the position of each of `ids` between them.
    ValueError when either calibration stored no hidden states or the labels lack a class."""
    keys, blocks = [], []
    for tag, run_id, own in (("s", anchors_id, source_results), ("t", target_id, results)):
        hidden = load_hidden(ws, run_id)
        members = sorted(i for i in own if i in hidden)
        if not hidden or (tag == "t" and not set(ids) <= set(members)):
            raise ValueError(f"calibration {run_id} stored no hidden states for its forget samples")
        keys += [f"{tag}:{i}" for i in members]
        blocks.append(representation.standardise(torch.stack([hidden[i].float() for i in members])))
    labels = {f"s:{i}": r["label"] for i, r in source_results.items() if r.get("label")}
    index = {k: j for j, k in enumerate(keys)}
    return representation.anchor_scores(torch.cat(blocks), [index[f"t:{i}"] for i in ids], labels, keys)


def reports_for(ws: Workspace, target_id: str) -> list[dict]:
    """The stored transfer reports whose target is `target_id`, newest first."""
    return [r for r in (ws.load_artifact(run["id"], ARTIFACT) for run in ws.list_runs(RUN_KIND)
                        if run["config"].get("target") == target_id and run["status"] == "done") if r]
