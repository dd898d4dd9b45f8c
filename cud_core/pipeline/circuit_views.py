"""What the Circuit and Depth pages show of stored circuits, computed here so that the pages only draw.

Circuit page: a sample's (or an anchor's) circuit cut greedily at n edges, with its statistics and the
JSON the picture is drawn from; the same circuit before and after unlearning in one picture (each edge
kept, lost or gained); its edges' membership in the easy and hard anchors' circuits.

Depth page: depth centre of mass against CUD, and for the samples an unlearning re-attributed, where
the attribution mass moved (per layer and node type), per group, with the circuit-change statistics
and their Spearman ρ with the realised hardness (−NLL after that unlearning).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cud_core.difficulty import circuit_diff, stats
from cud_core.difficulty.cud import Anchors
from cud_core.engine.circuits import as_vector, binarise, circuit_statistics, from_vector, to_json
from cud_core.engine.graph import Graph
from cud_core.store.score_files import load_sample_scores
from cud_core.store.workspace import Workspace

# ----------------------------------------------------------------------------- Circuit page


def greedy_circuit(scores: torch.Tensor, graph: Graph, n: int) -> tuple[torch.Tensor, int]:
    """`binarise(scores, graph, "greedy", n)` and how many edges greedy picked before pruning: n, or every
    real edge of a graph with fewer (each real edge leads to the logits, so greedy stops short of n only
    when it has taken them all)."""
    return binarise(scores, graph, "greedy", n), min(n, graph.n_edges)


@dataclass
class CircuitPicture:
    """A circuit as the Circuit page draws it."""
    circuit: torch.Tensor           # bool [n_forward, n_backward]
    json: str                       # `to_json` of the circuit, edge widths from its scores
    stats: dict                     # `circuit_statistics`
    picked: int                     # edges greedy picked before pruning (the first circuit's)
    diff: dict | None = None        # edge name -> {"kind", "before", "after"} (a before/after picture)
    changed: dict | None = None     # `circuit_diff.diff` of the two circuits
    overlay: dict | None = None     # edge name -> "easy" / "hard" / "both" / "own"


def picture(scores: torch.Tensor, graph: Graph, n_edges: int, after: torch.Tensor | None = None,
            anchors: dict | None = None) -> CircuitPicture:
    """The circuit of the score matrix `scores` cut greedily at `n_edges`, with its statistics; with
    `anchors` (`anchor_scores`) each edge's membership in the anchors' circuits. With `after` (the scores
    after unlearning) both circuits in one picture instead: their union, each edge kept, lost or gained,
    edge widths |after − before|, and `circuit_diff.diff` of the two."""
    circuit, picked = greedy_circuit(scores, graph, n_edges)
    if after is None:
        overlay = None if anchors is None else anchor_overlay(circuit, anchors, graph, n_edges)
        return CircuitPicture(circuit, to_json(circuit, graph, scores), circuit_statistics(circuit, graph, scores),
                              picked, overlay=overlay)
    after_c, _ = greedy_circuit(after, graph, n_edges)
    changed = circuit_diff.diff(as_vector(scores, graph), as_vector(after, graph), graph,
                                circuits=(as_vector(circuit, graph), as_vector(after_c, graph)))
    union = circuit | after_c
    return CircuitPicture(union, to_json(union, graph, after - scores), circuit_statistics(union, graph), picked,
                          diff=circuit_diff.edge_changes(circuit, after_c, scores, after, graph), changed=changed)


def anchor_scores(workspace: Workspace, calibration_id: str, graph: Graph) -> dict[str, dict]:
    """The consensus anchors of a calibration: "easy" / "hard" -> {"scores": the mean edge score matrix,
    "members": the ids of the samples behind it}."""
    anchors = Anchors.load(workspace, calibration_id)
    return {"easy": {"scores": from_vector(anchors.easy_scores, graph), "members": list(anchors.easy_ids)},
            "hard": {"scores": from_vector(anchors.hard_scores, graph), "members": list(anchors.hard_ids)}}


def anchor_overlay(circuit: torch.Tensor, anchors: dict, graph: Graph, n_edges: int) -> dict[str, str]:
    """Edge name -> "both", "easy", "hard" or "own" for every edge of `circuit`: whether it is also in the
    easy and the hard anchor's circuit (`anchor_scores`, cut greedily at `n_edges`)."""
    easy_c = binarise(anchors["easy"]["scores"], graph, "greedy", n_edges)
    hard_c = binarise(anchors["hard"]["scores"], graph, "greedy", n_edges)
    out = {}
    for f, b in circuit.nonzero().tolist():
        e, h = bool(easy_c[f, b]), bool(hard_c[f, b])
        out[graph.edge_name(f, b)] = "both" if e and h else "easy" if e else "hard" if h else "own"
    return out


def mean_scores(workspace: Workspace, run_id: str, ids, graph: Graph, index: dict) -> torch.Tensor:
    """Mean edge scores over those of `ids` that scoring run `run_id` holds (`index`: its
    `score_files.sample_index`): an anchor's circuit after unlearning."""
    return torch.stack([load_sample_scores(workspace, run_id, i, graph, index) for i in ids if i in index]).mean(0)


# ----------------------------------------------------------------------------- Depth page


def depth_cud_spearman(depth_com, cud) -> float:
    """Spearman ρ of the circuits' depth centre of mass with CUD (NaN under three samples)."""
    return stats.spearman(depth_com, cud)


def hardness_after(workspace: Workspace, run_id: str, method: str | None = None) -> dict[str, float]:
    """Realised hardness, −NLL of the answer after unlearning, per sample: after calibration `run_id`'s
    `method` runs, or after unlearning run `run_id` (no `method`). Samples without one are left out."""
    results = workspace.load_results(run_id)
    if method is None:
        return {i: -r["nll_after"] for i, r in results.items() if r.get("nll_after") is not None}
    out = {}
    for i, r in results.items():
        nll = r["realised"].get(method, {}).get("nll_after")
        if nll is not None and not math.isnan(nll):
            out[i] = -nll
    return out


def change_by_layer(per_sample: dict[str, dict], members: list[str]) -> list[dict]:
    """The mean over `members` of (attribution mass after − before) of their stored circuit diffs: rows
    {"layer", "node type", "change"}, the logits in the last layer only and no logits before it."""
    change = circuit_diff.mean_layer_change(per_sample, members)
    return [{"layer": layer, "node type": kind, "change": float(row[t])}
            for layer, row in enumerate(change) for t, kind in enumerate(circuit_diff.NODE_TYPES)
            if (kind == "logits") == (layer == len(change) - 1)]


def mass_by_layer(per_sample: dict[str, dict], members: list[str]) -> list[dict]:
    """The mean attribution mass per layer over `members`, before and after unlearning: rows {"when",
    "layer", "mass"}."""
    rows = []
    for side in ("before", "after"):
        mass = np.mean([np.array(per_sample[i][f"layer_mass_{side}"]).sum(1) for i in members], axis=0)
        rows += [{"when": side, "layer": layer, "mass": float(m)} for layer, m in enumerate(mass)]
    return rows


def change_summary(per_sample: dict[str, dict], groups: dict[str, str], hardness: dict[str, float] | None,
                   n_boot: int = 1000) -> dict:
    """`circuit_diff.aggregate` of the circuit-change statistics by `groups` (sample id -> group):
    {"groups": {"group": {group: {"n", statistic: {"mean", "ci"}}}}, "with_hardness": {statistic:
    {"spearman", "spearman_ci", "n"}} (empty without `hardness`)}."""
    return circuit_diff.aggregate(per_sample, {"group": groups}, hardness or None, n_boot=n_boot)
