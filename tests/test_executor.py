"""Executors (issue #11): scoring on a private Ray instance gives bit-identical results to the local
path, only the driver writes, Stop leaves a resumable run, and the local path never imports Ray."""
import json
import subprocess
import sys

import pytest
import torch

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def scenario(app_setup):
    from cud_core.jobs import prepare_scenario
    from cud_core.models import load_model

    return prepare_scenario(load_model(app_setup["model"], device="cpu"), app_setup["data"], forget_fraction=0.5,
                            seed=0)


@pytest.fixture(scope="module")
def executor(scenario):
    from cud_core.executor import ExecutorSettings, make

    ex = make(ExecutorSettings("ray", "local-cluster", workers=2), scenario.lm)
    yield ex
    ex.close()


def _stored(ws, run_id, n_edges):
    from cud_core.scoring import load_circuits, load_edge_scores

    return (load_edge_scores(ws, run_id, n_edges), load_circuits(ws, run_id, n_edges),
            json.dumps(ws.load_results(run_id), sort_keys=True))


def test_ray_scoring_is_bit_identical_to_local(scenario, executor, tmp_path):
    from cud_core.graph import Graph
    from cud_core.scoring import ScoreSettings, score_run
    from cud_core.store import Workspace

    sc = scenario
    settings = ScoreSettings(steps=2, n_edges=20, batch_size=2, baseline="mean", generation=False)
    n = Graph.from_model(sc.lm.model).n_edges
    local, remote = Workspace(tmp_path / "local"), Workspace(tmp_path / "ray")
    samples = sc.samples[:4]  # two batches: one per worker
    a = score_run(sc.lm, samples, settings, local, "facts", reference=sc.samples)
    b = score_run(sc.lm, samples, settings, remote, "facts", executor=executor, reference=sc.samples)
    assert remote.get_run(b)["status"] == "done"
    (sa, ca, ra), (sb, cb, rb) = _stored(local, a, n), _stored(remote, b, n)
    assert set(sa) == set(sb) == {s.id for s in samples}
    assert all(torch.equal(sa[i], sb[i]) and torch.equal(ca[i], cb[i]) for i in sa)
    assert ra == rb


def test_stop_cancels_and_a_rerun_finishes_the_same_run(scenario, executor, tmp_path):
    from cud_core.graph import Graph
    from cud_core.scoring import ScoreSettings, score_run
    from cud_core.store import Workspace

    sc = scenario
    settings = ScoreSettings(steps=2, n_edges=20, batch_size=2, generation=False)
    ws = Workspace(tmp_path / "ws")
    calls = []
    stopped = score_run(sc.lm, sc.samples, settings, ws, "facts", executor=executor,
                        should_stop=lambda: calls.append(1) or len(calls) > 3)
    assert ws.get_run(stopped)["status"] == "stopped"
    assert len(ws.done_sample_ids(stopped)) < len(sc.samples)
    again = score_run(sc.lm, sc.samples, settings, ws, "facts")  # resumed here, locally
    assert again == stopped and ws.get_run(again)["status"] == "done"
    fresh = Workspace(tmp_path / "fresh")
    full = score_run(sc.lm, sc.samples, settings, fresh, "facts")
    n = Graph.from_model(sc.lm.model).n_edges
    (s1, c1, r1), (s2, c2, r2) = _stored(ws, again, n), _stored(fresh, full, n)
    assert all(torch.equal(s1[i], s2[i]) for i in s1) and r1 == r2


def test_a_worker_names_a_model_folder_it_cannot_find():
    from cud_core.executor import _Worker

    with pytest.raises(FileNotFoundError, match="cannot find the model folder '/no/such/model'"):
        _Worker({"source": "/no/such/model", "name": "x", "dtype": "float32", "fingerprint": "0"})


def test_the_local_path_never_imports_ray(tmp_path):
    code = ("import sys; import cud_core.cli, cud_core.scoring, cud_core.calibration, cud_core.executor; "
            "from cud_core.executor import ExecutorSettings, make; assert make(ExecutorSettings(), None) is None; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_estimate_counts_passes_and_warns_when_memory_is_short(scenario, monkeypatch):
    from cud_core import estimate
    from cud_core.estimate import attribution_passes, describe, estimate_score
    from cud_core.scoring import ScoreSettings

    # EAP 1, IG-inputs m, IG-activations 1 + (2L + 1)(m − 1): 1 + 61·4 = 245 on SmolLM2's 30 layers
    assert [attribution_passes(m, 5, 30) for m in ("eap", "eap-ig-inputs", "eap-ig-activations",
                                                    "eap-ig-activations-peer")] == [1, 5, 245, 245]
    sc = scenario
    e = estimate_score(sc.lm, sc.samples, ScoreSettings(steps=3, generation=False))
    assert e["passes"] == 3 and e["seconds"] > 0 and e["warning"] is None
    assert e["seconds"] == pytest.approx(e["per_sample_s"] * len(sc.samples))
    monkeypatch.setattr(estimate, "available_memory", lambda device: e["peak_bytes"] // 2)
    short = estimate_score(sc.lm, sc.samples, ScoreSettings(batch_size=8), probe=False)
    assert "free" in short["warning"] or "not enough memory" in short["warning"]
    assert "seconds" not in short and "Warning:" in describe(short)
