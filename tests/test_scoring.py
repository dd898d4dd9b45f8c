import pytest
import torch

from cud_core.attribution import attribute
from cud_core.circuits import as_vector, binarise
from cud_core.data import Sample
from cud_core.graph import Graph
from cud_core.scoring import ScoreSettings, load_circuits, load_edge_scores, score_run
from cud_core.store import Workspace

SAMPLES = [Sample(f"What is fact number {i}?", f"Fact {i} is about Paris and Lisbon.", f"s{i}") for i in range(5)]


def test_score_run_stores_scores_circuits_and_statistics(tiny_llama, tmp_path):
    ws = Workspace(tmp_path)
    settings = ScoreSettings(batch_size=2, steps=3, generation=False, faithfulness=True, n_edges=20)
    run = score_run(tiny_llama, SAMPLES, settings, ws, "test-data")
    g = Graph.from_model(tiny_llama.model)
    results = ws.load_results(run)
    assert sorted(results) == [s.id for s in SAMPLES] and ws.get_run(run)["status"] == "done"
    for r in results.values():
        assert r["answer_nll"] > 0 and 0 < r["circuit"]["n_edges"] <= 20
        assert "faithfulness" in r["circuit"] and len(r["circuit"]["nodes_per_layer"]) == 2
    expected = attribute(tiny_llama.model, tiny_llama.tokenizer, SAMPLES, steps=3, batch_size=2)
    stored = load_edge_scores(ws, run, g.n_edges)
    circuits = load_circuits(ws, run, g.n_edges)
    for i, s in enumerate(SAMPLES):
        exact = as_vector(expected[i], g)
        assert torch.allclose(stored[s.id], exact, rtol=1e-2, atol=1e-3 * exact.abs().max())
        assert torch.equal(circuits[s.id], as_vector(binarise(expected[i], g, "greedy", 20), g))


def test_score_run_stops_and_resumes_without_redoing_samples(tiny_llama, tmp_path):
    ws = Workspace(tmp_path)
    settings = ScoreSettings(batch_size=2, steps=2, generation=False)
    said = []  # the user presses stop once the first batch is reported
    run = score_run(tiny_llama, SAMPLES, settings, ws, "d", progress=lambda f, m: said.append(m),
                    should_stop=lambda: any(m.startswith("2/5 samples") for m in said))
    assert ws.get_run(run)["status"] == "stopped" and ws.done_sample_ids(run) == {"s0", "s1"}
    first = ws.load_results(run)

    seen = []
    import cud_core.scoring as scoring
    original = scoring._score_batch

    def spy(lm, group, *args):
        seen.extend(s.id for s in group)
        return original(lm, group, *args)
    scoring._score_batch = spy
    try:
        assert score_run(tiny_llama, SAMPLES, settings, ws, "d") == run
    finally:
        scoring._score_batch = original
    assert seen == ["s2", "s3", "s4"]
    assert ws.get_run(run)["status"] == "done"
    assert {k: v for k, v in ws.load_results(run).items() if k in first} == first


def test_topk_storage_keeps_the_largest_scores(tiny_llama, tmp_path):
    ws = Workspace(tmp_path)
    run = score_run(tiny_llama, SAMPLES[:2], ScoreSettings(store="topk:50", generation=False, steps=2), ws, "d")
    g = Graph.from_model(tiny_llama.model)
    exact = as_vector(attribute(tiny_llama.model, tiny_llama.tokenizer, SAMPLES[:1], steps=2)[0], g)
    stored = load_edge_scores(ws, run, g.n_edges)["s0"]
    assert int((stored != 0).sum()) == 50
    top = exact.abs().topk(50).indices
    assert torch.allclose(stored[top], exact[top], rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("field,value,message", [("method", "ig", "unknown method"),
                                                  ("store", "int8", "unknown score storage"),
                                                  ("n_edges", 0, "at least 1")])
def test_settings_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        ScoreSettings(**{field: value}).validate()


def test_changed_samples_start_a_new_run_and_orphan_batches_are_redone(tiny_llama, tmp_path):
    ws = Workspace(tmp_path)
    settings = ScoreSettings(batch_size=2, steps=1, generation=False)
    run = score_run(tiny_llama, SAMPLES[:4], settings, ws, "d")
    edited = [Sample(s.question, s.answer + " Really.", s.id) for s in SAMPLES[:4]]
    assert score_run(tiny_llama, edited, settings, ws, "d") != run  # same ids, new content: not resumed
    # a crash after a batch's tensors were written but before its rows: the files are dropped and redone
    import sqlite3
    with sqlite3.connect(ws.db_path) as db:
        db.execute("DELETE FROM results WHERE run_id=? AND sample_id IN ('s2', 's3')", (run,))
        db.execute("UPDATE runs SET status='running' WHERE id=?", (run,))
    folder = tmp_path / "tensors" / run
    before = sorted(p.name for p in folder.iterdir())
    assert score_run(tiny_llama, SAMPLES[:4], settings, ws, "d") == run
    g = Graph.from_model(tiny_llama.model)
    assert sorted(load_edge_scores(ws, run, g.n_edges)) == ["s0", "s1", "s2", "s3"]
    assert sorted(p.name for p in folder.iterdir()) == before  # one file pair per batch, no leftovers


def test_faithfulness_with_the_mean_baseline(tiny_llama):
    from cud_core.attribution import mean_outputs
    from cud_core.circuits import faithfulness

    g = Graph.from_model(tiny_llama.model)
    means = mean_outputs(tiny_llama.model, tiny_llama.tokenizer, SAMPLES, g)
    full = faithfulness(tiny_llama.model, tiny_llama.tokenizer, SAMPLES[0], g.real_edge_mask, g, "mean", means)
    zero = faithfulness(tiny_llama.model, tiny_llama.tokenizer, SAMPLES[0], g.real_edge_mask, g)
    assert full["faithfulness"] == pytest.approx(1.0) and full["empty"] != pytest.approx(zero["empty"])
    with pytest.raises(ValueError, match="precomputed means"):
        faithfulness(tiny_llama.model, tiny_llama.tokenizer, SAMPLES[0], g.real_edge_mask, g, "mean")
