import pytest
import torch

from cud_core.data.samples import Sample
from cud_core.engine.attribution import attribute
from cud_core.engine.circuits import as_vector, binarise
from cud_core.engine.graph import Graph
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.scoring import ScoreSettings, score_run, score_runs
from cud_core.store.score_files import load_circuits, load_edge_scores
from cud_core.store.workspace import Workspace

SAMPLES = [Sample(f"What is fact number {i}?", f"Fact {i} is about Paris and Lisbon.", f"s{i}") for i in range(5)]


def test_score_run_stores_scores_circuits_and_statistics(tiny_llama, tmp_path):
    ws = Workspace(tmp_path)
    settings = ScoreSettings(batch_size=2, steps=3, generation=False, faithfulness=True, n_edges=20)
    run = score_run(RunContext(tiny_llama, ws, "test-data"), SAMPLES, settings)
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


def scored_from_now_on(monkeypatch) -> list[str]:
    """The ids of the samples scoring computes from now on, in order."""
    import cud_core.pipeline.scoring as scoring

    seen, original = [], scoring._score_batch

    def spy(lm, group, *args):
        seen.extend(s.id for s in group)
        return original(lm, group, *args)
    monkeypatch.setattr(scoring, "_score_batch", spy)
    return seen


def test_score_run_stops_and_resumes_without_redoing_samples(tiny_llama, tmp_path, monkeypatch):
    ws = Workspace(tmp_path)
    settings = ScoreSettings(batch_size=2, steps=2, generation=False)
    said = []  # the user presses stop once the first batch is reported
    run = score_run(RunContext(tiny_llama, ws, "d", progress=lambda f, m: said.append(m),
                               should_stop=lambda: any(m.startswith("2/5 samples") for m in said)), SAMPLES, settings)
    assert ws.get_run(run)["status"] == "stopped" and ws.done_sample_ids(run) == {"s0", "s1"}
    first = ws.load_results(run)

    seen = scored_from_now_on(monkeypatch)
    assert score_run(RunContext(tiny_llama, ws, "d"), SAMPLES, settings) == run
    assert seen == ["s2", "s3", "s4"]
    assert ws.get_run(run)["status"] == "done"
    assert {k: v for k, v in ws.load_results(run).items() if k in first} == first


def test_topk_storage_keeps_the_largest_scores(tiny_llama, tmp_path):
    ws = Workspace(tmp_path)
    run = score_run(RunContext(tiny_llama, ws, "d"), SAMPLES[:2], ScoreSettings(store="topk:50", generation=False,
                                                                                steps=2))
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
    run = score_run(RunContext(tiny_llama, ws, "d"), SAMPLES[:4], settings)
    edited = [Sample(s.question, s.answer + " Really.", s.id) for s in SAMPLES[:4]]
    assert score_run(RunContext(tiny_llama, ws, "d"), edited, settings) != run  # same ids, new content: not resumed
    # a crash after a batch's tensors were written but before its rows: the files are dropped and redone
    import sqlite3
    with sqlite3.connect(ws.db_path) as db:
        db.execute("DELETE FROM results WHERE run_id=? AND sample_id IN ('s2', 's3')", (run,))
        db.execute("UPDATE runs SET status='running' WHERE id=?", (run,))
    folder = tmp_path / "tensors" / run
    before = sorted(p.name for p in folder.iterdir())
    assert score_run(RunContext(tiny_llama, ws, "d"), SAMPLES[:4], settings) == run
    g = Graph.from_model(tiny_llama.model)
    assert sorted(load_edge_scores(ws, run, g.n_edges)) == ["s0", "s1", "s2", "s3"]
    assert sorted(p.name for p in folder.iterdir()) == before  # one file pair per batch, no leftovers


def test_faithfulness_with_the_mean_baseline(tiny_llama):
    from cud_core.engine.attribution import mean_outputs
    from cud_core.engine.circuits import faithfulness

    g = Graph.from_model(tiny_llama.model)
    means = mean_outputs(tiny_llama.model, tiny_llama.tokenizer, SAMPLES, g)
    full = faithfulness(tiny_llama.model, tiny_llama.tokenizer, SAMPLES[0], g.real_edge_mask, g, "mean", means)
    zero = faithfulness(tiny_llama.model, tiny_llama.tokenizer, SAMPLES[0], g.real_edge_mask, g)
    assert full["faithfulness"] == pytest.approx(1.0) and full["empty"] != pytest.approx(zero["empty"])
    with pytest.raises(ValueError, match="precomputed means"):
        faithfulness(tiny_llama.model, tiny_llama.tokenizer, SAMPLES[0], g.real_edge_mask, g, "mean")


def test_metrics_scored_together_equal_their_own_runs_and_resume_apart(tiny_llama, tmp_path):
    """score_runs writes one run per metric from the same passes: each run is found by its own
    settings afterwards, the first's scores are those of its own scoring run, the second's equal to
    float rounding, and every row and circuit matches. Runs at different points are scored apart."""
    from dataclasses import replace

    settings = [ScoreSettings(batch_size=2, steps=2, generation=False, method="eap-ig-activations", metric=m,
                              n_edges=20) for m in ("logprob", "kl")]
    ws, apart = Workspace(tmp_path / "together"), Workspace(tmp_path / "apart")
    together, shared = score_runs(RunContext(tiny_llama, ws, "d"), SAMPLES, settings)
    assert shared and len(set(together)) == 2 and all(ws.get_run(r)["status"] == "done" for r in together)
    g = Graph.from_model(tiny_llama.model)
    for run, s in zip(together, settings):
        own = score_run(RunContext(tiny_llama, apart, "d"), SAMPLES, s)
        assert score_run(RunContext(tiny_llama, ws, "d"), SAMPLES, s) == run  # found again, not redone
        a, b = load_edge_scores(ws, run, g.n_edges), load_edge_scores(apart, own, g.n_edges)
        for sid in a:
            if s.metric == "logprob":
                assert torch.equal(a[sid], b[sid])
            else:
                assert torch.allclose(a[sid], b[sid], rtol=1e-3, atol=1e-3 * b[sid].abs().max())
        circuits, circuits_apart = load_circuits(ws, run, g.n_edges), load_circuits(apart, own, g.n_edges)
        assert circuits.keys() == circuits_apart.keys()
        if s.metric == "logprob":
            assert all(torch.equal(circuits[k], circuits_apart[k]) for k in circuits)
        rows, rows_apart = ws.load_results(run), apart.load_results(own)
        if s.metric == "logprob":
            assert rows == rows_apart
        else:  # the metrics are the same; the circuit statistics follow the scores, to rounding
            def stats(rs):
                return {k: {f: v for f, v in r.items() if f not in ("circuit", "score_norm")} for k, r in rs.items()}
            assert stats(rows) == stats(rows_apart)
            for k in rows:
                assert rows[k]["score_norm"] == pytest.approx(rows_apart[k]["score_norm"], rel=1e-4)
                assert rows[k]["circuit"]["n_edges"] == rows_apart[k]["circuit"]["n_edges"]
    # the logprob run is half done, the kl run is new: each is scored on its own, both end complete
    ws2, said = Workspace(tmp_path / "uneven"), []
    half = score_run(RunContext(tiny_llama, ws2, "d", progress=lambda f, m: said.append(m),
                                should_stop=lambda: any(m.startswith("2/5 samples") for m in said)), SAMPLES,
                     settings[0])
    assert ws2.done_sample_ids(half) == {"s0", "s1"}
    runs, shared = score_runs(RunContext(tiny_llama, ws2, "d"), SAMPLES, settings)
    assert not shared and runs[0] == half and all(ws2.get_run(r)["status"] == "done" for r in runs)
    kl_apart = load_edge_scores(apart, score_run(RunContext(tiny_llama, apart, "d"), SAMPLES, settings[1]), g.n_edges)
    kl_uneven = load_edge_scores(ws2, runs[1], g.n_edges)
    assert all(torch.equal(kl_uneven[sid], kl_apart[sid]) for sid in kl_apart)  # scored alone: identical
    with pytest.raises(ValueError, match="differ in the metric only"):
        score_runs(RunContext(tiny_llama, ws, "d"), SAMPLES, [settings[0], replace(settings[1], n_edges=10)])
    with pytest.raises(ValueError, match="differ in the metric only"):
        score_runs(RunContext(tiny_llama, ws, "d"), SAMPLES, [settings[0], settings[0]])
