import threading
import time

import pytest

from cud_core.data.samples import DataError
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.jobs import JobManager
from cud_core.store.annotations import export_csv, import_csv
from cud_core.store.workspace import Workspace


def test_jobs_run_one_at_a_time_in_order_with_progress():
    manager = JobManager()
    running, overlap, order = set(), [], []
    lock = threading.Lock()

    def work(name):
        def fn(progress, should_stop):
            with lock:
                running.add(name)
                overlap.append(len(running))
            for i in range(3):
                progress((i + 1) / 3, f"{name} {i}")
                time.sleep(0.01)
            with lock:
                running.discard(name)
                order.append(name)
            return name.upper()
        return fn
    jobs = [manager.submit("score", f"job {n}", work(n)) for n in "abc"]
    for j in jobs:
        assert manager.wait(j.id, 10).status == "done"
    assert order == ["a", "b", "c"] and max(overlap) == 1
    assert [j.result for j in jobs] == ["A", "B", "C"] and jobs[0].progress == 1.0 and jobs[0].message == "a 2"


def test_stop_failure_and_cancel():
    manager = JobManager()
    started = threading.Event()

    def long(progress, should_stop):
        started.set()
        while not should_stop():
            time.sleep(0.01)
        return "partial"
    a = manager.submit("unlearn", "long", long)
    b = manager.submit("unlearn", "queued", lambda p, s: "never")
    started.wait(5)
    manager.stop(b.id)
    assert b.status == "cancelled"
    manager.stop(a.id)
    assert manager.wait(a.id, 5).status == "stopped" and a.result == "partial"

    def boom(progress, should_stop):
        raise ValueError("the data has no answers")
    c = manager.submit("score", "bad", boom)
    assert manager.wait(c.id, 5).status == "failed" and "the data has no answers" in c.error
    d = manager.submit("score", "after a failure", lambda p, s: 42)
    assert manager.wait(d.id, 5).result == 42  # the worker survives a failed job
    assert manager.active() == []


def test_annotations_csv_roundtrip_and_row_errors(tmp_path):
    ws = Workspace(tmp_path)
    ws.add_annotation("m", "d", "s1", "surprisingly hard", "deep, late path", "ann")
    text = export_csv(ws, "m", "d")
    other = Workspace(tmp_path / "other")
    assert import_csv(other, text, "m", "d") == (1, 0)
    [a] = other.annotations()
    assert (a["sample_id"], a["label"], a["note"], a["author"]) == ("s1", "surprisingly hard", "deep, late path", "ann")
    bad = "sample_id,label,note\ns1,,x\n,surprisingly easy,y\nzz,other,z\n"
    with pytest.raises(DataError) as err:
        import_csv(other, bad, "m", "d", "mine.csv", known_ids={"s1", "s2"})
    assert [str(p) for p in err.value.problems] == ["mine.csv row 1: empty label", "mine.csv row 2: empty sample_id",
                                                    "mine.csv row 3: unknown sample_id 'zz'"]
    assert len(other.annotations()) == 1  # nothing half-imported
    with pytest.raises(DataError, match="missing column label"):
        import_csv(other, "sample_id,note\ns1,x\n", "m", "d")


def test_stop_during_preparation_stops_the_job_and_keeps_what_was_done(tiny_llama, tmp_path, monkeypatch):
    import cud_core.pipeline.knowledge as knowledge
    from cud_core.data.samples import Sample
    from cud_core.pipeline.knowledge import known_facts

    monkeypatch.setenv("CUD_CACHE_DIR", str(tmp_path))
    facts = [Sample(f"What is fact {i}?", f"Fact {i}.", f"k{i}") for i in range(10)]
    asked, original = [], knowledge.generate_answers
    monkeypatch.setattr(knowledge, "generate_answers",
                        lambda m, t, group, **kw: (asked.extend(s.id for s in group), original(m, t, group, **kw))[1])
    manager = JobManager()
    started = threading.Event()

    def fn(progress, should_stop):
        def stop_after_first_batch():
            started.set()
            time.sleep(0.3)  # the user presses Stop meanwhile
            return should_stop()
        return known_facts(tiny_llama.model, tiny_llama.tokenizer, facts, batch_size=4,
                           should_stop=stop_after_first_batch)
    job = manager.submit("score", "filter", fn)
    started.wait(30)
    manager.stop(job.id)
    assert job.state in ("stopping…", "stopped")
    assert manager.wait(job.id, 30).status == "stopped"
    assert "4/10 done and cached" in job.message or "0/10" in job.message
    first = list(asked)
    assert len(first) <= 4  # stopped before the second batch of 4, however fast the machine
    kept = known_facts(tiny_llama.model, tiny_llama.tokenizer, facts, batch_size=4)  # resumes from the cache
    assert sorted(asked[len(first):]) == sorted(set(s.id for s in facts) - set(first))
    assert len(asked) == len(facts) and len(set(asked)) == len(facts)  # every question answered once
    assert all(s.meta["model_answer"] is not None for s in kept)


def test_a_stopped_finetune_is_not_cached(tiny_llama, tmp_path, monkeypatch):
    from cud_core.data.samples import Sample
    from cud_core.pipeline.finetune import FinetuneSettings, finetuned
    from cud_core.pipeline.knowledge import Stopped

    monkeypatch.setenv("CUD_CACHE_DIR", str(tmp_path))
    facts = [Sample(f"What is fact {i}?", f"Fact {i}.", f"k{i}") for i in range(4)]
    calls = iter([False, False, True])
    with pytest.raises(Stopped, match="fine-tuning"):
        finetuned(tiny_llama, facts, FinetuneSettings(epochs=5, batch_size=2), should_stop=lambda: next(calls, True))
    assert not any((tmp_path / "finetuned").glob("*/config.json"))


def test_the_work_before_the_first_step_is_estimated_named_and_shown_with_its_own_progress(tiny_llama, tmp_path,
                                                                                           monkeypatch):
    """The knowledge filter on a model without shipped answers: counted (timed on a few questions, whose
    answers are kept), reported as its own stage with progress, and not redone once cached."""
    import cud_core.pipeline.jobs as jobs
    import cud_core.pipeline.knowledge as knowledge
    from cud_core.pipeline.knowledge import unanswered

    monkeypatch.setenv("CUD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(knowledge, "key_answer_found", lambda answer, key: True)  # the tiny model "knows" them
    data = "builtin:world-facts"
    asked, original = [], knowledge.generate_answers
    monkeypatch.setattr(knowledge, "generate_answers",
                        lambda m, t, group, **kw: (asked.extend(s.id for s in group), original(m, t, group, **kw))[1])
    plan = jobs.estimate_preparation(RunContext(tiny_llama, dataset=data), 0.25, limit=40, probe=8)
    (stage,) = plan["stages"]
    assert stage["stage"] == "keeping the facts the model knows" and stage["work"].startswith("40 questions")
    assert plan["seconds"] == stage["seconds"] > 0 and len(asked) == 8  # only the probe was answered...
    candidates = jobs.load_data(data)[:40]
    assert len(unanswered(tiny_llama.model, candidates)) == 32          # ...and its answers are kept
    assert jobs.describe_preparation(plan).startswith("before the first step: about ")

    monkeypatch.setattr(jobs, "PREPARE_INLINE_S", 0.0)  # any preparation is too slow to do for an estimate
    sc, prep = jobs.scenario_for_estimate(RunContext(tiny_llama, dataset=data), 0.25, limit=40)
    assert prep["upper_bound"] and len(sc.forget) + len(sc.retain) == 40 and len(asked) == 16  # one more probe
    assert "upper bound" in jobs.describe_preparation(prep)

    said = []
    jobs.prepare_scenario(RunContext(tiny_llama, dataset=data, progress=lambda f, m: said.append((f, m))), 0.25,
                          limit=40)
    assert said and all(m.startswith("before the first step: keeping ") for _, m in said)
    assert max(f for f, _ in said) == 1.0 and sorted(asked) == sorted(s.id for s in candidates)  # each once
    assert jobs.estimate_preparation(RunContext(tiny_llama, dataset=data), 0.25, limit=40) == {"stages": [],
                                                                                               "seconds": 0}


def test_finetuning_time_is_its_batches_at_the_probed_rates(tiny_llama):
    from cud_core.data.samples import Sample
    from cud_core.engine.memory import token_lengths
    from cud_core.pipeline.finetune import FinetuneSettings, finetune_seconds

    samples = [Sample(f"Who wrote book {i}?", "An author " * (1 + i % 3), f"b{i}") for i in range(5)]
    timing = {"fb_s_per_token": 2e-3, "adam_s_per_param": 1e-8, "n_params": 1000}
    n = token_lengths(tiny_llama.tokenizer, samples)
    padded = 2 * max(n[:2]) + 2 * max(n[2:4]) + n[4]                   # batches of 2, each padded to its longest
    expected = 3 * (padded * 2e-3 + 3 * 1e-8 * 1000)                   # 3 epochs of 3 batches and updates
    assert finetune_seconds(tiny_llama, samples, FinetuneSettings(epochs=3, batch_size=2), timing) == \
        pytest.approx(expected)
