"""CUD for samples a calibration never saw: the tool used as the paper intends,
before unlearning, on new forget requests.

A scoring run of the new samples (same model weights, same attribution and circuit settings as the
calibration's own scoring) is compared with the saved anchors of the calibration's headline CUD
(its consensus pair, or one pair per method with CUD the mean over methods), built from *all* its
labelled samples. For a new sample this is a genuine prediction; for a sample that was in
the calibration it is that sample's in-sample CUD (`cud_in_sample`), and it is flagged so.
"""
from __future__ import annotations

import torch

from cud_core.data.samples import Sample
from cud_core.difficulty.cud import Anchors
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.scoring import ScoreSettings, score_run
from cud_core.store.score_files import load_circuits
from cud_core.store.workspace import Workspace

ARTIFACT = "predicted_cud"
MUST_MATCH = ("method", "steps", "baseline", "metric", "binarise", "n_edges")


def anchor_settings(workspace: Workspace, calibration_id: str) -> ScoreSettings:
    """The attribution settings new samples must be scored with to be compared with these anchors."""
    return ScoreSettings.of_run(finished_run(workspace, calibration_id))


def finished_run(workspace: Workspace, calibration_id: str, flag: str = "--anchors") -> dict:
    """The finished calibration `calibration_id` (ValueError naming `flag` otherwise)."""
    cal = workspace.get_run(calibration_id)
    if cal is None or cal["kind"] != "calibrate":
        raise ValueError(f"{flag} {calibration_id!r}: no calibration with this id in {workspace.root}")
    if cal["status"] != "done":
        raise ValueError(f"{flag} {calibration_id!r}: the calibration is {cal['status']}, so it has no "
                         f"{'anchors' if flag == '--anchors' else 'labelled outcomes'}")
    return cal


def headline_anchors(workspace: Workspace, calibration_id: str) -> tuple[str, list[Anchors]]:
    """The anchors behind the calibration's headline CUD: ("consensus", [its pair]) or ("per-method",
    one pair per method: CUD is their mean)."""
    cal = finished_run(workspace, calibration_id)
    if cal["config"].get("anchors") == "per-method":
        names = [f"anchors-{m}" for m in cal["config"]["methods"]]
        missing = [n for n in names if not workspace.tensor_path(calibration_id, n).is_file()]
        if missing:
            raise ValueError(f"calibration {calibration_id} uses per-method anchors but has no {', '.join(missing)}: "
                             "an older CUD Explorer wrote it; run its `calibrate` command again with this "
                             "version to store every method's anchors")
        return "per-method", [Anchors.load(workspace, calibration_id, n) for n in names]
    return "consensus", [Anchors.load(workspace, calibration_id)]


def predict(workspace: Workspace, score_run_id: str, calibration_id: str) -> dict:
    """Each sample of `score_run_id` scored against the anchors of `calibration_id`; stored on the
    scoring run as artifact "predicted_cud" and returned."""
    result = predicted_cud(workspace, score_run_id, calibration_id)
    workspace.save_artifact(score_run_id, ARTIFACT, result)
    return result


def predicted_cud(workspace: Workspace, score_run_id: str, calibration_id: str) -> dict:
    """`predict`'s result, computed and not stored (ValueError when the scoring run's model weights or
    attribution settings differ from the calibration's)."""
    cal = finished_run(workspace, calibration_id)
    run = workspace.get_run(score_run_id)
    if run["config"].get("model_fingerprint") != cal["config"].get("model_fingerprint"):
        raise ValueError(f"scoring run {score_run_id} used other model weights than calibration {calibration_id}: "
                         "its circuits cannot be compared with those anchors")
    wanted = cal["config"]["score"]
    differ = [k for k in MUST_MATCH if run["config"].get(k) != wanted.get(k)]
    if differ:
        raise ValueError(f"scoring run {score_run_id} differs from calibration {calibration_id} in "
                         + ", ".join(f"{k} ({run['config'].get(k)!r} vs {wanted.get(k)!r})" for k in differ))
    kind, anchors = headline_anchors(workspace, calibration_id)
    circuits = load_circuits(workspace, score_run_id, anchors[0].easy.numel())
    ids = sorted(circuits)
    similarity = cal["config"].get("similarity", "cosine")
    matrix = torch.stack([circuits[i].float() for i in ids]) if ids else None
    values = torch.stack([a.score_many(matrix, similarity) for a in anchors]).mean(0).tolist() if ids else []
    seen = {s.id for s in workspace.load_samples(calibration_id)}
    result = {"anchors_run": calibration_id, "anchors": kind, "similarity": similarity, "cud": dict(zip(ids, values)),
              "in_calibration": sorted(i for i in ids if i in seen),
              "note": f"predicted with the {kind} anchors of {calibration_id} (built from all its labels); for "
                      "samples that were in that calibration this is their in-sample CUD"}
    return result


def score_and_predict(ctx: RunContext, samples: list[Sample], settings: ScoreSettings, calibration_id: str | None,
                      extra_config: dict | None = None) -> tuple[str | None, dict | None]:
    """Score `samples` into a (new or resumed) scoring run (`scoring.score_run`; with a calibration,
    `settings` are its `anchor_settings`), then, with `calibration_id`, predict their CUD against that
    calibration's anchors (`predict`). Returns (the run id, the prediction); the prediction is None
    without a calibration or when the run did not finish (stopped)."""
    run_id = score_run(ctx, samples, settings, extra_config=extra_config)
    if calibration_id is None or not run_id or ctx.workspace.get_run(run_id)["status"] != "done":
        return run_id, None
    return run_id, predict(ctx.workspace, run_id, calibration_id)
