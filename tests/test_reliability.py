"""Issue #13: nothing lost (ids, resume, kill -9), runs that did nothing never report results, one
clear line for bad input, identical jobs computed once."""
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from cud_core.cli import main
from cud_core.data.samples import Sample
from cud_core.engine.graph import Graph
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.scoring import ScoreSettings, score_run
from cud_core.pipeline.unlearning import UnlearnSettings, unlearn
from cud_core.pipeline.upgrade import upgrade
from cud_core.store.score_files import load_circuits, load_edge_scores
from cud_core.store.workspace import Workspace, WorkspaceError
from cud_core.unlearn import run_unlearning
from cud_core.unlearn.runner import NonFiniteLoss

ROOT = Path(__file__).resolve().parents[1]
# ids a user can type, including `::`, which score-file format 1 used as a separator
ODD_IDS = ["a::b", "c::idx", "d::val", "e0", "e1.idx", "x\x00y", "ünï 🙂", "::"]
SAMPLES = [Sample(f"What is fact number {i}?", f"Fact {i} is about Paris.", sid) for i, sid in enumerate(ODD_IDS)]


def cli(*args, **kwargs):
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUD_NO_PROGRESS="1")
    return subprocess.Popen([sys.executable, "-m", "cud_core", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, **kwargs)


def run_cli(*args):
    proc = cli(*args)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def facts_file(tmp_path, ids, name="facts.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"id": sid, "question": f"What is fact {i}?", "answer": f"Fact {i} is Oslo."})
                            + "\n" for i, sid in enumerate(ids)))
    return path


def integrity_ok(ws: Workspace) -> bool:
    with sqlite3.connect(ws.db_path) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ----------------------------------------------------------------------------- 1. ids round-trip

def test_any_id_round_trips_and_a_rerun_loses_nothing(tiny_llama, tmp_path):
    ws = Workspace(tmp_path)
    settings = ScoreSettings(batch_size=2, steps=1, generation=False, n_edges=10)
    run = score_run(RunContext(tiny_llama, ws, "d"), SAMPLES, settings)
    g = Graph.from_model(tiny_llama.model)
    scores, circuits = load_edge_scores(ws, run, g.n_edges), load_circuits(ws, run, g.n_edges)
    assert sorted(scores) == sorted(ODD_IDS) == sorted(circuits) == sorted(ws.done_sample_ids(run))
    files = sorted(p.name for p in (tmp_path / "tensors" / run).iterdir())

    assert score_run(RunContext(tiny_llama, ws, "d"), SAMPLES, settings) == run  # the rerun of the issue's reproduction
    assert sorted(p.name for p in (tmp_path / "tensors" / run).iterdir()) == files
    again = load_edge_scores(ws, run, g.n_edges)
    assert all(torch.equal(again[i], scores[i]) for i in ODD_IDS)
    assert all(torch.equal(load_circuits(ws, run, g.n_edges)[i], circuits[i]) for i in ODD_IDS)
    # each sample's vector is its own: different samples have different scores
    assert len({tuple(v.tolist()) for v in scores.values()}) == len(ODD_IDS)


def test_topk_storage_with_odd_ids(tiny_llama, tmp_path):
    ws = Workspace(tmp_path)
    settings = ScoreSettings(store="topk:40", steps=1, generation=False, batch_size=2)
    run = score_run(RunContext(tiny_llama, ws, "d"), SAMPLES[:3], settings)
    assert score_run(RunContext(tiny_llama, ws, "d"), SAMPLES[:3],
                     settings) == run  # resumed: nothing to redo, nothing lost
    g = Graph.from_model(tiny_llama.model)
    dense = score_run(RunContext(tiny_llama, Workspace(tmp_path / "b"), "d"), SAMPLES[:3], ScoreSettings(steps=1,
                                                                                                         generation=False))
    full = load_edge_scores(Workspace(tmp_path / "b"), dense, g.n_edges)
    for sid, vec in load_edge_scores(ws, run, g.n_edges).items():
        kept = vec.nonzero().flatten()
        assert len(kept) == 40 and torch.equal(vec[kept], full[sid][kept])


def test_files_in_score_format_1_are_refused_until_upgraded(tmp_path):
    """Format 1 keyed tensors by id (`s1`, `s2::idx`, `s2::val`; circuits `{id: indices}`): reading one names
    `upgrade`, which rewrites it in format 2 with the same values."""
    from safetensors.torch import save_file

    ws = Workspace(tmp_path)
    folder = tmp_path / "tensors" / "old"
    folder.mkdir(parents=True)
    save_file({"s1": torch.tensor([1.0, 0.0, 2.0], dtype=torch.float16),
               "s2::idx": torch.tensor([1], dtype=torch.int32), "s2::val": torch.tensor([5.0], dtype=torch.float16)},
              str(folder / "scores-abc.safetensors"))
    save_file({"s1": torch.tensor([0, 2], dtype=torch.int32), "s2": torch.tensor([1], dtype=torch.int32)},
              str(folder / "circuits-abc.safetensors"))
    for load in (load_edge_scores, load_circuits):
        with pytest.raises(WorkspaceError, match=r"score file .*/old/\w+-abc.safetensors \(format 1\) was written "
                                                 r"by an older CUD Explorer; run `python -m cud_core upgrade "):
            load(ws, "old", 3)
    assert upgrade(tmp_path) == ["score file old/circuits-abc → format 2", "score file old/scores-abc → format 2"]
    assert upgrade(tmp_path) == []
    scores, circuits = load_edge_scores(ws, "old", 3), load_circuits(ws, "old", 3)
    assert scores["s1"].tolist() == [1.0, 0.0, 2.0] and scores["s2"].tolist() == [0.0, 5.0, 0.0]
    assert circuits["s1"].tolist() == [True, False, True] and circuits["s2"].tolist() == [False, True, False]


def test_rows_without_tensors_and_temp_files_are_redone_and_cleaned(tiny_llama, tmp_path):
    ws = Workspace(tmp_path)
    settings = ScoreSettings(batch_size=2, steps=1, generation=False)
    run = score_run(RunContext(tiny_llama, ws, "d"), SAMPLES[:4], settings)
    folder = tmp_path / "tensors" / run
    victim = sorted(folder.glob("scores-*"))[0]
    lost = set(json.loads(__import__("safetensors").safe_open(str(victim), "pt").metadata()["ids"]))
    victim.unlink()  # a result row whose tensors are gone must not count as done
    (folder / ".scores-x.safetensors.k3j2.partial").write_bytes(b"half")  # a kill inside a write
    ws.set_status(run, "interrupted")
    assert score_run(RunContext(tiny_llama, ws, "d"), SAMPLES[:4], settings) == run
    g = Graph.from_model(tiny_llama.model)
    assert lost <= set(load_edge_scores(ws, run, g.n_edges)) and len(load_edge_scores(ws, run, g.n_edges)) == 4
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- 2. settings checked up front

@pytest.mark.parametrize("args,message", [
    (["calibrate", "--steps", "0"], "steps must be a whole number ≥ 1"),
    (["calibrate", "--lr", "nan"], "learning rate must be a finite number ≥ 0"),
    (["calibrate", "--eval-every", "0"], "eval_every must be a whole number ≥ 1"),
    (["calibrate", "--q", "0.9"], "q must be in (0, 0.5]"),
    (["calibrate", "--seeds", "0,0"], "seeds must be distinct"),
    (["calibrate", "--seeds", "a"], "--seeds expects"),
    (["calibrate", "--folds", "1"], "folds must be"),
    (["unlearn", "--lr", "inf"], "learning rate must be a finite number ≥ 0"),
    (["unlearn", "--lr=-1e-5"], "learning rate must be a finite number ≥ 0"),
    (["unlearn", "--batch-size", "0"], "batch_size must be a whole number ≥ 1"),
    (["unlearn", "--checkpoint-every", "-1"], "checkpoint_every"),
    (["unlearn", "--hyper", "beta=abc"], "npo hyper-parameter beta must be a finite number, got 'abc'"),
    (["unlearn", "--hyper", "delta=1"], "npo has no hyper-parameter delta"),
    (["unlearn", "--hyper", "beta=0"], "npo hyper-parameter beta must be > 0"),
    (["unlearn", "--method", "rmu", "--hyper", "update_layers=0"], "update_layers must be ≥ 1"),
    (["unlearn", "--method", "rmu", "--hyper", "layer=1.5"], "layer must be a whole number"),
    (["unlearn", "--forget-fraction", "1.5"], "--forget-fraction must be between 0 and 1"),
    (["score", "--batch-size", "0"], "batch_size must be at least 1"),
    (["score", "--steps", "0"], "steps and batch_size must be at least 1"),
    (["score", "--device", "bogus"], "unknown device 'bogus'"),
    (["score", "--device", "mps"], "MPS is not available"),
    (["score", "--device", "cuda:7"], "device 'cuda:7'"),
])
def test_bad_settings_are_refused_before_any_model_work(args, message, tmp_path, capsys):
    if "cuda" in " ".join(args) and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    # the model does not exist: if the settings were checked after loading it, the error would be about it
    code = main([*args, "--model", str(tmp_path / "no-model"), "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ws" / "cud.sqlite").exists() or not Workspace(tmp_path / "ws").list_runs()


def test_a_workspace_that_is_a_file_is_refused_before_the_model_loads(tmp_path, capsys):
    afile = tmp_path / "ws.txt"
    afile.write_text("not a folder")
    code = main(["score", "--model", str(tmp_path / "no-model"), "--workspace", str(afile)])
    assert code == 2 and "is a file, not a folder" in capsys.readouterr().err


def test_export_of_an_unknown_run_fails(tmp_path, capsys):
    Workspace(tmp_path)
    assert main(["export", "--validation", "--run", "bogus", "--workspace", str(tmp_path)]) == 2
    assert "no calibration run with this id" in capsys.readouterr().err


def test_pickled_weights_are_refused_without_running_them(tiny_folder, tmp_path):
    import pickle
    import shutil

    folder = tmp_path / "evil"
    shutil.copytree(tiny_folder, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    code, out, err = run_cli("info", "--model", str(folder))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "only pickled weights (pytorch_model.bin)" in err and "--allow-pickle" in err
    assert not marker.exists()


def test_a_diverging_run_fails_instead_of_storing_nan(tiny_folder, tmp_path):
    data = facts_file(tmp_path, [f"f{i}" for i in range(6)])
    code, out, err = run_cli("unlearn", "--model", str(tiny_folder), "--data", str(data), "--workspace",
                             str(tmp_path / "ws"), "--method", "grad_ascent", "--lr", "1e6", "--steps", "20",
                             "--forget-fraction", "0.5", "--eval-every", "1")
    [run] = Workspace(tmp_path / "ws").list_runs("unlearn")
    assert code == 1 and "failed: non-finite" in err and "Traceback" not in err, err
    assert run["status"] == "failed" and run["message"].startswith("non-finite ")
    assert not Workspace(tmp_path / "ws").checkpoint_path(run["id"]).exists()


def test_runner_raises_on_a_non_finite_loss(tiny_llama):
    with pytest.raises(NonFiniteLoss, match="non-finite .* at step"):
        run_unlearning(tiny_llama.model, tiny_llama.tokenizer, SAMPLES[:2], [], "grad_ascent", steps=30, lr=1e8,
                       eval_every=1)


# ----------------------------------------------------------------------------- 3. unlearning resumes

def test_a_stopped_unlearning_run_resumes_to_the_same_result(tiny_llama, tmp_path):
    forget, retain = SAMPLES[:3], SAMPLES[3:]
    kw = dict(method="npo", steps=8, lr=1e-3, eval_every=2, seed=3, batch_size=2)
    reference = run_unlearning(tiny_llama.model, tiny_llama.tokenizer, forget, retain, **kw)
    path = tmp_path / "ckpt.safetensors"
    # the flag is read before every module's forward and in every backward: count the reads of a
    # whole run, then stop part-way through a pass (mid-step); that step is redone on resume
    calls = []
    run_unlearning(tiny_llama.model, tiny_llama.tokenizer, forget, retain,
                   should_stop=lambda: calls.append(1) and False, **kw)
    count = iter(range(10 ** 9))
    first = run_unlearning(tiny_llama.model, tiny_llama.tokenizer, forget, retain, checkpoint=path,
                           should_stop=lambda: next(count) >= len(calls) * 3 // 5, **kw)
    assert first.stopped and path.is_file() and 0 < len(first.losses) < 8
    seen = []
    resumed = run_unlearning(tiny_llama.model, tiny_llama.tokenizer, forget, retain, checkpoint=path,
                             callback=seen.append, **kw)
    assert resumed.steps == reference.steps == [e["step"] for e in seen] == [0, 2, 4, 6, 8]
    assert resumed.curve == reference.curve and resumed.losses == reference.losses
    for (name, p), q in zip(resumed.model.named_parameters(), reference.model.parameters()):
        assert torch.equal(p, q), name
    # a checkpoint of other settings is ignored, not misapplied
    other = run_unlearning(tiny_llama.model, tiny_llama.tokenizer, forget, retain, checkpoint=path,
                           **{**kw, "seed": 4})
    assert other.steps == [0, 2, 4, 6, 8] and other.curve != reference.curve


def test_a_run_stopped_before_its_first_step_resumes_without_a_second_step_0(tiny_llama, tmp_path):
    forget, retain = SAMPLES[:3], SAMPLES[3:]
    kw = dict(method="grad_diff", steps=4, lr=1e-3, eval_every=2, batch_size=2)
    path = tmp_path / "ckpt.safetensors"
    first = run_unlearning(tiny_llama.model, tiny_llama.tokenizer, forget, retain, checkpoint=path,
                           should_stop=lambda: True, **kw)
    assert first.stopped and first.steps == []  # stopped inside the evaluation of step 0
    resumed = run_unlearning(tiny_llama.model, tiny_llama.tokenizer, forget, retain, checkpoint=path, **kw)
    assert resumed.steps == [0, 2, 4]
    none = tmp_path / "none.safetensors"  # checkpoint_every=0: nothing is ever written
    run_unlearning(tiny_llama.model, tiny_llama.tokenizer, forget, retain, checkpoint=none, checkpoint_every=0,
                   should_stop=lambda: True, **kw)
    assert not none.exists()


def test_hyper_parameters_are_normalised(tiny_llama):
    from cud_core.unlearn import METHODS

    assert METHODS["rmu"].check_hyper({"layer": 1.0, "steering_coeff": 5}) == {"layer": 1, "steering_coeff": 5.0}
    result = run_unlearning(tiny_llama.model, tiny_llama.tokenizer, SAMPLES[:2], SAMPLES[2:], "rmu", steps=1,
                            lr=1e-3, layer=1.0)
    assert result.settings["hyper"]["layer"] == 1


def test_an_unlearning_run_resumes_and_removes_its_checkpoint(tiny_llama, tmp_path):
    ws = Workspace(tmp_path)
    forget, retain = SAMPLES[:3], SAMPLES[3:]
    said = []  # stops once step 3 is evaluated: inside the next step's first pass
    spec = UnlearnSettings("grad_diff", steps=6, lr=1e-3, eval_every=1, batch_size=2)
    run = unlearn(RunContext(tiny_llama, ws, "d", progress=lambda f, m: said.append(m),
                             should_stop=lambda: any(m.startswith("step 3/") for m in said)), forget, retain, spec)
    assert ws.get_run(run)["status"] == "stopped" and ws.checkpoint_path(run).is_file()
    assert unlearn(RunContext(tiny_llama, ws, "d"), forget, retain, spec) == run
    assert ws.get_run(run)["status"] == "done" and not ws.checkpoint_path(run).exists()
    assert [e["step"] for e in ws.load_artifact(run, "curve")] == list(range(7))
    assert len(ws.list_runs("unlearn")) == 1


def test_runs_of_a_dead_process_are_marked_interrupted_at_once(tmp_path):
    ws = Workspace(tmp_path)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = ws.create_run("score", "m", "d", {"a": 1}), ws.create_run("score", "m", "d", {"a": 2})
    from cud_core.store.owners import _machine
    with sqlite3.connect(ws.db_path) as db:
        db.execute("UPDATE runs SET owner=? WHERE id=?", (f"{_machine()}:{proc.stdout.strip()}:1", dead))
    assert ws.mark_interrupted() == [dead]  # no idle timeout needed
    assert ws.get_run(dead)["status"] == "interrupted" and ws.get_run(alive)["status"] == "running"


# ----------------------------------------------------------------------------- 10. identical jobs once

def test_two_identical_scoring_jobs_compute_once(tiny_llama, tmp_path):
    import cud_core.pipeline.scoring as scoring

    ws = Workspace(tmp_path)
    settings = ScoreSettings(batch_size=2, steps=1, generation=False)
    seen, results, messages = [], [], []
    original = scoring._score_batch

    def slow(lm, group, *args):
        seen.extend(s.id for s in group)
        time.sleep(0.3)
        return original(lm, group, *args)
    scoring._score_batch = slow
    try:
        threads = [threading.Thread(target=lambda: results.append(score_run(
            RunContext(tiny_llama, ws, "d", progress=lambda f, m: messages.append(m)), SAMPLES[:4], settings)))
            for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.1)
        for t in threads:
            t.join(60)
    finally:
        scoring._score_batch = original
    assert len(results) == 2 and results[0] == results[1]
    assert sorted(seen) == sorted(s.id for s in SAMPLES[:4])  # every sample scored exactly once
    assert any("another job is computing the same score run" in m for m in messages)
    assert len(ws.list_runs("score")) == 1


def test_a_job_waiting_for_the_same_run_can_be_stopped(tiny_llama, tmp_path):
    ws = Workspace(tmp_path)
    settings = ScoreSettings(batch_size=2, steps=1, generation=False)
    from cud_core.engine.models import model_fingerprint
    from cud_core.pipeline.scoring import content_hash
    config = {**settings.config(), "samples_hash": content_hash(SAMPLES[:2]),
              "model_fingerprint": model_fingerprint(tiny_llama.model)}
    with ws.run_lock("score", tiny_llama.name, "d", config):  # another job holds the run
        start = time.time()
        assert score_run(RunContext(tiny_llama, ws, "d", should_stop=lambda: time.time() - start > 0.5), SAMPLES[:2],
                         settings) is None
    assert ws.list_runs() == []


# ----------------------------------------------------------------------------- kill -9, then resume

def wait_for(predicate, proc, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def count_rows(db_path, run_kind):
    try:
        with sqlite3.connect(db_path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM results r JOIN runs u ON r.run_id=u.id WHERE u.kind=?",
                              (run_kind,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def test_scoring_killed_at_a_random_point_resumes_with_nothing_lost(tiny_folder, tmp_path):
    rng = random.Random()
    seed = rng.randrange(10**6)
    rng.seed(seed)
    ids = [f"q{i}" if i % 3 else f"q::{i}" for i in range(40)]
    data, ws_dir = facts_file(tmp_path, ids), tmp_path / "ws"
    args = ["score", "--model", str(tiny_folder), "--data", str(data), "--workspace", str(ws_dir),
            "--batch-size", "2", "--steps", "3", "--no-generation"]
    proc = cli(*args)
    assert wait_for(lambda: count_rows(ws_dir / "cud.sqlite", "score") >= 2, proc), proc.communicate()
    time.sleep(rng.uniform(0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ws = Workspace(ws_dir)
    [run] = ws.list_runs("score")
    done_before = ws.done_sample_ids(run["id"])
    assert integrity_ok(ws), seed

    code, out, err = run_cli(*args)
    assert code == 0, err
    assert f"run {run['id']} was interrupted" in err or len(done_before) == len(ids), (seed, err)
    g = Graph(2, 4, False)
    scores = load_edge_scores(ws, run["id"], g.n_edges)
    assert sorted(scores) == sorted(ids) == sorted(ws.done_sample_ids(run["id"])), seed
    files = list((ws_dir / "tensors" / run["id"]).glob("scores-*"))
    held = [i for f in files for i in json.loads(
        __import__("safetensors").safe_open(str(f), "pt").metadata()["ids"])]
    assert sorted(held) == sorted(ids), f"duplicated or missing samples (seed {seed})"
    assert not [p for p in (ws_dir / "tensors" / run["id"]).iterdir() if p.name.startswith(".")]
    assert ws.get_run(run["id"])["status"] == "done" and integrity_ok(ws)


def test_unlearning_killed_at_a_random_point_resumes_to_the_uninterrupted_result(tiny_folder, tmp_path):
    rng = random.Random()
    seed = rng.randrange(10**6)
    rng.seed(seed)
    data = facts_file(tmp_path, [f"f{i}" for i in range(10)])
    common = ["unlearn", "--model", str(tiny_folder), "--data", str(data), "--method", "npo", "--lr", "1e-3",
              "--steps", "60", "--eval-every", "2", "--forget-fraction", "0.3", "--batch-size", "2"]
    ws_dir = tmp_path / "ws"
    proc = cli(*common, "--workspace", str(ws_dir))
    ckpt = ws_dir / "checkpoints"
    assert wait_for(lambda: ckpt.is_dir() and any(ckpt.glob("*.safetensors")), proc), proc.communicate()
    time.sleep(rng.uniform(0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ws = Workspace(ws_dir)
    [run] = ws.list_runs("unlearn")
    assert integrity_ok(ws)
    killed_at = ws.load_artifact(run["id"], "curve")[-1]["step"]

    code, out, err = run_cli(*common, "--workspace", str(ws_dir))
    assert code == 0, err
    assert f"resuming run {run['id']} from its checkpoint" in err, (seed, killed_at, err)
    assert len(ws.list_runs("unlearn")) == 1 and ws.get_run(run["id"])["status"] == "done", seed
    assert not list(ckpt.iterdir()), "the checkpoint (and any temp file) is removed when the run finishes"
    assert main([*common, "--workspace", str(tmp_path / "reference")]) == 0  # uninterrupted, in this process
    [ref] = Workspace(tmp_path / "reference").list_runs("unlearn")
    got = ws.load_artifact(run["id"], "curve")
    want = Workspace(tmp_path / "reference").load_artifact(ref["id"], "curve")
    assert [e["step"] for e in got] == [e["step"] for e in want] == list(range(0, 61, 2)), (seed, killed_at)
    for a, b in zip(got, want):
        assert a["forget_nll"] == pytest.approx(b["forget_nll"], rel=1e-5, abs=1e-6), (seed, killed_at, a["step"])
    assert integrity_ok(ws)


def test_calibrate_reuses_a_finished_identical_score_run(tiny_llama, tmp_path):
    import cud_core.pipeline.scoring as scoring
    from cud_core.pipeline.calibration import CalibrationSettings, calibrate

    ws = Workspace(tmp_path)
    score = ScoreSettings(steps=1, n_edges=10, generation=False)
    forget, retain = SAMPLES[:4], SAMPLES[4:]
    first = score_run(RunContext(tiny_llama, ws, "d"), forget, score, extra_config={"forget_fraction": 0.5, "seed": 0})
    seen, original = [], scoring._score_batch
    scoring._score_batch = lambda lm, group, *a: (seen.extend(s.id for s in group), original(lm, group, *a))
    try:
        cal = calibrate(RunContext(tiny_llama, ws, "d"), forget, retain, CalibrationSettings(protocol=None,
                                                                                             methods=("grad_diff",),
                                                                                             steps=1, lr=1e-4,
                                                                        eval_every=1, q=0.25, score=score))
    finally:
        scoring._score_batch = original
    assert ws.get_run(cal)["status"] == "done" and ws.load_artifact(cal, "score_run") == first and seen == []
    assert ws.load_artifact(first, "context") == {"forget_fraction": 0.5, "seed": 0}
