"""Executors: scoring on a private Ray instance gives bit-identical results to the local
path, only the driver writes, Stop leaves a resumable run, and the local path never imports Ray."""
import json
import subprocess
import sys

import pytest
import torch

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def scenario(app_setup):
    from cud_core.engine.models import load_model
    from cud_core.pipeline.context import RunContext
    from cud_core.pipeline.jobs import prepare_scenario

    return prepare_scenario(RunContext(load_model(app_setup["model"], device="cpu"), dataset=app_setup["data"]),
                            forget_fraction=0.5, seed=0)


@pytest.fixture(scope="module")
def executor(scenario):
    from cud_core.pipeline.executor import ExecutorSettings, make

    ex = make(ExecutorSettings("ray", "local-cluster", workers=2), scenario.lm)
    yield ex
    ex.close()


@pytest.fixture
def one_thread():
    """Local runs with the workers' intra-op thread count (Ray gives a 1-CPU worker one thread): CPU
    kernels sum in another order with another thread count, so bit-identity needs the same count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _stored(ws, run_id, n_edges):
    from cud_core.store.score_files import load_circuits, load_edge_scores

    return (load_edge_scores(ws, run_id, n_edges), load_circuits(ws, run_id, n_edges),
            json.dumps(ws.load_results(run_id), sort_keys=True))


def test_ray_scoring_is_bit_identical_to_local(scenario, executor, tmp_path, one_thread):
    from cud_core.engine.graph import Graph
    from cud_core.pipeline.context import RunContext
    from cud_core.pipeline.scoring import ScoreSettings, score_run
    from cud_core.store.workspace import Workspace

    sc = scenario
    settings = ScoreSettings(steps=2, n_edges=20, batch_size=2, baseline="mean", generation=False)
    n = Graph.from_model(sc.lm.model).n_edges
    local, remote = Workspace(tmp_path / "local"), Workspace(tmp_path / "ray")
    samples = sc.samples[:4]  # two batches: one per worker
    a = score_run(RunContext(sc.lm, local, "facts"), samples, settings, reference=sc.samples)
    b = score_run(RunContext(sc.lm, remote, "facts", executor=executor), samples, settings, reference=sc.samples)
    assert remote.get_run(b)["status"] == "done"
    (sa, ca, ra), (sb, cb, rb) = _stored(local, a, n), _stored(remote, b, n)
    assert set(sa) == set(sb) == {s.id for s in samples}
    assert all(torch.equal(sa[i], sb[i]) and torch.equal(ca[i], cb[i]) for i in sa)
    assert ra == rb


def test_stop_cancels_and_a_rerun_finishes_the_same_run(scenario, executor, tmp_path, one_thread):
    from cud_core.engine.graph import Graph
    from cud_core.pipeline.context import RunContext
    from cud_core.pipeline.scoring import ScoreSettings, score_run
    from cud_core.store.workspace import Workspace

    sc = scenario
    settings = ScoreSettings(steps=2, n_edges=20, batch_size=2, generation=False)
    ws = Workspace(tmp_path / "ws")
    calls = []
    stopped = score_run(RunContext(sc.lm, ws, "facts", should_stop=lambda: calls.append(1) or len(calls) > 3,
                                   executor=executor), sc.samples, settings)
    assert ws.get_run(stopped)["status"] == "stopped"
    assert len(ws.done_sample_ids(stopped)) < len(sc.samples)
    again = score_run(RunContext(sc.lm, ws, "facts"), sc.samples, settings)  # resumed here, locally
    assert again == stopped and ws.get_run(again)["status"] == "done"
    fresh = Workspace(tmp_path / "fresh")
    full = score_run(RunContext(sc.lm, fresh, "facts"), sc.samples, settings)
    n = Graph.from_model(sc.lm.model).n_edges
    (s1, _, r1), (s2, _, r2) = _stored(ws, again, n), _stored(fresh, full, n)
    assert all(torch.equal(s1[i], s2[i]) for i in s1) and r1 == r2


def test_a_worker_names_a_model_folder_it_cannot_find():
    from cud_core.pipeline.executor import _Worker

    with pytest.raises(FileNotFoundError, match="cannot find the model folder '/no/such/model'"):
        _Worker({"source": "/no/such/model", "name": "x", "dtype": "float32", "fingerprint": "0"})


def test_the_local_path_never_imports_ray(tmp_path):
    code = ("import sys; import cud_core.cli, cud_core.pipeline.scoring, cud_core.pipeline.calibration, "
            "cud_core.pipeline.executor; from cud_core.pipeline.executor import ExecutorSettings, make; "
            "assert make(ExecutorSettings(), None) is None; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_estimate_counts_passes_and_warns_when_memory_is_short(scenario, monkeypatch):
    from cud_core.pipeline import estimate
    from cud_core.pipeline.estimate import attribution_passes, describe, estimate_score
    from cud_core.pipeline.scoring import ScoreSettings

    # full-pass equivalents on SmolLM2's 30 layers, m = 5: EAP 1, IG-inputs m, IG-activations 1 + (m − 1)(L + 2)
    # = 129 (a pass of layer l's group runs layers l..L−1), the peer variant 2 + (L + 2)·m = 162 (all m
    # steps of every group, each from its layer, and one backward for what they add below it)
    assert [attribution_passes(m, 5, 30) for m in ("eap", "eap-ig-inputs", "eap-ig-activations",
                                                    "eap-ig-activations-peer")] == [1, 5, 129, 162]
    sc = scenario
    e = estimate_score(sc.lm, sc.samples, ScoreSettings(steps=3, generation=False))
    assert e["passes"] == 3 and e["seconds"] > 0 and e["warning"] is None
    assert e["seconds"] == pytest.approx(e["per_sample_s"] * len(sc.samples))
    # the clean (EAP-like) pass, then m − 1 = 2 interpolated passes at IG_PASS_COST of it each
    assert e["per_sample_s"] == pytest.approx(e["metrics_s_per_sample"] + e["pass_s_per_sample"] *
                                              (1 + 2 * estimate.IG_PASS_COST))
    monkeypatch.setattr(estimate, "available_memory", lambda device: e["peak_bytes"] // 2)
    short = estimate_score(sc.lm, sc.samples, ScoreSettings(batch_size=8), probe=False)
    assert "free" in short["warning"] or "not enough memory" in short["warning"]
    assert "seconds" not in short and "Warning:" in describe(short)


def _curves(ws, run_id):
    """The stored unlearning curves of a calibration (without their timings)."""
    names = ("curve-grad_diff", "curve-grad_diff.seed1", "curve-npo", "curve-npo.seed1")
    return {a: {k: v for k, v in ws.load_artifact(run_id, a).items() if k != "elapsed"} for a in names}


def test_ray_calibration_equals_local(app_setup, scenario, executor, tmp_path):
    """Scoring batches and the (method, seed) unlearning runs on the workers: the same stored curves
    (within float tolerance: the workers run one thread) and the same validation numbers."""
    from cud_core.pipeline.calibration import CalibrationSettings, calibrate
    from cud_core.pipeline.context import RunContext
    from cud_core.pipeline.scoring import ScoreSettings
    from cud_core.store.workspace import Workspace

    sc = scenario
    settings = CalibrationSettings(protocol=None,
                                   methods=("grad_diff", "npo"), steps=4, lr=1e-3, eval_every=2, n_boot=200,
                                   n_permutations=10, folds=2,
                                   score=ScoreSettings(steps=2, n_edges=20, generation=False))
    local, remote = Workspace(tmp_path / "local"), Workspace(tmp_path / "ray")
    a = calibrate(RunContext(sc.lm, local, app_setup["data"]), sc.forget, sc.retain, settings)
    b = calibrate(RunContext(sc.lm, remote, app_setup["data"], executor=executor), sc.forget, sc.retain, settings)
    assert remote.get_run(b)["status"] == "done"
    ca, cb = _curves(local, a), _curves(remote, b)
    for name in ca:
        assert ca[name]["settings"] == cb[name]["settings"] and ca[name]["steps"] == cb[name]["steps"]
        for key in ("curve", "prob_curve"):
            for x, y in zip(ca[name][key], cb[name][key]):
                assert x.keys() == y.keys() and all(x[i] == pytest.approx(y[i], rel=1e-4, abs=1e-6) for i in x)
        assert ca[name]["losses"] == pytest.approx(cb[name]["losses"], rel=1e-4)
    ra, rb = local.load_results(a), remote.load_results(b)
    assert ra.keys() == rb.keys()
    for i in ra:
        assert ra[i]["fold"] == rb[i]["fold"]
        assert ra[i]["cud_oof"] == pytest.approx(rb[i]["cud_oof"], rel=1e-5, abs=1e-7)


def test_ablation_cells_and_faithfulness_curves_on_ray_equal_local(app_setup, scenario, executor, tmp_path,
                                                                     one_thread):
    """The grid's circuit-size units and the anchors' faithfulness curves on the workers store what the
    local path stores (timings aside)."""
    import shutil

    from cud_core.pipeline.ablation import ablate
    from cud_core.pipeline.context import RunContext
    from cud_core.pipeline.faithfulness import anchor_faithfulness
    from cud_core.store.workspace import Workspace

    sc, run = scenario, app_setup["calibration"]
    out = {}
    for name, ex in (("local", None), ("ray", executor)):
        shutil.copytree(app_setup["workspace"], tmp_path / name)
        ws = Workspace(tmp_path / name)
        cells = ablate(RunContext(sc.lm, ws, run_id=run, executor=ex), sc.forget, sc.retain,
                       attribution=["eap"])["cells"]
        out[name] = ([{k: v for k, v in c.items() if not k.endswith("_s") and k != "score_run"} for c in cells],
                     anchor_faithfulness(RunContext(sc.lm, ws, run_id=run, executor=ex), max_members=2,
                                         sizes=(10, 50, 200)))
    assert len(out["ray"][0]) == 96  # "eap" × 2 metrics × 2 baselines × 24 cells; NaN-safe comparison:
    assert json.dumps(out["ray"], sort_keys=True) == json.dumps(out["local"], sort_keys=True)
    assert set(out["ray"][1]["hard"]) >= {"zero", "mean", "reaches"}


def test_more_workers_than_the_cluster_has_is_refused_with_a_message(scenario, executor):
    from cud_core.pipeline.executor import ExecutorSettings, make

    with pytest.raises(ValueError, match="5 workers × 1.0 CPU"):
        make(ExecutorSettings("ray", "local-cluster", workers=5), scenario.lm)


def test_a_killed_worker_is_retried_and_nothing_is_lost_or_duplicated(scenario, executor, tmp_path, one_thread):
    """SIGKILL one busy Ray worker process mid-run: Ray restarts the actor (it reloads the model) and
    retries its unit; the run completes with every sample once and equals a local run bit for bit.
    (Last of the tests that use the shared executor.)"""
    import os
    import signal

    from cud_core.engine.graph import Graph
    from cud_core.pipeline.context import RunContext
    from cud_core.pipeline.scoring import ScoreSettings, score_run
    from cud_core.store.workspace import Workspace

    sc, ex = scenario, executor
    settings = ScoreSettings(method="eap-ig-inputs", steps=60, n_edges=20, batch_size=1, generation=False)
    before = ex.workers()
    killed = []

    def progress(fraction, message):
        if not killed and ex.busy and fraction > 0:
            victim = next(iter(ex.busy))
            os.kill(before[victim]["pid"], signal.SIGKILL)
            killed.append(victim)

    ws = Workspace(tmp_path / "ray")
    run = score_run(RunContext(sc.lm, ws, "facts", progress=progress, executor=ex), sc.samples, settings)
    assert killed and ws.get_run(run)["status"] == "done"
    assert ex.workers()[killed[0]]["pid"] != before[killed[0]]["pid"]  # the actor was restarted
    results = ws.load_results(run)
    assert sorted(results) == sorted(s.id for s in sc.samples)  # each sample once
    assert len(list((ws.root / "tensors" / run).glob("scores-*"))) == len(sc.samples)  # one batch file each
    fresh = Workspace(tmp_path / "local")
    full = score_run(RunContext(sc.lm, fresh, "facts"), sc.samples, settings)
    n = Graph.from_model(sc.lm.model).n_edges
    (s1, _, r1), (s2, _, r2) = _stored(ws, run, n), _stored(fresh, full, n)
    assert all(torch.equal(s1[i], s2[i]) for i in s2) and r1 == r2


def test_a_killed_driver_resumes_on_the_next_start(app_setup, tmp_path):
    """`score --executor ray` killed (SIGKILL) after some batches are stored: the next start resumes
    the same run, scoring only what is missing, and ends with what a local run stores."""
    import os
    import signal
    import time

    from cud_core.store.workspace import Workspace

    ws_dir = tmp_path / "ws"
    cmd = [sys.executable, "-m", "cud_core", "score", "--model", app_setup["model"], "--data", app_setup["data"],
           "--workspace", str(ws_dir), "--method", "eap-ig-inputs", "--steps", "100", "--batch-size", "1",
           "--edges", "20", "--no-generation", "--no-known-filter"]
    env = {**os.environ, "CUD_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}  # the workers' thread count
    driver = subprocess.Popen(cmd + ["--executor", "ray", "--ray-address", "local-cluster", "--workers", "2"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and driver.poll() is None:
            runs = Workspace(ws_dir).list_runs("score") if (ws_dir / "cud.sqlite").exists() else []
            if runs and len(Workspace(ws_dir).done_sample_ids(runs[0]["id"])) >= 2:
                break
            time.sleep(0.2)
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its private Ray instance
        driver.wait()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    ws = Workspace(ws_dir)
    run = ws.list_runs("score")[0]
    partial = ws.done_sample_ids(run["id"])
    assert run["status"] != "done" and 2 <= len(partial)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    assert f"resuming run {run['id']}: {len(partial)} samples already scored" in out.stderr
    assert ws.get_run(run["id"])["status"] == "done" and len(ws.list_runs("score")) == 1
    fresh = tmp_path / "fresh"
    subprocess.run([*cmd[:cmd.index("--workspace") + 1], str(fresh), *cmd[cmd.index("--workspace") + 2:]],
                   env=env, capture_output=True, check=True)
    assert json.dumps(ws.load_results(run["id"]), sort_keys=True) == \
        json.dumps(Workspace(fresh).load_results(Workspace(fresh).list_runs("score")[0]["id"]), sort_keys=True)


def test_cost_model_pieces_by_hand():
    from cud_core.pipeline.estimate import makespan, padded_tokens, random_batch_tokens, unlearning_seconds
    from cud_core.unlearn import METHODS

    assert padded_tokens([3, 5, 2, 7, 1], 2) == 2 * 5 + 2 * 7 + 1 * 1
    assert random_batch_tokens([4, 4, 4], 2) == 8 and random_batch_tokens([1, 9], 2) == 18
    assert makespan([5, 4, 3, 3], 2) == 8 and makespan([5, 4, 3, 3], 1) == 15 and makespan([], 3) == 0
    # passes per step: NPO forget+retain fb and the reference's forward; GA the forget pass only;
    # UNDIAL (α = 0) forget fb + reference; RMU counted up to its layer (round(7·L/16) of L)
    assert METHODS["npo"].passes(METHODS["npo"].resolve({}), 30) == (2.0, 1.0)
    assert METHODS["grad_ascent"].passes({}, 30) == (1.0, 0.0)
    assert METHODS["undial"].passes(METHODS["undial"].resolve({}), 30) == (1.0, 1.0)
    assert METHODS["rmu"].passes(METHODS["rmu"].resolve({}), 32) == (2 * 15 / 32, 15 / 32)
    probe = {"fwd_s_per_token": 1e-3, "fb_s_per_token": 3e-3, "adam_s_per_param": 1e-6, "n_params": 1000}
    u = unlearning_seconds(probe, "npo", {}, 2, [10, 10], [10, 10], steps=5, eval_every=2, batch_size=2, retain_eval=2)
    step = (2 * 3e-3 + 1e-3) * 20 + 1e-3              # 20 padded tokens per batch of 2, plus the update
    assert u["step_s"] == pytest.approx(step) and u["train_s"] == pytest.approx(5 * step)
    assert u["evaluations"] == 4                        # steps 0, 2, 4 and the last (5)
    assert u["eval_s"] == pytest.approx(4 * (20 + 20) * 1e-3)


def test_calibrate_and_ablate_estimates_add_their_stages(scenario):
    from cud_core.pipeline.calibration import CalibrationSettings
    from cud_core.pipeline.estimate import (
        describe_run,
        estimate_ablate,
        estimate_calibrate,
        estimate_unlearning,
        makespan,
        probe_calibrate,
    )
    from cud_core.pipeline.scoring import ScoreSettings

    sc = scenario
    settings = CalibrationSettings(protocol=None, methods=("grad_diff", "npo"), steps=4, eval_every=2, seeds=(0, 1),
                                   score=ScoreSettings(steps=2, generation=False))
    timing = probe_calibrate(sc.lm, sc.forget, settings)  # one probe for both: they differ in the workers only
    one, two = (estimate_calibrate(sc.lm, sc.forget, sc.retain, settings, workers=w, timing=timing) for w in (1, 2))
    assert one["units"] == 4 and one["seconds"] == pytest.approx(sum(one["stages"].values()))
    per_run = [one["per_method_s"][m] for m in ("grad_diff", "npo")] * 2  # 4 runs: 2 per worker
    assert one["stages"]["unlearning_s"] == pytest.approx(sum(per_run))
    assert two["stages"]["unlearning_s"] == pytest.approx(makespan(per_run, 2))
    assert two["stages"]["unlearning_s"] < one["stages"]["unlearning_s"]
    assert "unlearning" in describe_run(one) and "4 runs" in describe_run(one)
    # under the operating-point protocol: held-out facts evaluated too, a first seed may try 3 rates, a run
    # may end at its first evaluation: the unlearning stage is a range
    from dataclasses import replace

    from cud_core.difficulty.regimes import PROTOCOL
    p = estimate_calibrate(sc.lm, sc.forget, sc.retain, replace(settings, protocol=PROTOCOL), timing=timing)
    pm = p["per_method_s"]
    assert all(pm[m] > one["per_method_s"][m] for m in pm)  # the held-out evaluations
    assert p["stages"]["unlearning_s"] == pytest.approx(sum(3 * pm[m] + pm[m] for m in pm))
    assert 0 < p["unlearning_low_s"] < 2 * sum(pm.values()) < p["stages"]["unlearning_s"]  # 4 units
    assert "a learning-rate search adds runs" in describe_run(p)
    u = estimate_unlearning(sc.lm, sc.forget, sc.retain, "npo", 4, 2, settings.batch_size, timing=timing["training"])
    assert u["seconds"] == pytest.approx(u["train_s"] + u["eval_s"]) and u["evaluations"] == 3
    assert u["seconds"] == pytest.approx(one["per_method_s"]["npo"])
    a = estimate_ablate(sc.lm, sc.forget, ScoreSettings(steps=2, generation=False),
                        [("eap", "logprob", "zero"), ("eap-ig-inputs", "kl", "mean")], n_boot=200)
    assert a["settings"] == 2 and a["seconds"] > 0 and "2 attribution settings" in describe_run(a)
    b = estimate_ablate(sc.lm, sc.forget, ScoreSettings(steps=2, generation=False),
                        [("eap", "logprob", "zero"), ("eap-ig-inputs", "kl", "mean")], n_boot=200,
                        scored=[("eap-ig-inputs", "kl", "mean")])
    assert b["settings"] == 1 and "1 attribution settings to score, 1 already scored" in describe_run(b)
