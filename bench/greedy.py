"""Benchmark greedy circuit extraction (`circuits.binarise(..., "greedy", n)`). Prints one JSON line.

Times the engine's binarise (an edge list) against a reference implementation kept here (a heap fed
by indexing the score tensor per element, then pruning on tensors), on random scores over a layout's
graph, interleaved, best of --repeats; checks both give the same circuit. No model is loaded.

    python bench/greedy.py                       # SmolLM2-135M's layout: 30 layers x 9 heads
    python bench/greedy.py --layers 16 --heads 32 --sizes 75,1000,10000
"""
import argparse
import heapq
import json
import time

import torch

from cud_core.engine.circuits import _inputs_of_forward, _node_of_backward, binarise
from cud_core.engine.graph import Graph


def reference(scores: torch.Tensor, graph: Graph, n: int) -> torch.Tensor:
    """binarise(greedy) as a heap over the score tensor: the reference the edge-list version must match."""
    scores = scores.float().cpu() * graph.real_edge_mask
    absval, real = scores.abs(), graph.real_edge_mask
    inputs = _inputs_of_forward(graph)
    chosen = torch.zeros_like(real)
    heap = []

    def open_inputs(node):
        for b in inputs.get(node, []):
            for f in real[:, b].nonzero().flatten().tolist():
                heapq.heappush(heap, (-float(absval[f, b]), f, b))
    open_inputs(-1)
    in_circuit, count = {-1}, 0
    while heap and count < n:
        _, f, b = heapq.heappop(heap)
        if chosen[f, b]:
            continue
        chosen[f, b] = True
        count += 1
        if f not in in_circuit:
            in_circuit.add(f)
            open_inputs(f)
    node_of = _node_of_backward(graph)
    edges = [(f, node_of[b]) for f, b in chosen.nonzero().tolist()]
    from_input, to_logits = {0}, {-1}
    for f, c in sorted(edges, key=lambda e: e[0]):
        if f in from_input:
            from_input.add(c)
    for f, c in sorted(edges, key=lambda e: -e[0]):
        if c in to_logits:
            to_logits.add(f)
    keep = chosen.clone()
    for (f, b), (_, c) in zip(chosen.nonzero().tolist(), edges):
        if f not in from_input or c not in to_logits:
            keep[f, b] = False
    return keep


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--sizes", default="75,1000")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    graph = Graph(args.layers, args.heads)
    gen = torch.Generator().manual_seed(0)
    cells = []
    binarise(torch.zeros(graph.n_forward, graph.n_backward), graph, "greedy", 1)  # warm the layout cache
    for n in (int(x) for x in args.sizes.split(",")):
        scores = torch.randn(graph.n_forward, graph.n_backward, generator=gen)
        new, old = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            a = binarise(scores, graph, "greedy", n)
            new.append(time.perf_counter() - t)
            t = time.perf_counter()
            b = reference(scores, graph, n)
            old.append(time.perf_counter() - t)
        cells.append({"n": n, "engine_s": round(min(new), 4), "reference_s": round(min(old), 4),
                      "speedup": round(min(old) / min(new), 2), "identical": bool(torch.equal(a, b)),
                      "edges_kept": int(a.sum())})
    print(json.dumps({"bench": "greedy", "layers": args.layers, "heads": args.heads, "real_edges": graph.n_edges,
                      "threads": torch.get_num_threads(), "repeats": args.repeats, "cells": cells}))


if __name__ == "__main__":
    main()
