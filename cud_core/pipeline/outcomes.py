"""A calibration's unlearning outcomes (stage 2 of `calibration`): every (method, seed) run, each
stored as a curve artifact — read back when the calibration already has it, taken from another
calibration of the workspace when the code reproduces it (`reuse`), or run here (checkpointed, with a
live curve) or on a cluster's workers (`executor`).
"""
from __future__ import annotations

import time

from cud_core.difficulty.cud import realised_difficulty
from cud_core.pipeline import reuse
from cud_core.pipeline.reattribution import reattribute
from cud_core.store.workspace import Workspace
from cud_core.unlearn import run_unlearning

RUN_KIND = "calibrate"  # the runs that store these outcomes (calibration.RUN_KIND)


def units(settings) -> list[tuple[str, int]]:
    """Every (method, seed) of a calibration, in the order they run (seed by seed)."""
    return [(m, seed) for seed in settings.seeds for m in settings.methods]


def reattributed(settings, seed: int) -> bool:
    """Whether the unit's unlearned copy is re-attributed (`--diff-circuits`, first seed): such a unit
    needs the copy in memory, so it is never reused from another calibration."""
    return settings.diff_circuits and seed == settings.seeds[0]


def left(workspace: Workspace, run_id: str | None, settings) -> list[tuple[str, int]]:
    """The units the calibration `run_id` (None: not created yet) still has to store: no curve yet,
    or a re-attributed unit without its circuit diff."""
    def stored(method, seed):
        if run_id is None or workspace.load_artifact(run_id, curve_artifact(method, seed, settings.seeds)) is None:
            return False
        return not reattributed(settings, seed) or workspace.load_artifact(run_id, f"circuit_diff-{method}") is not None
    return [u for u in units(settings) if not stored(*u)]


def donors(workspace: Workspace, run: dict, settings, method: str, seed: int, exclude: str | None = None):
    """`reuse.donors` of one unit for a calibration whose stored row (or would-be row) is `run`
    (model, dataset, config); nothing for re-attributed units."""
    if reattributed(settings, seed):
        return iter(())
    return reuse.donors(workspace, RUN_KIND, run["model"], run["dataset"], run["config"], method, seed,
                        curve_artifact, exclude=exclude)


def unlearn_all(lm, forget, retain, settings, workspace, dataset, run_id, report, should_stop, executor, timings,
                stopped) -> bool:
    """Every (method, seed) unit not stored yet; False when stopped. Here: one after the other, with
    checkpoints and a live curve; on a cluster: all units at once on the workers (each from scratch),
    the driver storing each curve as it arrives."""
    all_units = units(settings)
    todo = reuse_curves(lm, forget, retain, settings, workspace, run_id, left(workspace, run_id, settings), report,
                        timings, should_stop)
    if todo is None:
        stopped()  # should_stop fired during a check: marks the run stopped
        return False
    if executor is not None and executor.remote and todo:
        t, k = time.time(), len(all_units) - len(todo)
        report(0.3, f"unlearning: {len(todo)} runs ({settings.steps} steps each) on the cluster")
        jobs = [(m, seed, forget, retain, settings.unlearning()) for m, seed in todo]
        for (method, seed), curve in zip(todo, executor.map(
                unlearning_unit, jobs, should_stop=should_stop,
                progress=lambda m: (workspace.touch(run_id), report(0.3 + 0.55 * k / len(all_units), f"unlearning: {m}")))):
            timings[f"unlearn_{method}_seed{seed}_s"] = curve.pop("wall_s")
            workspace.save_artifact(run_id, curve_artifact(method, seed, settings.seeds), curve)
            k += 1
            workspace.save_artifact(run_id, "timings", timings)
            report(0.3 + 0.55 * k / len(all_units), f"unlearning: {k}/{len(all_units)} runs done ({method}, seed {seed}); "
                                                f"{executor.status()}")
        timings["unlearning_cluster_s"] = round(time.time() - t, 1)
        if k < len(all_units):
            workspace.set_status(run_id, "stopped", "stopped during unlearning; rerun to resume")
            return False
        return True
    for method, seed in todo:
        k = all_units.index((method, seed))
        if stopped():
            return False
        t = time.time()
        base = 0.3 + 0.55 * k / len(all_units)  # unlearning spans 30–85%
        unit = f"{method}, seed {seed} ({k + 1}/{len(all_units)})"
        checkpoint = workspace.checkpoint_path(run_id, f"{method}-{seed}")
        report(base, f"unlearning with {unit}: evaluating step 0 on {len(forget)} forget samples")
        result = _unlearn(lm, (method, seed, forget, retain, settings.unlearning()), checkpoint=checkpoint,
                          should_stop=should_stop, callback=lambda e, base=base, unit=unit: (
                              workspace.touch(run_id), report(base + 0.55 / len(all_units) * e["step"] / max(1, settings.steps),
                                                              f"unlearning with {unit}: step {e['step']}/{settings.steps}")))
        if result.stopped:
            workspace.set_status(run_id, "stopped", f"stopped during {unit}; rerun to resume")
            return False
        workspace.save_artifact(run_id, curve_artifact(method, seed, settings.seeds), curve_payload(result))
        checkpoint.unlink(missing_ok=True)
        timings[f"unlearn_{method}_seed{seed}_s"] = round(time.time() - t, 1)
        if reattributed(settings, seed):  # the unlearned copy's circuits, while in memory
            t = time.time()
            if reattribute(lm, result.model, forget, settings.score, workspace, dataset, run_id,
                           reference=forget + retain, artifact=f"circuit_diff-{method}", should_stop=should_stop,
                           progress=lambda f, m, unit=unit: report(base + 0.55 / len(all_units), f"{unit}: {m}")) is None:
                workspace.set_status(run_id, "stopped", f"stopped while re-attributing {unit}; rerun to resume")
                return False
            timings[f"reattribute_{method}_s"] = round(time.time() - t, 1)
        workspace.save_artifact(run_id, "timings", timings)
        del result
    return True


def reuse_curves(lm, forget, retain, settings, workspace, run_id, todo, report, timings, should_stop=None) -> list:
    """Store the curve of every (method, seed) in `todo` that another calibration of this workspace
    already ran with the same unlearning settings, once `reuse.check` confirms the code reproduces it
    (`reuse`); returns the units still to run, or None when stopped. Not for units whose unlearned
    copy is re-attributed."""
    run, rest = workspace.get_run(run_id), []
    for method, seed in todo:
        reused = False
        for donor, curve in donors(workspace, run, settings, method, seed, exclude=run_id):
            t = time.time()
            report(0.3, f"unlearning: checking that {method}, seed {seed} of {donor} can be reused "
                        f"(its first {reuse.CHECK_STEPS} steps again)")
            checked = reuse.check(lm, forget, retain, method, seed, settings.unlearning(), curve, should_stop)
            if checked is None:
                return None
            steps, diff = checked
            if diff > reuse.TOLERANCE:
                report(0.3, f"unlearning: {method}, seed {seed} of {donor} differs from a fresh start "
                            f"(relative {diff:.1e})")
                continue
            workspace.save_artifact(run_id, curve_artifact(method, seed, settings.seeds), {
                **curve, "reused_from": donor, "reuse_check": {"steps": steps, "max_relative_difference": diff}})
            timings[f"unlearn_{method}_seed{seed}_s"] = round(time.time() - t, 1)
            timings.setdefault("reused_unlearning", {})[f"{method}-{seed}"] = donor
            workspace.save_artifact(run_id, "timings", timings)
            reused = True
            break
        if not reused:
            rest.append((method, seed))
    return rest


def _unlearn(lm, unit, **kwargs):
    method, seed, forget, retain, u = unit
    return run_unlearning(lm.model, lm.tokenizer, forget, retain, method, steps=u["steps"], lr=u["lr"],
                          eval_every=u["eval_every"], seed=seed, batch_size=u["batch_size"],
                          checkpoint_every=u["checkpoint_every"], **kwargs)


def curve_payload(result) -> dict:
    """What a calibration stores of one unlearning run (artifact `curve_artifact(...)`)."""
    return {"settings": result.settings, "steps": result.steps, "elapsed": result.elapsed, "curve": result.curve,
            "prob_curve": result.prob_curve, "retain_curve": result.retain_curve, "losses": result.losses}


def unlearning_unit(lm, unit) -> dict:
    """One (method, seed) run of a calibration on an executor's worker, from scratch and without
    checkpoints (only the driver writes the workspace): the curve artifact, plus its wall time."""
    t = time.time()
    result = _unlearn(lm, unit)
    return {**curve_payload(result), "wall_s": round(time.time() - t, 1)}


def curve_artifact(method: str, seed: int, seeds) -> str:
    """The first seed's curve is `curve-METHOD` (what the pages show); other seeds `curve-METHOD.seedN`."""
    return f"curve-{method}" if seed == seeds[0] else f"curve-{method}.seed{seed}"


def load_outcomes(workspace: Workspace, run_id: str, settings: dict) -> tuple[dict, int]:
    """method -> seed -> sample id -> realised difficulty, and the number of unlearning steps."""
    seeds = settings.get("seeds") or [settings["seed"]]
    outcomes = {}
    for method in settings["methods"]:
        outcomes[method] = {}
        for seed in seeds:
            c = workspace.load_artifact(run_id, curve_artifact(method, seed, seeds))
            outcomes[method][seed] = realised_difficulty(c["curve"], c["prob_curve"], c["steps"],
                                                         settings["forgotten_threshold"])
    return outcomes, settings["steps"]


