"""Circuit diff before/after unlearning: statistics pinned to a hand computation, an
unchanged model gives an empty diff, and an unlearning run with diff_circuits stores both score sets."""
import copy

import numpy as np
import pytest
import torch

from cud_core.difficulty.circuit_diff import aggregate, diff, edge_layout, is_empty, layer_mass, mean_layer_change
from cud_core.engine.graph import Graph
from cud_core.pipeline.context import RunContext


def test_diff_statistics_by_hand():
    g = Graph(1, 1, False)
    names = [g.edge_name(f, b) for f, b in zip(*g.real_edge_mask.nonzero(as_tuple=True))]  # as_vector's order
    n = g.n_edges
    before = torch.zeros(n)
    after = torch.zeros(n)
    before[:3] = torch.tensor([1.0, -2.0, 0.25])
    after[:3] = torch.tensor([0.5, -1.0, 3.0])
    cb = torch.zeros(n, dtype=torch.bool)
    ca = torch.zeros(n, dtype=torch.bool)
    cb[[0, 1]] = True
    ca[[1, 2]] = True
    d = diff(before, after, g, circuits=(cb, ca))
    assert (d["kept"], d["lost"], d["gained"], d["n_before"], d["n_after"]) == (1, 1, 1, 2, 2)
    assert d["jaccard"] == pytest.approx(1 / 3)
    assert d["retained_flow"] == pytest.approx((0.5 + 1.0) / (1.0 + 2.0))
    # movers among the union {0, 1, 2}: |Δ| = 0.5, 1.0, 2.75
    assert [m["edge"] for m in d["top_movers"]] == [names[2], names[1], names[0]]
    assert [m["in"] for m in d["top_movers"]] == ["after", "both", "before"]
    assert d["top_movers"][0]["delta"] == pytest.approx(2.75)
    # mass per child layer and type, by hand from the edge names
    expected = np.zeros((2, 3))
    for i, v in enumerate(before.tolist()):
        child = names[i].split("->")[1]
        row, col = (1, 2) if child == "logits" else (0, 1 if child.startswith("m") else 0)
        expected[row, col] += abs(v)
    np.testing.assert_allclose(d["layer_mass_before"], expected)
    np.testing.assert_allclose(layer_mass(before, g, edge_layout(g)), expected)
    assert not is_empty(d)
    same = diff(before, before, g, circuits=(cb, cb))
    assert is_empty(same) and same["jaccard"] == 1.0 and same["retained_flow"] == 1.0


def test_aggregate_by_group_and_with_hardness():
    per = {f"s{i}": {"jaccard": j, "retained_flow": 1.0, "lost": 0, "gained": 0, "delta_depth_com": 0.0,
                     "delta_longest_path": 0, "layer_mass_before": [[1.0, 0, 0]], "layer_mass_after": [[2.0 * i, 0, 0]]}
           for i, j in enumerate([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])}
    groups = {"label": {"s0": "hard", "s1": "hard", "s2": "hard", "s3": "easy", "s4": "easy", "s5": "easy"}}
    out = aggregate(per, groups, hardness={f"s{i}": -i for i in range(6)}, n_boot=500)
    assert out["groups"]["label"]["hard"]["jaccard"]["mean"] == pytest.approx(0.2)
    assert out["groups"]["label"]["easy"]["n"] == 3
    lo, hi = out["groups"]["label"]["easy"]["jaccard"]["ci"]
    assert 0.7 <= lo <= 0.8 <= hi <= 0.9
    assert out["with_hardness"]["jaccard"]["spearman"] == pytest.approx(-1.0)
    np.testing.assert_allclose(mean_layer_change(per, ["s1", "s2"]), [[2.0, 0, 0]])


@pytest.fixture(scope="module")
def tiny_scenario(app_setup):
    from cud_core.engine.models import load_model
    from cud_core.pipeline.jobs import prepare_scenario

    return prepare_scenario(RunContext(load_model(app_setup["model"], device="cpu"), dataset=app_setup["data"]),
                            forget_fraction=0.5, seed=0)


def test_an_unchanged_model_gives_an_empty_diff(tiny_scenario, tmp_path):
    from cud_core.pipeline.reattribution import reattribute
    from cud_core.pipeline.scoring import ScoreSettings
    from cud_core.store.workspace import Workspace

    sc = tiny_scenario
    ws = Workspace(tmp_path / "ws")
    run = ws.create_run("unlearn", sc.lm.name, "facts", {"what": "an unchanged copy"})
    d = reattribute(RunContext(sc.lm, ws, "facts", run_id=run), copy.deepcopy(sc.lm.model), sc.forget,
                    ScoreSettings(steps=2, n_edges=20))
    assert d["before_run"] != d["after_run"]  # really attributed twice
    assert set(d["per_sample"]) == {s.id for s in sc.forget}
    assert all(is_empty(x) for x in d["per_sample"].values())
    assert ws.load_artifact(run, "circuit_diff") == d


@pytest.fixture(scope="module")
def unlearned_with_diff(tiny_scenario, app_setup, tmp_path_factory):
    from cud_core.pipeline.scoring import ScoreSettings
    from cud_core.pipeline.unlearning import UnlearnSettings, unlearn
    from cud_core.store.workspace import Workspace

    sc = tiny_scenario
    ws = Workspace(tmp_path_factory.mktemp("diff") / "ws")
    run = unlearn(RunContext(sc.lm, ws, app_setup["data"]), sc.forget, sc.retain,
                  UnlearnSettings("grad_diff", steps=4, lr=3e-3, eval_every=2),
                  diff_circuits=ScoreSettings(steps=2, n_edges=20), reference=sc.forget + sc.retain)
    return ws, run


def test_unlearning_with_diff_circuits_stores_both_score_sets(tiny_scenario, unlearned_with_diff):
    from cud_core.pipeline.reattribution import unlearned_name
    from cud_core.store.score_files import load_edge_scores

    sc = tiny_scenario
    ws, run = unlearned_with_diff
    assert ws.get_run(run)["status"] == "done"
    d = ws.load_artifact(run, "circuit_diff")
    before, after = ws.get_run(d["before_run"]), ws.get_run(d["after_run"])
    assert before["model"] == sc.lm.name and after["model"] == unlearned_name(sc.lm.name, run)
    assert before["status"] == after["status"] == "done"
    n = Graph.from_model(sc.lm.model).n_edges
    b, a = load_edge_scores(ws, d["before_run"], n), load_edge_scores(ws, d["after_run"], n)
    assert set(b) == set(a) == set(d["per_sample"]) == {s.id for s in sc.forget}
    assert any(not torch.equal(b[i], a[i]) for i in b)  # unlearning moved the scores
    assert not all(is_empty(x) for x in d["per_sample"].values())


def test_circuit_page_shows_before_after_and_diff(unlearned_with_diff, app_setup, allow_test_folders):
    import re

    from pagetest import ready

    ws, run = unlearned_with_diff
    at = ready({**app_setup, "workspace": str(ws.root)}, "views/2_Circuit.py", sample=app_setup["forget"][0])
    assert not at.exception, at.exception
    mode = at.radio(key="circuit_mode")
    assert mode.options == ["original", "after unlearning", "diff"]
    original = at.get("iframe")[0].proto.srcdoc
    mode.set_value("after unlearning").run()
    assert not at.exception, at.exception
    mode = at.radio(key="circuit_mode")
    mode.set_value("diff").run()
    assert not at.exception, at.exception
    html = at.get("iframe")[0].proto.srcdoc
    assert html != original and not re.search(r"<(link|script)[^>]+(href|src)=\"https?://", html)
    caption = " ".join(c.value for c in at.caption)
    assert "kept" in caption and "lost" in caption and "gained" in caption and "Jaccard" in caption
    movers = [d.value for d in at.dataframe if "delta" in d.value.columns]
    assert len(movers) == 1 and len(movers[0]) > 0


@pytest.fixture(scope="module")
def calibrated_with_diff(tiny_scenario, app_setup, tmp_path_factory):
    """A tiny calibration run first without, then with --diff-circuits (same run: the diff is added)."""
    from cud_core.pipeline.calibration import CalibrationSettings, calibrate
    from cud_core.pipeline.scoring import ScoreSettings
    from cud_core.store.workspace import Workspace

    sc = tiny_scenario
    ws = Workspace(tmp_path_factory.mktemp("caldiff") / "ws")
    settings = CalibrationSettings(protocol=None,
                                   methods=("grad_diff", "npo", "simnpo"), steps=6, lr=3e-3, eval_every=2, q=0.25,
                                   folds=2, n_boot=200, n_permutations=0,
                                   score=ScoreSettings(steps=2, n_edges=20, generation=False))
    first = calibrate(RunContext(sc.lm, ws, app_setup["data"]), sc.forget, sc.retain, settings)
    settings.diff_circuits = True
    second = calibrate(RunContext(sc.lm, ws, app_setup["data"]), sc.forget, sc.retain, settings)
    return ws, first, second


def test_calibrate_with_diff_circuits_adds_one_diff_per_method(calibrated_with_diff, tiny_scenario):
    ws, first, second = calibrated_with_diff
    assert first == second and ws.get_run(second)["status"] == "done"
    score_run = ws.load_artifact(second, "score_run")
    for method in ("grad_diff", "npo", "simnpo"):
        d = ws.load_artifact(second, f"circuit_diff-{method}")
        assert d["before_run"] == score_run  # the calibration's own circuits are the "before" side
        assert set(d["per_sample"]) == {s.id for s in tiny_scenario.forget}
    assert "reattribute_npo_s" in ws.load_artifact(second, "timings")


def test_new_samples_scored_against_saved_anchors(calibrated_with_diff, tiny_scenario, app_setup, capsys):
    """Scoring against a calibration's anchors reproduces its in-sample CUD for a sample it contained,
    and refuses circuits made with other settings."""
    from cud_core.cli import main
    from cud_core.pipeline.predict import anchor_settings, predict
    from cud_core.pipeline.scoring import score_run

    ws, _, cal = calibrated_with_diff
    sc = tiny_scenario
    run = score_run(RunContext(sc.lm, ws, app_setup["data"]), sc.samples, anchor_settings(ws, cal))
    p = predict(ws, run, cal)
    results = ws.load_results(cal)
    for s in sc.forget:
        assert p["cud"][s.id] == pytest.approx(results[s.id]["cud_in_sample"], abs=1e-9)
    assert set(p["in_calibration"]) == {s.id for s in sc.forget} and len(p["cud"]) == len(sc.samples)
    assert ws.load_artifact(run, "predicted_cud") == p
    from dataclasses import replace

    other = score_run(RunContext(sc.lm, ws, app_setup["data"]), sc.samples[:3], replace(anchor_settings(ws, cal),
                                                                                        n_edges=30))
    with pytest.raises(ValueError, match="n_edges"):
        predict(ws, other, cal)
    capsys.readouterr()
    assert main(["score", "--model", app_setup["model"], "--data", app_setup["data"], "--workspace", str(ws.root),
                 "--anchors", cal, "--no-generation"]) == 0
    out = capsys.readouterr().out
    assert f"predicted with the anchors of {cal}" in out and "(in that calibration: in-sample)" in out
    assert main(["score", "--model", app_setup["model"], "--data", app_setup["data"], "--workspace", str(ws.root),
                 "--anchors", "no-such-run"]) == 2


def test_depth_page_shows_where_unlearning_acted(calibrated_with_diff, app_setup, allow_test_folders):
    from pagetest import ready

    ws, _, cal = calibrated_with_diff
    at = ready({**app_setup, "workspace": str(ws.root)}, "views/3_Depth.py")
    assert not at.exception, at.exception
    assert at.selectbox(key="depth_diff").options == ["calibration: grad_diff", "calibration: npo",
                                                      "calibration: simnpo"]
    for grouping in ("ground-truth label (realised difficulty)", "CUD bucket"):
        at.radio[0].set_value(grouping).run()
        assert not at.exception, at.exception
        table = [t.value for t in at.dataframe if "jaccard" in t.value.columns]
        assert len(table) == 1 and table[0]["n"].sum() > 0
    assert any("Spearman with realised hardness" in c.value for c in at.caption)


def test_circuit_diff_command_groups_by_label_and_bucket(calibrated_with_diff, capsys):
    from cud_core.cli import main

    ws, _, cal = calibrated_with_diff
    capsys.readouterr()
    assert main(["circuit-diff", "--workspace", str(ws.root), "--run", cal, "--method", "npo",
                 "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "By label:" in out and "By CUD bucket:" in out and "| easy |" in out
    assert "Spearman with realised hardness" in out and "| jaccard |" in out
    assert main(["circuit-diff", "--workspace", str(ws.root), "--run", cal]) == 2  # no --method


def test_home_page_scores_new_samples_against_saved_anchors(calibrated_with_diff, app_setup, tmp_path,
                                                             allow_test_folders):
    import json

    from pagetest import app

    ws, _, cal = calibrated_with_diff
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({"id": f"n{i}", "question": f"Where was {n} born?",
                                       "answer": f"{n} was born in Rome."}) + "\n"
                           for i, n in enumerate(["Zora", "Yann", "Xu"])))
    params = dict(model=app_setup["model"], data=str(new), workspace=str(ws.root))
    at = app("views/0_Home.py", **params).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="anchors_run").value == cal
    next(b for b in at.button if b.label.startswith("Score this dataset against")).click().run()
    from views.ui import state
    manager = state.jobs()
    job = next(j for j in manager.jobs() if "anchors of" in j.title)
    finished = manager.wait(job.id, timeout=300)
    assert finished.status == "done", (finished.error, finished.message)
    at = app("views/0_Home.py", **params).run()
    table = [d.value for d in at.dataframe if "predicted CUD" in d.value.columns]
    assert len(table) == 1 and sorted(table[0]["id"]) == ["n0", "n1", "n2"]
    assert table[0]["predicted CUD"].between(0, 1).all()
