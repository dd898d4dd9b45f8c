"""Disjoint forget sets: a calibration's forget set cut into `CalibrationSettings.forget_sets` parts matched
on the original answer NLL (`prospective.split_parts`), each part unlearned on its own under the
calibration's protocol, the outcomes pooled.

This is TOFU's design (Maini et al., 2024, "TOFU: A Task of Fictitious Unlearning for LLMs": forget01/05/10,
a small forget set per unlearning run): on a 135M model a forget set of ~35 facts can be forgotten at
held-out utility within the bound where ~120 at once cannot, so n ≥ 100 labelled samples take several runs.
Every part sees the same retain samples and the same held-out utility set; the other parts' samples are in
neither loss. Each part is a run of kind "calibrate-part" holding its units' curves (resumable like the
calibration's own); the calibration stores the parts as its artifact "forget_sets" and reads its outcomes
and regimes back through them (`outcomes.load_outcomes`, `outcomes.load_regimes`).
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

from cud_core.data.samples import Sample
from cud_core.difficulty.prospective import split_parts
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.outcomes import PART_KIND, SETS_ARTIFACT
from cud_core.pipeline.unlearning import calibration_runs

# calibration_runs reports its unlearning within this span of its context's progress
_SPAN = (0.3, 0.55)


def unlearn_part(ctx: RunContext, kind: str, config: dict, samples: list[Sample], train_retain: list[Sample],
                 holdout: list[Sample], settings, rates: dict | None, start: float, span: float,
                 label: str) -> str | None:
    """Unlearn `samples` alone (every method and seed of `settings`; `rates`: each method's fixed learning
    rate, None: the protocol's search) into the run of `kind` found by `config` (created with the samples if
    new), reporting within `start`–`start + span` of `ctx`; its id once done, None when stopped."""
    ws = ctx.workspace
    pid = ws.find_run(kind, ctx.lm.name, ctx.dataset, config)
    if pid is None:
        pid = ws.create_run(kind, ctx.lm.name, ctx.dataset, config)
        ws.save_samples(pid, samples)
    t = time.time()
    sub = ctx.but(run_id=pid, timings={}, progress=lambda f, m: ctx.report(
        start + span * (f - _SPAN[0]) / _SPAN[1], f"{label} ({len(samples)} samples): {m}"))
    if not calibration_runs(sub, samples, train_retain, holdout, settings, rates):
        return None
    ws.set_status(pid, "done")
    ctx.timings.setdefault(f"{label.replace(' ', '_')}_s", round(time.time() - t, 1))
    ws.save_artifact(ctx.run_id, "timings", ctx.timings)
    return pid


def unlearn_sets(ctx: RunContext, forget: list[Sample], train_retain: list[Sample], holdout: list[Sample],
                 settings, nll: dict[str, float], config_of: Callable[[list[Sample], object], dict]) -> bool:
    """Stage 2 of a calibration with `settings.forget_sets` > 1: cut `forget` into its sets by the original
    NLL `nll` (once; stored), unlearn each alone; whether all are done (False: stopped, status set).
    `config_of(samples, settings)`: the calibration's key of a calibration of `samples` alone."""
    ws, run_id = ctx.workspace, ctx.run_id
    sets = ws.load_artifact(run_id, SETS_ARTIFACT)
    if sets is None:
        parts = split_parts([s.id for s in forget], nll, settings.forget_sets, settings.seed)
        sets = [{"ids": ids, "run": None} for ids in parts]
        ws.save_artifact(run_id, SETS_ARTIFACT, sets)
    by_id = {s.id: s for s in forget}
    single = replace(settings, forget_sets=1)
    n = len(sets)
    for k, part in enumerate(sets):
        if ctx.stop_run():
            return False
        samples = [by_id[i] for i in part["ids"]]
        config = {**config_of(samples, single), "forget_set": k + 1, "calibration": run_id}
        pid = unlearn_part(ctx, PART_KIND, config, samples, train_retain, holdout, single, None,
                           _SPAN[0] + _SPAN[1] * k / n, _SPAN[1] / n, f"forget set {k + 1} of {n}")
        if pid is None:
            ws.set_status(run_id, "stopped", f"stopped during forget set {k + 1} of {n}; rerun to resume")
            return False
        part["run"] = pid
        ws.save_artifact(run_id, SETS_ARTIFACT, sets)
    return True
