"""The ablation grid's statistics: each cell's out-of-fold numbers, the correction
for testing many cells, and how much each setting moves the result.

The grid was fixed before any cell was looked at (GRID below). A cell = one attribution setting
(method × metric × baseline) × circuit size × similarity × anchors. Every cell reuses the
calibration's unlearning outcomes, labels and folds (so cells differ only by their setting, never by
fold luck); its CUD is out-of-fold exactly as in `analysis.analyse`: anchors from labels recomputed on
the other folds. Circuits at the calibration's own size are the scoring run's stored circuits (so the
calibration's own cell reproduces its CUD exactly); other sizes are cut greedily from the stored
(float16) edge scores.

Per cell: Spearman ρ of out-of-fold CUD with each target's method mean (hardness orientation as in
`analysis`), 95% bootstrap CIs on the calibration's shared resamples, the partial ρ given the original
NLL, AUROC on the labelled samples, and a one-sided p (H0: ρ ≤ 0; t approximation). Multiple
comparisons: Holm's step-down adjustment over every computed cell (family-wise error 5%); a cell is
called significant only on the Holm-adjusted p.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from cud_core.difficulty import stats
from cud_core.difficulty.analysis import PRIMARY, TARGETS, _rho_with_ci
from cud_core.difficulty.crossfit import fold_anchors, score_folds
from cud_core.engine.attribution import METHODS as ATTRIBUTION_METHODS
from cud_core.engine.circuits import as_vector, binarise, from_vector

# fixed before any result was seen; never edited to chase a result
GRID = {
    "attribution": ATTRIBUTION_METHODS,
    "metric": ("logprob", "kl"),
    "baseline": ("zero", "mean"),
    "n_edges": (25, 75, 250, 1000),
    "similarity": ("cosine", "jaccard", "hamming"),
    "anchors": ("consensus", "per-method"),
}
FACTORS = tuple(GRID)
ATTRIBUTION_FACTORS = ("attribution", "metric", "baseline")  # what needs a new scoring run
CELLS_PER_SETTING = len(GRID["n_edges"]) * len(GRID["similarity"]) * len(GRID["anchors"])  # 24
ALPHA = 0.05


def attribution_settings() -> list[tuple[str, str, str]]:
    return list(itertools.product(*(GRID[f] for f in ATTRIBUTION_FACTORS)))


def key(attribution: str, metric: str, baseline: str) -> str:
    return f"{attribution}|{metric}|{baseline}"


@dataclass
class Fixed:
    """What every cell shares: the calibration's samples, outcomes, labels, folds and resamples."""
    ids: list[str]
    nll: dict[str, dict[str, float]]        # method -> id -> NLL after unlearning (mean over seeds)
    hard: dict[str, np.ndarray]             # target -> method-mean hardness, in `ids` order
    original_nll: np.ndarray                # the partial ρ's control
    labels: dict[str, str]                  # id -> easy/hard (all labelled samples)
    folds: dict[str, int]
    q: float
    seed: int
    n_boot: int
    binarise: str = "greedy"
    n_edges: int = 75                       # the calibration's circuit size (its stored circuits)

    def __post_init__(self):
        self.idx = stats.boot_indices(len(self.ids), self.seed, self.n_boot)


def size_cells(fixed: Fixed, edge_scores: dict, stored_circuits: dict, graph, setting: tuple[str, str, str],
               n: int) -> list[dict]:
    """The 6 cells (similarities × anchors) of one attribution setting at circuit size `n` (an
    executor's unit: needs no model)."""
    import time

    ids, out = fixed.ids, []
    t = time.time()
    if n == fixed.n_edges and stored_circuits:
        circuits = stored_circuits
    else:
        circuits = {i: as_vector(binarise(from_vector(edge_scores[i], graph), graph, fixed.binarise, n), graph)
                    for i in ids}
    parts = {"consensus": [fixed.nll], "per-method": [{m: v} for m, v in fixed.nll.items()]}
    anchors_of, unavailable = {}, {}
    for kind, nll_parts in parts.items():  # a kind may be impossible (e.g. no consensus label in a fold)
        try:
            anchors_of[kind] = [fold_anchors(ids, part, edge_scores, graph, fixed.q, fixed.folds, fixed.binarise, n)
                                for part in nll_parts]
        except ValueError as exc:
            unavailable[kind] = str(exc)
    shared = (time.time() - t) / (len(GRID["similarity"]) * len(GRID["anchors"]))
    for similarity in GRID["similarity"]:
        for anchors in GRID["anchors"]:
            t = time.time()
            cell = dict(zip(ATTRIBUTION_FACTORS, setting), n_edges=n, similarity=similarity, anchors=anchors)
            if anchors in unavailable:
                cell.update(unavailable_numbers(len(ids)), unavailable=f"{anchors} anchors: {unavailable[anchors]}")
            else:
                by_part = [score_folds(ids, circuits, fixed.folds, a, similarity) for a in anchors_of[anchors]]
                cell.update(cell_numbers(fixed, np.array([float(np.mean([b[i] for b in by_part])) for i in ids])))
            cell["analysis_s"] = round(shared + time.time() - t, 2)
            out.append(cell)
    return out


def unavailable_numbers(n: int) -> dict:
    """`cell_numbers`' fields for a cell whose anchors cannot be built: every number NaN."""
    nan, pair = float("nan"), [float("nan"), float("nan")]
    return {**{t: {"spearman": nan, "spearman_ci": pair} for t in TARGETS}, "p": nan, "partial_spearman": nan,
            "partial_spearman_ci": pair, "auroc": nan, "auroc_ci": pair, "cud_oof": [nan] * n}


def cell_numbers(fixed: Fixed, cud: np.ndarray) -> dict:
    """ρ (with CI) against every target's method mean, its one-sided p, partial ρ and AUROC."""
    out = {}
    for target in TARGETS:
        rho, dist = _rho_with_ci(cud, fixed.hard[target], fixed.idx)
        out[target] = {"spearman": rho, "spearman_ci": stats.percentile_ci(dist)}
    out["p"] = stats.spearman_p(out[PRIMARY]["spearman"], len(cud))
    out["partial_spearman"] = stats.partial_spearman(cud, fixed.hard[PRIMARY], fixed.original_nll)
    out["partial_spearman_ci"] = stats.percentile_ci(
        stats.boot_partial_spearman(cud, fixed.hard[PRIMARY], fixed.original_nll, fixed.idx))
    labelled = [j for j, i in enumerate(fixed.ids) if i in fixed.labels]
    positive = np.array([fixed.labels[fixed.ids[j]] == "hard" for j in labelled])
    out["auroc"] = stats.auroc(cud[labelled], positive)
    out["auroc_ci"] = stats.percentile_ci(stats.boot_auroc(cud[labelled], positive, fixed.seed, fixed.n_boot))
    out["cud_oof"] = [round(float(v), 6) for v in cud]
    return out


def finish(cells: list[dict]) -> list[dict]:
    """Holm-adjusted p over every computed cell, and the significance call it allows (α = 5%)."""
    adjusted = stats.holm([c["p"] for c in cells])
    for c, a in zip(cells, adjusted):
        c["p_holm"] = float(a)
        c["significant"] = bool(np.isfinite(a) and a <= ALPHA)
    return cells


def cell_name(c: dict) -> str:
    return f"{c['attribution']}/{c['metric']}/{c['baseline']}/n{c['n_edges']}/{c['similarity']}/{c['anchors']}"


def factor_effects(cells: list[dict], target: str = PRIMARY) -> list[dict]:
    """For each factor and level: the mean held-out ρ over the cells at that level, and how much
    changing that factor alone moves ρ (mean and max |Δρ| over cell pairs equal in every other factor)."""
    out = []
    for factor in FACTORS:
        levels = [v for v in GRID[factor] if any(c[factor] == v for c in cells)]
        if len(levels) < 2:
            continue
        groups: dict[tuple, dict] = {}
        for c in cells:
            rest = tuple(c[f] for f in FACTORS if f != factor)
            groups.setdefault(rest, {})[c[factor]] = c[target]["spearman"]
        deltas = [abs(a - b) for g in groups.values() for a, b in itertools.combinations(g.values(), 2)
                  if np.isfinite(a) and np.isfinite(b)]
        for level in levels:
            at = [c[target]["spearman"] for c in cells if c[factor] == level]
            rho = [r for r in at if np.isfinite(r)] or [float("nan")]
            out.append({"factor": factor, "level": str(level), "cells": len(at),
                        "mean_rho": float(np.mean(rho)), "min_rho": float(np.min(rho)), "max_rho": float(np.max(rho)),
                        "mean_abs_delta": float(np.mean(deltas)) if deltas else float("nan"),
                        "max_abs_delta": float(np.max(deltas)) if deltas else float("nan")})
    return out


def ranking_agreement(cells: list[dict], factor: str) -> dict:
    """Spearman between the CUD rankings of cells that differ only in `factor`, averaged per pair of
    its levels: {(a, b): (mean ρ, number of matched pairs)}."""
    by_rest: dict[tuple, dict] = {}
    for c in cells:
        by_rest.setdefault(tuple(c[f] for f in FACTORS if f != factor), {})[c[factor]] = c["cud_oof"]
    out = {}
    levels = [v for v in GRID[factor]]
    for a, b in itertools.product(levels, levels):
        rho = [stats.spearman(g[a], g[b]) for g in by_rest.values() if a in g and b in g]
        rho = [r for r in rho if np.isfinite(r)]
        if rho:
            out[(a, b)] = (float(np.mean(rho)), len(rho))
    return out


def spearman_between(cells: list[dict]) -> np.ndarray:
    """The matrix of Spearman ρ between every two cells' CUD rankings."""
    if not cells:
        return np.zeros((0, 0))
    r = stats.ranks(np.array([c["cud_oof"] for c in cells], float), axis=1)
    r = r - r.mean(1, keepdims=True)
    norm = np.sqrt((r * r).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (r @ r.T) / np.outer(norm, norm)
