import sqlite3

import pytest
import torch

from cud_core.cli import main
from cud_core.data.samples import Sample
from cud_core.pipeline.upgrade import upgrade
from cud_core.store.atomic import atomic_write_text
from cud_core.store.score_files import graph_of
from cud_core.store.workspace import Workspace, WorkspaceError


def test_runs_samples_and_results_roundtrip(tmp_path):
    ws = Workspace(tmp_path)
    run = ws.create_run("score", "tiny", "builtin:x", {"steps": 5})
    ws.save_samples(run, [Sample("q1?", "a1", "s1", {"key": "a"}), Sample("q2?", "a2", "s2")])
    ws.save_results(run, {"s1": {"answer_nll": 1.5}})
    ws.save_results(run, {"s1": {"cud": 0.25}, "s2": {"answer_nll": 2.0}})  # merges per sample
    again = Workspace(tmp_path)  # a restart reads everything back
    assert again.load_results(run) == {"s1": {"answer_nll": 1.5, "cud": 0.25}, "s2": {"answer_nll": 2.0}}
    assert again.done_sample_ids(run) == {"s1", "s2"}
    assert [s.meta for s in again.load_samples(run)] == [{"key": "a"}, {}]
    assert again.find_run("score", "tiny", "builtin:x", {"steps": 5}) == run
    assert again.find_run("score", "tiny", "builtin:x", {"steps": 6}) is None
    again.set_status(run, "done", "2 samples")
    assert again.get_run(run)["status"] == "done" and again.get_run(run)["config"] == {"steps": 5}
    again.delete_run(run)
    assert again.list_runs() == [] and again.load_results(run) == {}


def test_tensors_roundtrip_atomically(tmp_path):
    ws = Workspace(tmp_path)
    scores = torch.randn(3, 4).half()
    ws.save_tensors("r1", "edge_scores", {"s1": scores}, {"method": "eap"})
    assert torch.equal(ws.load_tensors("r1", "edge_scores")["s1"], scores)
    assert [p.name for p in ws.tensor_path("r1", "x").parent.iterdir()] == ["edge_scores.safetensors"]
    with pytest.raises(FileNotFoundError, match="no tensors 'other'"):
        ws.load_tensors("r1", "other")


def test_atomic_write_keeps_old_content_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    atomic_write_text(path, "old")

    def crash(*a):
        raise OSError("crash before rename")
    monkeypatch.setattr("cud_core.store.atomic.os.replace", crash)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_annotations_persist_and_filter(tmp_path):
    ws = Workspace(tmp_path)
    a = ws.add_annotation("m", "d", "s1", "surprisingly hard", "deep path", "ann")
    ws.add_annotation("m", "d", "s2", "surprisingly easy")
    ws.update_annotation(a, note="very deep path")
    rows = Workspace(tmp_path).annotations(sample_id="s1")
    assert [(r["label"], r["note"], r["author"]) for r in rows] == [("surprisingly hard", "very deep path", "ann")]
    assert len(ws.annotations(model="m", dataset="d")) == 2
    ws.delete_annotation(a)
    assert [r["sample_id"] for r in ws.annotations()] == ["s2"]
    with pytest.raises(ValueError, match="needs a label"):
        ws.add_annotation("m", "d", "s1", " ")


def test_a_scoring_run_without_its_graph_layout_names_the_fix(tmp_path):
    ws = Workspace(tmp_path)
    run = ws.create_run("score", "m", "d", {})
    with pytest.raises(ValueError, match=f"scoring run {run} has no stored graph layout: an older CUD Explorer "
                                         "wrote it; score its samples again"):
        graph_of(ws, run)
    ws.save_artifact(run, "graph", {"n_layers": 2, "n_heads": 4, "parallel": False})
    assert (graph_of(ws, run).n_layers, graph_of(ws, run).n_heads) == (2, 4)


def test_schema_is_versioned(tmp_path, capsys):
    ws = Workspace(tmp_path)
    assert ws.schema_version == 3
    with sqlite3.connect(ws.db_path) as db:  # a version-1 workspace: refused until `upgrade` converts it
        db.execute("DROP TABLE artifacts")
        db.execute("ALTER TABLE runs DROP COLUMN owner")
        db.execute("INSERT INTO runs VALUES ('old', 'score', 'm', 'd', '{}', 'done', 0, 0, '')")
        db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    with pytest.raises(WorkspaceError, match=r"schema version 1\) was written by an older CUD Explorer; run "
                                             r"`python -m cud_core upgrade --workspace "):
        Workspace(tmp_path)
    with sqlite3.connect(ws.db_path) as db:  # the refusal changed nothing
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("1",)
        assert "artifacts" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert main(["upgrade", "--workspace", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"upgraded database schema 1 → 3\n{tmp_path} is in this version's format\n"
    ws = Workspace(tmp_path)
    assert ws.schema_version == 3 and ws.get_run("old")["owner"] == ""
    assert upgrade(tmp_path) == []  # once
    assert main(["upgrade", "--workspace", str(tmp_path / "none")]) == 2
    assert "holds no CUD Explorer workspace" in capsys.readouterr().err
    ws.save_artifact(ws.create_run("x", "m", "d", {}), "table", {"a": [1, 2]})
    with sqlite3.connect(ws.db_path) as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(WorkspaceError, match="schema version 99, newer"):
        Workspace(tmp_path)


def test_runs_without_progress_are_marked_interrupted(tmp_path):
    ws = Workspace(tmp_path)
    stale, live = ws.create_run("score", "m", "d", {"a": 1}), ws.create_run("score", "m", "d", {"a": 2})
    with sqlite3.connect(ws.db_path) as db:  # both started on another machine: only the idle timer tells
        db.execute("UPDATE runs SET updated=updated-7200 WHERE id=?", (stale,))
        db.execute("UPDATE runs SET owner='elsewhere:1:1'")
    ws.touch(live)
    assert ws.mark_interrupted(idle_seconds=1800) == [stale]
    assert ws.get_run(stale)["status"] == "interrupted" and ws.get_run(live)["status"] == "running"
