"""Circuit diff: what unlearning did to a sample's circuit.

For one sample, the edge scores in the original model (`before`) and in the unlearned copy (`after`),
both attributed with the same settings, each cut to a circuit of n edges the same way:

- kept / lost / gained edges: C_b ∧ C_a, C_b ∧ ¬C_a, ¬C_b ∧ C_a; Jaccard |C_b ∧ C_a| / |C_b ∨ C_a|
  (1 for two empty circuits);
- top movers: the edges of C_b ∨ C_a with the largest |after − before|;
- attribution mass per layer: Σ |score| over all real edges whose *child* node sits in that layer
  (logits = layer L), before and after, and its change; the same per layer × node type (attention
  head inputs q/k/v vs MLP inputs vs logits);
- depth centre of mass and longest path of each circuit and their change;
- retained flow: Σ_{e ∈ C_b} |after_e| / Σ_{e ∈ C_b} |before_e|, how much of the original circuit's
  attribution still flows through the same edges after unlearning (1 = untouched, 0 = cut).
"""
from __future__ import annotations

import numpy as np
import torch

from cud_core.difficulty import stats
from cud_core.engine.circuits import _node_of_backward, as_vector, binarise, circuit_statistics, from_vector
from cud_core.engine.graph import Graph

TOP_MOVERS = 15
NODE_TYPES = ("attention", "mlp", "logits")


def edge_layout(graph: Graph) -> tuple[np.ndarray, np.ndarray]:
    """For every real edge (in `as_vector` order): its child's layer (logits = L) and node type index."""
    node_of = _node_of_backward(graph)
    forward, backward = graph.real_edge_mask.nonzero(as_tuple=True)
    layers, types = [], []
    for b in backward.tolist():
        child = node_of[b]
        if child == -1:
            layers.append(graph.n_layers)
            types.append(2)
        else:
            layers.append(graph.forward_layer(child))
            types.append(1 if graph.backward_names[b].startswith("m") else 0)
    return np.array(layers), np.array(types)


def layer_mass(vector: torch.Tensor, graph: Graph, layout=None) -> np.ndarray:
    """Σ |score| per (child layer, node type): an (L + 1) × 3 array."""
    layers, types = layout or edge_layout(graph)
    out = np.zeros((graph.n_layers + 1, len(NODE_TYPES)))
    np.add.at(out, (layers, types), np.abs(vector.double().numpy()))
    return out


def diff(before: torch.Tensor, after: torch.Tensor, graph: Graph, n_edges: int = 75, binarise_method: str = "greedy",
         circuits: tuple[torch.Tensor, torch.Tensor] | None = None, layout=None) -> dict:
    """The diff statistics of one sample (see the module docstring); `before`/`after` are score vectors
    over real edges; `circuits` the two bool circuit vectors when already cut."""
    if circuits is None:
        circuits = tuple(as_vector(binarise(from_vector(v, graph), graph, binarise_method, n_edges), graph).bool()
                         for v in (before, after))
    cb, ca = (c.bool() for c in circuits)
    kept, lost, gained = cb & ca, cb & ~ca, ~cb & ca
    union = int((cb | ca).sum())
    delta = (after - before).double()
    either = (cb | ca).nonzero().flatten()
    order = either[delta[either].abs().argsort(descending=True)][:TOP_MOVERS]
    forward, backward = graph.real_edge_mask.nonzero(as_tuple=True)  # as_vector's order: name only the movers
    mass_b, mass_a = layer_mass(before, graph, layout), layer_mass(after, graph, layout)
    stats_b = circuit_statistics(from_vector(cb, graph), graph)
    stats_a = circuit_statistics(from_vector(ca, graph), graph)
    flow_b = float(before.double()[cb].abs().sum())
    return {
        "n_before": int(cb.sum()), "n_after": int(ca.sum()),
        "kept": int(kept.sum()), "lost": int(lost.sum()), "gained": int(gained.sum()),
        "jaccard": int(kept.sum()) / union if union else 1.0,
        "retained_flow": float(after.double()[cb].abs().sum()) / flow_b if flow_b > 0 else float("nan"),
        "depth_com": [stats_b["depth_com"], stats_a["depth_com"]],
        "delta_depth_com": stats_a["depth_com"] - stats_b["depth_com"],
        "longest_path": [stats_b["longest_path"], stats_a["longest_path"]],
        "delta_longest_path": stats_a["longest_path"] - stats_b["longest_path"],
        "layer_mass_before": mass_b.tolist(), "layer_mass_after": mass_a.tolist(),
        "top_movers": [{"edge": graph.edge_name(int(forward[i]), int(backward[i])), "before": float(before[i]),
                        "after": float(after[i]), "delta": float(delta[i]),
                        "in": "both" if kept[i] else "before" if lost[i] else "after"}
                       for i in order.tolist()],
    }


def edge_changes(before_c: torch.Tensor, after_c: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
                 graph: Graph) -> dict[str, dict]:
    """Every edge of either circuit (bool `[n_forward, n_backward]` matrices): edge name -> {"kind": "kept"
    (in both), "lost" (before only) or "gained" (after only), "before": its score before, "after": after},
    the scores read from the `before` and `after` score matrices."""
    out = {}
    for f, b in (before_c | after_c).nonzero().tolist():
        kind = "kept" if before_c[f, b] and after_c[f, b] else "lost" if before_c[f, b] else "gained"
        out[graph.edge_name(f, b)] = {"kind": kind, "before": float(before[f, b]), "after": float(after[f, b])}
    return out


def is_empty(d: dict) -> bool:
    """No edge lost or gained and no score moved."""
    return d["lost"] == 0 and d["gained"] == 0 and all(m["delta"] == 0 for m in d["top_movers"])


# ----------------------------------------------------------------------------- aggregates

SUMMARY = ("jaccard", "retained_flow", "lost", "gained", "delta_depth_com", "delta_longest_path")


def aggregate(per_sample: dict[str, dict], groups: dict[str, dict[str, str]], hardness: dict[str, float] | None = None,
              seed: int = 0, n_boot: int = 2000) -> dict:
    """Per grouping (e.g. "cud bucket", "label") and group: the mean of every SUMMARY statistic with a
    95% bootstrap CI over samples; and Spearman ρ (with CI) of each statistic with `hardness`
    (high = hard to forget), over the samples that have both."""
    ids = sorted(per_sample)
    out = {"groups": {}, "with_hardness": {}}
    for grouping, by_id in groups.items():
        table = {}
        for group in sorted({by_id[i] for i in ids if by_id.get(i)}):
            members = [i for i in ids if by_id.get(i) == group]
            table[group] = {"n": len(members)}
            for name in SUMMARY:
                x = np.array([per_sample[i][name] for i in members], float)
                x = x[np.isfinite(x)]
                boot = x[np.random.default_rng(seed).integers(0, len(x), (n_boot, len(x)))].mean(1) if len(x) else []
                table[group][name] = {"mean": float(x.mean()) if len(x) else float("nan"),
                                      "ci": stats.percentile_ci(boot)}
        out["groups"][grouping] = table
    if hardness:
        common = [i for i in ids if i in hardness]
        idx = stats.boot_indices(len(common), seed, n_boot)
        y = np.array([hardness[i] for i in common], float)
        for name in SUMMARY:
            x = np.array([per_sample[i][name] for i in common], float)
            out["with_hardness"][name] = {"spearman": stats.spearman(x, y),
                                          "spearman_ci": stats.percentile_ci(stats.boot_spearman(x, y, idx)),
                                          "n": len(common)}
    return out


def mean_layer_change(per_sample: dict[str, dict], members: list[str]) -> np.ndarray:
    """Mean over `members` of (mass after − mass before), per (layer, node type)."""
    d = [np.array(per_sample[i]["layer_mass_after"]) - np.array(per_sample[i]["layer_mass_before"])
         for i in members if i in per_sample]
    return np.mean(d, axis=0) if d else np.zeros((0, len(NODE_TYPES)))
