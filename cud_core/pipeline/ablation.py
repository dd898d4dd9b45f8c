"""The ablation grid as one job: `python -m cud_core ablate --workspace W --run R`.

Re-scores a finished calibration's forget set under every attribution setting of the grid
(`validation.ablation.GRID`: method × metric × baseline; each a normal, resumable scoring run, the
calibration's own one reused) and computes each cell's out-of-fold numbers from the calibration's
unlearning outcomes, which do not depend on attribution. After each attribution setting its 24
cells are stored (artifact "ablation_cells"), so a stopped or killed job resumes with the next
setting; the summary (artifact "ablation") is rebuilt from the stored cells at the end.

The two metrics of a method and baseline that both still need attribution are scored from the same
passes (`scoring.score_runs`; each setting's `scoring_s` is its half). Settings left out with
`attribution=` (e.g. EAP-IG-activations on a CPU: about 45 s per sample on SmolLM2-135M with two
cores, 5 steps) are reported as "not run", never dropped from the table.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from cud_core.difficulty import grid
from cud_core.difficulty.analysis import Inputs, hardness, seed_mean_nll
from cud_core.engine.graph import Graph
from cud_core.engine.models import adopt_legacy_runs
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.executor import run_units
from cud_core.pipeline.outcomes import load_outcomes
from cud_core.pipeline.scoring import RUN_KIND as SCORE_KIND
from cud_core.pipeline.scoring import ScoreSettings, content_hash, run_config, score_runs
from cud_core.store.score_files import has_edge_scores, load_circuits, load_edge_scores
from cud_core.store.workspace import Workspace, older_version_error

CELLS = "ablation_cells"
SUMMARY = "ablation"
TIMING = "ablation_scoring"  # on a scoring run the grid made: its attribution time and metric partners


def fixed_inputs(workspace: Workspace, run_id: str) -> tuple[grid.Fixed, dict]:
    """The calibration's shared inputs (samples, outcomes, labels, folds) and its stored settings."""
    run = workspace.get_run(run_id)
    settings = run["config"]
    results = workspace.load_results(run_id)
    ids = [s.id for s in workspace.load_samples(run_id)]
    missing = [i for i in ids if i not in results or results[i].get("fold") is None]
    if missing:
        raise ValueError(f"calibration {run_id} has no out-of-fold results for {len(missing)} samples "
                         f"(e.g. {missing[0]!r}); rerun `calibrate` to finish it")
    outcomes, steps = load_outcomes(workspace, run_id, settings)
    inputs = Inputs(ids, outcomes, steps, {})
    hard = {t: v["mean"] for t, v in hardness(inputs).items()}
    score_id = workspace.load_artifact(run_id, "score_run")
    scored = workspace.load_results(score_id)
    s = settings["score"]
    fixed = grid.Fixed(ids=ids, nll=seed_mean_nll(inputs), hard=hard,
                       original_nll=np.array([scored[i]["answer_nll"] for i in ids], float),
                       labels=workspace.load_artifact(run_id, "labels", {}).get("all", {}),
                       folds={i: int(results[i]["fold"]) for i in ids}, q=settings["q"], seed=settings["seed"],
                       n_boot=settings["n_boot"], binarise=s["binarise"], n_edges=s["n_edges"])
    return fixed, settings


def reference_cell(settings: dict) -> dict:
    """The calibration's own setting, as a grid cell."""
    s = settings["score"]
    return {"attribution": s["method"], "metric": s["metric"], "baseline": s["baseline"], "n_edges": s["n_edges"],
            "similarity": settings["similarity"], "anchors": settings["anchors"]}


def ablate(ctx: RunContext, forget, retain, attribution=None) -> dict | None:
    """Run (or resume) the grid on calibration `ctx.run_id`; returns the summary, or None when stopped.
    `forget`/`retain` must be the calibration's own samples (checked against its stored hashes);
    `attribution`: the methods, or single "METHOD/METRIC/BASELINE" settings, to run (`selected`;
    default: all). A setting whose scoring run the workspace already has (e.g. another calibration's
    on the same samples) reuses it."""
    lm, workspace, run_id = ctx.lm, ctx.workspace, ctx.run_id
    selected(attribution)  # a bad item is named before any work
    fixed, settings = fixed_inputs(workspace, run_id)
    for name, part in (("forget", forget), ("retain", retain)):
        if content_hash(part) != settings[name]:
            raise ValueError(f"the {name} samples given are not the ones calibration {run_id} used "
                             f"(content hash {content_hash(part)} ≠ {settings[name]})")
    graph = Graph.from_model(lm.model)
    scoring = ctx.but(dataset=workspace.get_run(run_id)["dataset"])
    stored = workspace.load_artifact(run_id, CELLS, {})
    if any("reused_scoring" not in entry for entry in stored.values()):
        raise older_version_error(f"the ablation grid of calibration {run_id}", workspace.root)
    todo = remaining_settings(workspace, run_id, attribution)
    already = set(scored_settings(lm, forget, retain, workspace, run_id, todo))  # finished before this grid
    base = ScoreSettings.of_run(workspace.get_run(run_id))
    units = scoring_units(todo, already)
    for k, unit in enumerate(units):
        if ctx.stop_requested():
            return None
        name = " and ".join(" / ".join(setting) for setting in unit)
        at = lambda f, m, k=k, name=name: ctx.report((k + f) / max(1, len(units)),  # noqa: E731
                                                     f"attribution {k + 1}/{len(units)} ({name}): {m}")
        t = time.time()
        score_ids, shared = score_runs(scoring.but(progress=lambda f, m, at=at: at(0.9 * f, m)), forget,
                                       [setting_scores(base, setting) for setting in unit],
                                       extra_config={"calibration": run_id, "ablation": True},
                                       reference=forget + retain)
        if any(i is None or workspace.get_run(i)["status"] != "done" for i in score_ids):
            return None
        if not set(unit) & already:  # attributed now: the time goes with the scoring run (kept on a resume)
            scoring_s = (time.time() - t) / len(unit)  # shared passes (or, rarely, one after the other): each half
            for setting, score_id in zip(unit, score_ids):
                workspace.save_artifact(score_id, TIMING, {
                    "grid": run_id, "scoring_s": round(scoring_s, 1),
                    "scored_with": [grid.key(*o) for o in unit if o != setting] if shared else []})
        for setting, score_id in zip(unit, score_ids):
            entry = _setting_cells(ctx.but(progress=at), score_id, fixed, graph, setting)
            if entry is None:
                return None  # stopped
            stored[grid.key(*setting)] = {"score_run": score_id, **_scoring_time(workspace, run_id, score_id),
                                          **entry}
            workspace.save_artifact(run_id, CELLS, stored)
    summary = summarise(stored, fixed, settings)
    workspace.save_artifact(run_id, SUMMARY, summary)
    ctx.report(1.0, f"ablation done: {summary['n_run']} of {summary['n_cells']} cells")
    return summary


def _scoring_time(workspace: Workspace, run_id: str, score_id: str) -> dict:
    """scoring_s, scored_with and reused_scoring of a setting's scoring run: what this grid recorded
    when it attributed the run (also after a resume), or, for a run found made (by a calibration, or
    another calibration's grid), its maker and no attribution time."""
    made = workspace.load_artifact(score_id, TIMING) or {}
    if made.get("grid") == run_id:
        return {"scoring_s": made["scoring_s"], "scored_with": made["scored_with"], "reused_scoring": None}
    context = workspace.load_artifact(score_id, "context", {}) or {}
    return {"scoring_s": 0.0, "scored_with": [], "reused_scoring": context.get("calibration") or score_id}


def scoring_units(todo, already) -> list[list[tuple[str, str, str]]]:
    """The settings to score, in order, as units scored from the same passes: the metrics of one
    (method, baseline) that all still need attribution (`scoring.score_runs`); others alone."""
    units, paired = [], {}
    for setting in todo:
        if setting in already:
            units.append([setting])
            continue
        method, _, baseline = setting
        if (method, baseline) not in paired:
            paired[(method, baseline)] = []
            units.append(paired[(method, baseline)])
        paired[(method, baseline)].append(setting)
    return units


def _setting_cells(ctx: RunContext, score_id, fixed, graph, setting) -> dict | None:
    """One setting's 24 cells from its scoring run, with their time (`ctx.progress`: the setting's own);
    None when stopped."""
    workspace, at = ctx.workspace, ctx.report
    edge_scores = load_edge_scores(workspace, score_id, graph.n_edges)
    circuits = load_circuits(workspace, score_id, graph.n_edges)
    t = time.time()
    cells, n_sizes, sizes = [], 0, grid.GRID["n_edges"]
    for part in run_units(ctx.executor, ctx.lm, _size_unit, list(sizes),
                          shared=(fixed, edge_scores, circuits, graph, setting),
                          should_stop=ctx.should_stop, progress=lambda m: at(0.9, f"cells: {m}")):
        cells += part
        n_sizes += 1
        at(0.9 + 0.1 * n_sizes / len(sizes), f"cells of {sizes[n_sizes - 1]} edges done")
    if n_sizes < len(sizes):
        return None
    return {"cells_s": round(time.time() - t, 1), "cells": cells}


def selected(attribution=None) -> list[tuple[str, str, str]]:
    """The grid's (method, metric, baseline) settings that `attribution` names, in grid order: each item
    a method (its 4 metric × baseline settings) or one setting "METHOD/METRIC/BASELINE"; None: all."""
    items = list(attribution or grid.GRID["attribution"])
    settings = grid.attribution_settings()
    unknown = [a for a in items if a not in grid.GRID["attribution"] and "/" not in a]
    if unknown:
        raise ValueError(f"unknown attribution method(s) {', '.join(unknown)}; the grid has "
                         f"{', '.join(grid.GRID['attribution'])}")
    bad = [a for a in items if "/" in a and tuple(a.split("/")) not in settings]
    if bad:
        raise ValueError(f"unknown attribution setting(s) {', '.join(bad)}; write METHOD/METRIC/BASELINE with a "
                         f"method of {', '.join(grid.GRID['attribution'])}, a metric of "
                         f"{', '.join(grid.GRID['metric'])} and a baseline of {', '.join(grid.GRID['baseline'])}")
    return [a for a in settings if a[0] in items or "/".join(a) in items]


def setting_scores(base: ScoreSettings, setting: tuple[str, str, str]) -> ScoreSettings:
    """The calibration's scoring settings with a grid setting's (method, metric, baseline)."""
    return replace(base, method=setting[0], metric=setting[1], baseline=setting[2])


def scored_settings(lm, forget, retain, workspace: Workspace, run_id: str, todo) -> list[tuple[str, str, str]]:
    """The settings among `todo` whose scoring run the workspace already has finished, with its edge
    scores, on these samples (`score_run` reuses it): they cost only their cells. (A run unpacked
    without its edge scores is scored again in place.)"""
    adopt_legacy_runs(workspace, lm.model)
    run = workspace.get_run(run_id)
    base, out = ScoreSettings.of_run(run), []
    for setting in todo:
        config = run_config(lm, forget, setting_scores(base, setting), forget + retain)
        found = workspace.find_run(SCORE_KIND, lm.name, run["dataset"], config)
        if found and workspace.get_run(found)["status"] == "done" and has_edge_scores(workspace, found):
            out.append(setting)
    return out


def remaining_settings(workspace: Workspace, run_id: str, attribution=None) -> list[tuple[str, str, str]]:
    """The settings `attribution` selects (`selected`) that are not stored yet."""
    stored = workspace.load_artifact(run_id, CELLS, {})
    return [a for a in selected(attribution) if grid.key(*a) not in stored]


def _size_unit(lm, n: int, shared) -> list[dict]:
    """The cells of one circuit size (`grid.size_cells`), as an executor's unit."""
    fixed, edge_scores, circuits, graph, setting = shared
    return grid.size_cells(fixed, edge_scores, circuits, graph, setting, n)


def summarise(stored: dict, fixed: grid.Fixed, settings: dict) -> dict:
    """Every cell of the grid (computed or "not run"), Holm-adjusted, with the factor effects."""
    cells, not_run = [], []
    for setting in grid.attribution_settings():
        entry = stored.get(grid.key(*setting))
        if entry is None:
            not_run.append(dict(zip(grid.ATTRIBUTION_FACTORS, setting)))
            continue
        share = entry["scoring_s"] / len(entry["cells"])
        for c in entry["cells"]:
            cells.append({**c, "score_run": entry["score_run"], "attribution_s": round(entry["scoring_s"], 1),
                          "wall_s": round(share + c["analysis_s"], 2)})
    grid.finish(cells)
    ref = reference_cell(settings)
    return {
        "grid": {k: list(v) for k, v in grid.GRID.items()}, "ids": fixed.ids, "reference": ref,
        "n_forget": len(fixed.ids), "n_labelled": sum(i in fixed.labels for i in fixed.ids),
        "n_boot": fixed.n_boot, "q": fixed.q, "folds": max(fixed.folds.values()) + 1,
        "correction": "holm", "alpha": grid.ALPHA, "test": "one-sided (ρ > 0), t approximation",
        "n_cells": len(grid.attribution_settings()) * grid.CELLS_PER_SETTING, "n_run": len(cells),
        "not_run": [{**s, "cells": grid.CELLS_PER_SETTING} for s in not_run],
        "cells": cells, "effects": grid.factor_effects(cells),
        "timings": {grid.key(*s): {k: stored[grid.key(*s)].get(k) for k in ("scoring_s", "cells_s", "reused_scoring",
                                                                            "scored_with")}
                    for s in grid.attribution_settings() if grid.key(*s) in stored},
    }
