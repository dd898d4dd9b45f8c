import json

import pytest
import torch

from cud_core.data.samples import Sample
from cud_core.engine import hooked
from cud_core.engine.adapters import adapter_for
from cud_core.engine.attribution import metric_per_sample
from cud_core.engine.circuits import (
    as_vector,
    binarise,
    circuit_statistics,
    faithfulness,
    from_vector,
    to_json,
    to_networkx,
)
from cud_core.engine.graph import Graph
from cud_core.engine.metrics import collate

SAMPLE = Sample("What is the capital of France?", "The capital of France is Paris.", "a")


def hand_scores(g: Graph) -> torch.Tensor:
    s = torch.zeros(g.n_forward, g.n_backward)
    f, b = g.forward_names.index, g.backward_names.index
    s[f("m1"), b("logits")] = 5
    s[f("a0.h0"), b("m1")] = -4          # sign does not matter, |score| does
    s[f("input"), b("a0.h0<q>")] = 3
    s[f("a1.h1"), b("logits")] = 2       # chosen 4th, but a1.h1 has no path from the input
    s[f("input"), b("a1.h0<k>")] = 1.5   # its child a1.h0 never joins the circuit
    return s


def names(circuit, g):
    return sorted(g.edge_name(f, b) for f, b in circuit.nonzero().tolist())


def test_greedy_grows_from_logits_and_prunes_dangling_edges():
    g = Graph(n_layers=2, n_heads=2)
    circuit = binarise(hand_scores(g), g, "greedy", n=4)
    assert names(circuit, g) == ["a0.h0->m1", "input->a0.h0<q>", "m1->logits"]
    assert names(binarise(hand_scores(g), g, "greedy", n=3), g) == names(circuit, g)
    assert names(binarise(hand_scores(g), g, "top-n", n=4), g) == [
        "a0.h0->m1", "a1.h1->logits", "input->a0.h0<q>", "m1->logits"]


def test_circuit_statistics_by_hand():
    g = Graph(n_layers=2, n_heads=2)
    scores = hand_scores(g)
    stats = circuit_statistics(binarise(scores, g, "greedy", n=4), g, scores)
    assert stats["n_edges"] == 3 and stats["n_nodes"] == 2
    assert stats["nodes_per_layer"] == [1, 1] and stats["edges_per_layer"] == [1, 1, 1]
    assert stats["edge_length_hist"] == [0, 3, 0, 0] and stats["mean_edge_length"] == 1
    assert stats["depth_com"] == pytest.approx(0.5)          # a0.h0 at depth 0, m1 at depth 1
    assert stats["longest_path"] == 3 and stats["uses_input"]
    assert stats["share_heads"] == 0.5 and stats["share_mlps"] == 0.5
    assert stats["qkv_split"] == {"q": 1.0, "k": 0.0, "v": 0.0}
    # |score|-weighted depth of the edges' children: (5·(2/1) + 4·1 + 3·0) / 12
    assert stats["weighted_depth_com"] == pytest.approx((5 * 2 + 4 * 1 + 3 * 0) / 12)


def test_vector_roundtrip_and_exports():
    g = Graph(n_layers=2, n_heads=2)
    scores = hand_scores(g)
    circuit = binarise(scores, g, "greedy", n=4)
    vec = as_vector(circuit, g)
    assert vec.shape == (g.n_edges,) and int(vec.sum()) == 3
    assert torch.equal(from_vector(vec, g), circuit)
    data = json.loads(to_json(circuit, g, scores))
    assert [n["name"] for n in data["nodes"]] == ["input", "a0.h0", "m1", "logits"]
    assert {e["name"]: e["score"] for e in data["edges"]} == {"input->a0.h0<q>": 3.0, "a0.h0->m1": -4.0,
                                                              "m1->logits": 5.0}
    nxg = to_networkx(circuit, g, scores)
    assert nxg.number_of_nodes() == 4 and nxg.number_of_edges() == 3
    assert nxg.nodes["m1"]["type"] == "mlp" and nxg.nodes["a0.h0"]["layer"] == 0


def test_bad_binarise_arguments():
    g = Graph(n_layers=1, n_heads=1)
    with pytest.raises(ValueError, match="unknown binarisation 'best'"):
        binarise(torch.zeros(g.n_forward, g.n_backward), g, "best")
    with pytest.raises(ValueError, match="at least one edge"):
        binarise(torch.zeros(g.n_forward, g.n_backward), g, "greedy", n=0)


def test_faithfulness_limits_and_an_independent_case(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    g = Graph.from_model(model)
    full = faithfulness(model, tok, SAMPLE, g.real_edge_mask, g)
    empty = faithfulness(model, tok, SAMPLE, torch.zeros_like(g.real_edge_mask), g)
    assert full["faithfulness"] == pytest.approx(1.0) and empty["faithfulness"] == pytest.approx(0.0)

    # Keep only input->logits. Every node then runs on the zero baseline, so the final residual is the
    # clean embedding plus what the model adds on top of an all-zero input: computed here with HF.
    only = torch.zeros_like(g.real_edge_mask)
    only[0, g.logits_index] = True
    kept = faithfulness(model, tok, SAMPLE, only, g)["circuit"]
    batch = collate(tok, [SAMPLE])
    captured = {}
    handle = model.model.norm.register_forward_pre_hook(lambda mod, args: captured.update(x=args[0]))
    with torch.no_grad():
        emb = model.model.embed_tokens(batch.input_ids)
        model(inputs_embeds=torch.zeros_like(emb))
        handle.remove()
        resid = emb + captured["x"]
        expected = metric_per_sample(adapter_for(model), resid, batch, "logprob")[0]
    assert kept == pytest.approx(float(expected), abs=1e-4)


def test_faithfulness_runs_on_the_embedded_model(embedded):
    from cud_core.engine.attribution import attribute

    g = Graph.from_model(embedded.model)
    scores = attribute(embedded.model, embedded.tokenizer, [SAMPLE], method="eap")[0]
    big = faithfulness(embedded.model, embedded.tokenizer, SAMPLE, binarise(scores, g, "top-n", 60000), g)
    assert big["clean"] > -1 and big["empty"] < big["clean"]
    assert big["faithfulness"] > 0.2  # most of the graph keeps a good part of the answer


def test_hooked_forward_matches_the_embedded_model(embedded):
    ad, g = adapter_for(embedded.model), Graph.from_model(embedded.model)
    batch = collate(embedded.tokenizer, [SAMPLE])
    with torch.no_grad():
        expected = embedded.model(batch.input_ids).logits
        got = hooked.logits(ad, hooked.run(ad, g, batch.input_ids))
    assert (got - expected).abs().max() <= 1e-4


def test_faithfulness_curve_averages_samples_and_reaches_one_with_every_edge(tiny_llama):
    from cud_core.engine.attribution import attribute
    from cud_core.engine.circuits import faithfulness_curve

    model, tok = tiny_llama.model, tiny_llama.tokenizer
    g = Graph.from_model(model)
    samples = [SAMPLE, Sample("Who wrote Hamlet?", "Shakespeare.", "b")]
    scores = list(attribute(model, tok, samples))
    sizes = (5, 20, g.n_edges)
    curve = faithfulness_curve(model, tok, samples, scores, g, sizes=sizes, baselines=("zero",))
    assert curve["sizes"] == list(sizes) and curve["edges"][-1] == g.n_edges
    # each point is the mean of the per-sample faithfulness of that sample's own n-edge circuit
    by_hand = [faithfulness(model, tok, s, binarise(sc, g, "greedy", 20), g)["faithfulness"]
               for s, sc in zip(samples, scores)]
    assert curve["zero"][1] == pytest.approx(sum(by_hand) / 2, abs=1e-6)
    assert curve["zero"][-1] == pytest.approx(1.0)  # the whole graph keeps everything
    first = next(n for n, v in zip(sizes, curve["zero"]) if v >= 0.8)
    assert curve["reaches"]["zero"]["0.8"] == first


def test_greedy_equals_a_scan_over_every_open_edge_on_every_tiny_layout():
    """The heap-based greedy against the definition: at each step, of all real edges whose child is
    already in the circuit, take the largest |score| (ties: lowest forward, then backward index)."""
    from cud_core.engine.circuits import _node_of_backward, greedy

    for layout in ((2, 4, False), (3, 2, True), (4, 3, False)):
        g = Graph(*layout)
        node_of = _node_of_backward(g)
        gen = torch.Generator().manual_seed(sum(layout))
        scores = torch.randn(g.n_forward, g.n_backward, generator=gen)
        scores[scores.abs() < 0.4] = 0.0  # many ties
        for n in (1, 7, 40, g.n_edges + 5):
            members, picked = {-1}, set()
            while len(picked) < n:
                open_edges = [(-abs(float(scores[f, b])), f, b) for f, b in g.real_edge_mask.nonzero().tolist()
                              if node_of[b] in members and (f, b) not in picked]
                if not open_edges:
                    break
                _, f, b = min(open_edges)
                picked.add((f, b))
                members.add(f)
            expected = torch.zeros_like(g.real_edge_mask)
            for f, b in picked:
                expected[f, b] = True
            assert torch.equal(greedy(scores, g, n), expected), (layout, n)
