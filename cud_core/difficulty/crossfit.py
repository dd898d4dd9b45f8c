"""Cross-fitted (out-of-fold) CUD (the validation protocol).

The forget set is split into k folds (seeded, stratified by the easy/hard/unlabelled label). For
each fold, the easy/hard labels are recomputed from the other folds' realised difficulty alone, the
anchors are built from those labels, and the fold's samples get their CUD from those anchors. A
sample's `cud_oof` therefore never depends on its own unlearning outcome.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from cud_core.difficulty.cud import build_anchors, label_easy_hard


@dataclass
class CrossFit:
    cud: dict[str, float]               # sample id -> out-of-fold CUD
    fold: dict[str, int]                # sample id -> its fold
    anchor_ids: list[dict]              # per fold: {"easy": [...], "hard": [...]} the anchors were built from


def assign_folds(ids: list[str], strata: dict[str, str], k: int = 5, seed: int = 0) -> dict[str, int]:
    """Sample id -> fold in 0..k-1: each stratum is shuffled (seeded) and dealt round-robin, continuing
    where the previous stratum stopped so that fold sizes differ by at most one."""
    if not 2 <= k <= len(ids):
        raise ValueError(f"cross-fitting needs 2 ≤ folds ≤ {len(ids)} samples, got {k} folds")
    rng = random.Random(f"folds:{seed}")
    fold, at = {}, 0
    for stratum in sorted({strata.get(i, "") for i in ids}):
        members = sorted(i for i in ids if strata.get(i, "") == stratum)
        rng.shuffle(members)
        for i in members:
            fold[i] = at % k
            at += 1
    return fold


def cross_fit(ids: list[str], nll_after: dict[str, dict[str, float]], edge_scores: dict, circuits: dict, graph,
              q: float, folds: dict[str, int], binarise: str = "greedy", n_edges: int = 75,
              similarity: str = "cosine") -> CrossFit:
    """Out-of-fold CUD of every sample in `ids`; `nll_after` maps method -> {id: NLL after unlearning}."""
    anchors = fold_anchors(ids, nll_after, edge_scores, graph, q, folds, binarise, n_edges)
    return CrossFit(score_folds(ids, circuits, folds, anchors, similarity), dict(folds),
                    [{"easy": a.easy_ids, "hard": a.hard_ids} for a in anchors])


def fold_anchors(ids: list[str], nll_after: dict[str, dict[str, float]], edge_scores: dict, graph, q: float,
                 folds: dict[str, int], binarise: str = "greedy", n_edges: int = 75) -> list:
    """Per fold f: the anchors built from labels recomputed on the samples outside fold f."""
    k = max(folds.values()) + 1
    out = []
    for f, labels in enumerate(fold_labels(ids, nll_after, q, folds)):
        try:
            out.append(build_anchors(edge_scores, labels, graph, binarise, n_edges))
        except ValueError as exc:
            raise ValueError(f"fold {f + 1}/{k}: {exc}; use fewer folds, a larger q or more forget samples") from exc
    return out


def fold_labels(ids: list[str], nll_after: dict[str, dict[str, float]], q: float,
                folds: dict[str, int]) -> list[dict[str, str]]:
    """Per fold f: the easy/hard labels recomputed from the realised difficulty of the samples outside f."""
    k = max(folds.values()) + 1
    return [label_easy_hard({m: {i: v[i] for i in ids if folds[i] != f} for m, v in nll_after.items()}, q)
            for f in range(k)]


def score_folds(ids: list[str], circuits: dict, folds: dict[str, int], anchors: list,
                similarity: str = "cosine") -> dict[str, float]:
    """Each sample's CUD against its own fold's anchors (`fold_anchors`)."""
    matrix = torch.stack([circuits[i].float() for i in ids])
    cud = {}
    for f, a in enumerate(anchors):
        rows = [j for j, i in enumerate(ids) if folds[i] == f]
        for j, v in zip(rows, a.score_many(matrix[rows], similarity).tolist()):
            cud[ids[j]] = v
    return cud
