"""Circuits: binarised edge sets, their statistics, faithfulness and export.

A circuit is a bool matrix `[n_forward, n_backward]` (a subset of the real edges); `as_vector`
turns it into the 0/1 vector over real edges that CUD compares.
"""
from __future__ import annotations

import functools
import heapq
import json
from collections import Counter

import torch

from cud_core.engine import hooked
from cud_core.engine.adapters import adapter_for
from cud_core.engine.attribution import _baseline_outputs, frozen, mean_outputs, metric_per_sample
from cud_core.engine.graph import Graph
from cud_core.engine.metrics import collate

BINARISE = ("greedy", "top-n")


def binarise(scores: torch.Tensor, graph: Graph, method: str = "greedy", n: int = 75) -> torch.Tensor:
    """Bool circuit `[n_forward, n_backward]` from one sample's edge scores."""
    if method not in BINARISE:
        raise ValueError(f"unknown binarisation {method!r}; choose one of {', '.join(BINARISE)}")
    if n < 1:
        raise ValueError(f"a circuit needs at least one edge (n={n})")
    if method == "top-n":
        scores = scores.float().cpu() * graph.real_edge_mask
        flat = scores.abs().flatten()
        flat[~graph.real_edge_mask.flatten()] = -1
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[flat.topk(min(n, graph.n_edges)).indices] = True
        return keep.view_as(scores)
    return _edge_tensor(_prune_edges(sorted(_greedy_edges(scores, graph, n)), graph), graph)


def _node_of_backward(graph: Graph) -> list[int]:
    """Forward index of the node each backward input belongs to (−1 for logits)."""
    H, out = graph.n_heads, []
    for l in range(graph.n_layers):
        out += [graph.head_index(l, h) for _ in "qkv" for h in range(H)] + [graph.mlp_forward_index(l)]
    return out + [-1]


def _inputs_of_forward(graph: Graph) -> dict[int, list[int]]:
    inputs: dict[int, list[int]] = {}
    for b, f in enumerate(_node_of_backward(graph)):
        inputs.setdefault(f, []).append(b)
    return inputs


@functools.lru_cache(maxsize=16)
def _layout(n_layers: int, n_heads: int, parallel: bool) -> tuple[dict[int, list[int]], list[list[int]]]:
    """(forward node -> its backward inputs, backward input -> its real parents) of a graph layout."""
    graph = Graph(n_layers, n_heads, parallel)
    return _inputs_of_forward(graph), [col.nonzero().flatten().tolist() for col in graph.real_edge_mask.t()]


def greedy(scores: torch.Tensor, graph: Graph, n: int) -> torch.Tensor:
    """From `logits`, repeatedly add the highest-|score| edge whose child is already in the circuit
    (ties: lower forward, then backward index first)."""
    return _edge_tensor(_greedy_edges(scores, graph, n), graph)


def _greedy_edges(scores: torch.Tensor, graph: Graph, n: int) -> list[tuple[int, int]]:
    """`greedy`'s (forward, backward) edges in the order it picks them; reads real edges only."""
    scores = scores.float().cpu()  # float32 like every stored score: ties break the same for every input dtype
    inputs, parents = _layout(graph.n_layers, graph.n_heads, graph.parallel)
    heap: list[tuple[float, int, int]] = []

    def open_inputs(node: int):
        for b in inputs.get(node, []):
            col = scores[:, b].tolist()
            for f in parents[b]:
                heapq.heappush(heap, (-abs(col[f]), f, b))
    open_inputs(-1)
    in_circuit, chosen = {-1}, []
    while heap and len(chosen) < n:  # every (f, b) is pushed once: when its child is first opened
        _, f, b = heapq.heappop(heap)
        chosen.append((f, b))
        if f not in in_circuit:
            in_circuit.add(f)
            open_inputs(f)
    return chosen


def prune(circuit: torch.Tensor, graph: Graph) -> torch.Tensor:
    """Keep only edges on some input → logits path (parent reachable from input, child reaches logits)."""
    return _edge_tensor(_prune_edges(circuit.nonzero().tolist(), graph), graph)


def _prune_edges(edges: list, graph: Graph) -> list:
    """`prune` on a list of (forward, backward) edges sorted by forward index."""
    node_of = _node_of_backward(graph)
    child = [node_of[b] for _, b in edges]
    from_input, to_logits = {0}, {-1}
    for (f, _), c in zip(edges, child):  # forward order is topological
        if f in from_input:
            from_input.add(c)
    for (f, _), c in zip(reversed(edges), reversed(child)):
        if c in to_logits:
            to_logits.add(f)
    return [e for e, c in zip(edges, child) if e[0] in from_input and c in to_logits]


def _edge_tensor(edges: list, graph: Graph) -> torch.Tensor:
    out = torch.zeros_like(graph.real_edge_mask)
    if edges:
        idx = torch.tensor(edges)
        out[idx[:, 0], idx[:, 1]] = True
    return out


def as_vector(circuit_or_scores: torch.Tensor, graph: Graph) -> torch.Tensor:
    """The values on real edges, in the graph's edge order (1-D)."""
    return circuit_or_scores[..., graph.real_edge_mask]


def from_vector(vector: torch.Tensor, graph: Graph) -> torch.Tensor:
    out = torch.zeros(graph.n_forward, graph.n_backward, dtype=vector.dtype)
    out[graph.real_edge_mask] = vector
    return out


# ----------------------------------------------------------------------------- statistics

def circuit_statistics(circuit: torch.Tensor, graph: Graph, scores: torch.Tensor | None = None) -> dict:
    """The paper's analysis of one circuit (layers: input = −1, logits = n_layers)."""
    L, H = graph.n_layers, graph.n_heads
    node_of = _node_of_backward(graph)
    edges = circuit.nonzero().tolist()
    nodes = {f for f, _ in edges} | {node_of[b] for _, b in edges}
    inner = sorted(n for n in nodes if n > 0)  # heads and MLPs
    layer_of = lambda node: L if node == -1 else graph.forward_layer(node)  # noqa: E731
    is_mlp = lambda node: node > 0 and (node - 1) % (H + 1) == H  # noqa: E731
    lengths = [layer_of(node_of[b]) - layer_of(f) for f, b in edges]
    depths = [layer_of(n) / max(1, L - 1) for n in inner]
    kinds = Counter(graph.backward_names[b][-2] for _, b in edges if graph.backward_names[b].endswith(">"))
    n_head_inputs = sum(kinds.values())
    stats = {
        "n_edges": len(edges),
        "n_nodes": len(inner),
        "nodes_per_layer": [sum(1 for n in inner if layer_of(n) == l) for l in range(L)],
        "edges_per_layer": [sum(1 for _, b in edges if layer_of(node_of[b]) == l) for l in range(L + 1)],
        "edge_length_hist": [lengths.count(k) for k in range(L + 2)],
        "mean_edge_length": sum(lengths) / len(lengths) if lengths else 0.0,
        "depth_com": sum(depths) / len(depths) if depths else 0.0,
        "longest_path": longest_path(edges, node_of),
        "share_heads": sum(1 for n in inner if not is_mlp(n)) / len(inner) if inner else 0.0,
        "share_mlps": sum(1 for n in inner if is_mlp(n)) / len(inner) if inner else 0.0,
        "qkv_split": {k: kinds.get(k, 0) / n_head_inputs if n_head_inputs else 0.0 for k in "qkv"},
        "uses_input": any(f == 0 for f, _ in edges),
    }
    if scores is not None and edges:
        s = scores.float().cpu()
        weights = torch.tensor([abs(float(s[f, b])) for f, b in edges])
        child_depth = torch.tensor([layer_of(node_of[b]) / max(1, L - 1) for _, b in edges])
        stats["weighted_depth_com"] = float((weights * child_depth).sum() / weights.sum().clamp(min=1e-12))
    return stats


def longest_path(edges: list[list[int]], node_of: list[int]) -> int:
    """Longest input → logits path, in edges (0 when input and logits are not connected)."""
    best = {0: 0}  # node -> longest path from input
    for f, b in sorted(edges, key=lambda e: (e[0], node_of[e[1]] if node_of[e[1]] >= 0 else 10 ** 9)):
        if f in best:
            child = node_of[b]
            best[child] = max(best.get(child, 0), best[f] + 1)
    return best.get(-1, 0)


# ----------------------------------------------------------------------------- faithfulness

def faithfulness(model, tokenizer, sample, circuit: torch.Tensor, graph: Graph | None = None,
                 baseline: str = "zero", means=None) -> dict:
    """How much of the clean metric (mean answer log-prob) the circuit keeps when every edge outside it
    carries its baseline value (`zero`, or `mean` with `means` from `attribution.mean_outputs`).

    Normalised between the full model and the fully ablated one:
    faithfulness = (M_circuit − M_empty) / (M_clean − M_empty); 1 = as good as the full model,
    0 = no better than ablating everything (it can leave [0, 1] for small circuits)."""
    if baseline not in ("zero", "mean") or (baseline == "mean" and means is None):
        raise ValueError("faithfulness takes baseline 'zero', or 'mean' together with precomputed means")
    graph = graph or Graph.from_model(model)
    adapter = adapter_for(model)
    batch = collate(tokenizer, [sample]).to(adapter.device)
    real = graph.real_edge_mask.to(adapter.device)
    with frozen(model), torch.no_grad():
        base = _baseline_outputs(adapter, graph, batch, means if baseline == "mean" else None)

        def metric_with(removed):
            taps = hooked.Taps(patch=hooked.Patch(removed.float(), base)) if removed.any() else None
            resid = hooked.run(adapter, graph, batch.input_ids, taps=taps)
            return float(metric_per_sample(adapter, resid, batch, "logprob")[0])
        clean = metric_with(torch.zeros_like(real))
        empty = metric_with(real)
        kept = metric_with(real & ~circuit.to(adapter.device))
    span = clean - empty
    return {"clean": clean, "empty": empty, "circuit": kept,
            "faithfulness": (kept - empty) / span if abs(span) > 1e-9 else float("nan")}


FAITHFULNESS_SIZES = (10, 25, 50, 75, 100, 250, 500, 1000, 2500, 5000, 10000)


ABLATION_MEAN_SAMPLES = 32  # mean ablation: activations averaged over this many (forget) samples


def ablation_means(model, tokenizer, samples, graph: Graph):
    """The mean activations that mean ablation puts in place of missing edges: over the first
    ABLATION_MEAN_SAMPLES of `samples`."""
    return mean_outputs(model, tokenizer, samples[:ABLATION_MEAN_SAMPLES], graph)


def faithfulness_curve(model, tokenizer, samples, scores: list[torch.Tensor], graph: Graph | None = None,
                       sizes=FAITHFULNESS_SIZES, baselines=("zero", "mean"), means=None, method: str = "greedy",
                       progress=None) -> dict:
    """Faithfulness against circuit size: for each ablation baseline and each n, the circuit of n edges cut
    from `scores[i]` (one score matrix per sample; the anchors pass their mean scores for each member)
    and its faithfulness averaged over `samples`; plus the first n reaching 0.5 and 0.8.

    Returns {"sizes": [...], "edges": [actual circuit sizes], baseline: [mean faithfulness per n],
    "reaches": {baseline: {"0.5": n or None, "0.8": n or None}}}."""
    graph = graph or Graph.from_model(model)
    sizes = [n for n in sizes if n <= graph.n_edges] or [graph.n_edges]
    if "mean" in baselines and means is None:
        means = mean_outputs(model, tokenizer, samples, graph)
    out = {"sizes": sizes, "edges": [], "reaches": {}}
    circuits = [[binarise(s, graph, method, n) for s in scores] for n in sizes]
    out["edges"] = [float(sum(int(c.sum()) for c in row) / len(row)) for row in circuits]
    total = len(baselines) * len(sizes) * len(samples)
    done = 0
    for baseline in baselines:
        values = []
        for row in circuits:
            f = []
            for sample, circuit in zip(samples, row):
                f.append(faithfulness(model, tokenizer, sample, circuit, graph, baseline, means)["faithfulness"])
                done += 1
                if progress:
                    progress(done / total, f"faithfulness {done}/{total}")
            values.append(float(sum(f) / len(f)))
        out[baseline] = values
        out["reaches"][baseline] = {str(t): next((n for n, v in zip(sizes, values) if v >= t), None)
                                    for t in (0.5, 0.8)}
    return out


# ----------------------------------------------------------------------------- export

def to_json(circuit: torch.Tensor, graph: Graph, scores: torch.Tensor | None = None) -> str:
    node_of = _node_of_backward(graph)
    edges = circuit.nonzero().tolist()
    names = {graph.forward_names[f] for f, _ in edges} | {
        "logits" if node_of[b] < 0 else graph.forward_names[node_of[b]] for _, b in edges}
    nodes = [{"name": n, "layer": _layer_from_name(n, graph.n_layers), "type": _type_from_name(n)}
             for n in sorted(names, key=lambda n: (_layer_from_name(n, graph.n_layers), n))]
    out_edges = [{"name": graph.edge_name(f, b), "parent": graph.forward_names[f],
                  "child": "logits" if node_of[b] < 0 else graph.forward_names[node_of[b]],
                  "input": graph.backward_names[b][-2] if graph.backward_names[b].endswith(">") else None,
                  **({"score": float(scores[f, b])} if scores is not None else {})} for f, b in edges]
    return json.dumps({"n_layers": graph.n_layers, "n_heads": graph.n_heads, "nodes": nodes, "edges": out_edges})


def to_networkx(circuit: torch.Tensor, graph: Graph, scores: torch.Tensor | None = None):
    import networkx as nx

    data = json.loads(to_json(circuit, graph, scores))
    g = nx.MultiDiGraph()  # a head can read the same parent through q, k and v
    for n in data["nodes"]:
        g.add_node(n["name"], layer=n["layer"], type=n["type"])
    for e in data["edges"]:
        g.add_edge(e["parent"], e["child"], key=e["input"] or "", **{k: v for k, v in e.items()
                                                                   if k not in ("parent", "child")})
    return g


def _layer_from_name(name: str, n_layers: int) -> int:
    if name == "input":
        return -1
    if name == "logits":
        return n_layers
    return int(name[1:].split(".")[0])


def _type_from_name(name: str) -> str:
    return {"i": "input", "l": "logits", "a": "head", "m": "mlp"}[name[0]]
