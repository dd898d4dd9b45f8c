"""Unlearning runs shared between calibrations of one workspace.

The unlearning outcomes of a calibration depend on the model weights, the forget and retain samples,
the method with its hyper-parameters, the seed and the run length, learning rate, batch size and
evaluation interval — not on attribution, labels, anchors or validation settings. So a calibration that
differs from an earlier one only there (e.g. `--preset paper` after a default calibration: other
attribution, q and anchors) takes the earlier one's curve of each (method, seed) instead of unlearning
again, after a check that the code still produces that run: the first (up to) two training steps are
rerun and their losses, and the step-0 evaluation, must match the stored ones (relative difference
≤ `TOLERANCE`: a changed loss, optimizer, batch order or evaluation shows up there). The reused curve
records where it came from and the check's largest difference.
"""
from __future__ import annotations

import math

from cud_core.unlearn import run_unlearning

# what an unlearning run depends on, among a calibration's stored settings (besides the method's hyper)
# (and "forget_sets": a calibration of several forget sets unlearns each set on its own, in runs of its own)
KEYS = ("forget", "retain", "model_fingerprint", "steps", "lr", "eval_every", "batch_size", "protocol", "forget_sets")
TOLERANCE = 1e-4
CHECK_STEPS = 2


def donors(workspace, kind: str, model: str, dataset: str, config: dict, method: str, seed: int, artifact_of,
           exclude: str | None = None):
    """Each (run id, stored curve) of the same (method, seed) unlearning run stored by another run of
    `kind` for `model` and `dataset` whose stored `config` agrees with `config` on everything
    unlearning depends on, newest first. `artifact_of(method, seed, seeds)`: the curve's artifact name
    in a run with those seeds; `exclude`: the asking run itself."""
    for other in workspace.list_runs(kind):
        c = other["config"]
        seeds = c.get("seeds", [c.get("seed")])
        if other["id"] == exclude or (other["model"], other["dataset"]) != (model, dataset):
            continue
        if any(c.get(k) != config.get(k) for k in KEYS) or c.get("hyper", {}).get(method) != config["hyper"][method] \
                or seed not in seeds:
            continue
        curve = workspace.load_artifact(other["id"], artifact_of(method, seed, seeds))
        if curve is not None and "reused_from" not in curve:  # originals only: one source per curve
            yield other["id"], curve


def check(lm, forget, retain, method: str, seed: int, unlearning: dict, curve: dict,
          should_stop=None) -> tuple[int, float] | None:
    """(steps rerun, largest relative difference) between a fresh start of the run (its first
    `CHECK_STEPS` losses and its step-0 evaluation) and the stored `curve`, or None when stopped;
    `unlearning`: CalibrationSettings.unlearning()."""
    k = min(CHECK_STEPS, unlearning["steps"], len(curve.get("losses") or []))
    if k < 1 or not curve.get("curve"):
        return 0, math.inf  # nothing to compare with: run it again
    fresh = run_unlearning(lm.model, lm.tokenizer, forget, retain, method, steps=k, lr=curve["settings"]["lr"],
                           eval_every=k, seed=seed, batch_size=unlearning["batch_size"], checkpoint_every=0,
                           should_stop=should_stop)
    if fresh.stopped:
        return None
    pairs = list(zip(fresh.losses[:k], curve["losses"][:k]))
    pairs += [(fresh.curve[0][i], curve["curve"][0].get(i, math.nan)) for i in fresh.curve[0]]
    pairs += [(fresh.retain_curve[0], curve["retain_curve"][0])]
    return k, max(_relative(a, b) for a, b in pairs)


def _relative(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-12)
