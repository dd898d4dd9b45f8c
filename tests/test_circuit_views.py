"""What the Circuit, Depth, Unlearning and Home pages compute through the pipeline, each against an
expectation worked out independently: edge sets by hand, greedy picks counted by the engine's own greedy
pass, rankings by sorting, correlations by SciPy, predictions by the calibration's in-sample CUD."""
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from cud_core.difficulty.circuit_diff import edge_changes
from cud_core.engine.circuits import binarise, circuit_statistics, faithfulness, greedy, prune, to_json
from cud_core.engine.graph import Graph
from cud_core.engine.stopping import Stopped
from cud_core.pipeline.circuit_views import (
    anchor_overlay,
    change_by_layer,
    change_summary,
    depth_cud_spearman,
    greedy_circuit,
    hardness_after,
    mass_by_layer,
    picture,
)
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.faithfulness import curve_artifact, sample_faithfulness, sample_faithfulness_curve
from cud_core.pipeline.predict import anchor_settings, score_and_predict
from cud_core.pipeline.unlearning import cud_subset
from cud_core.store.workspace import Workspace

GRAPHS = [Graph(1, 1, False), Graph(2, 2, False), Graph(2, 3, True)]


def random_scores(graph: Graph, seed: int) -> torch.Tensor:
    return torch.randn(graph.n_forward, graph.n_backward, generator=torch.Generator().manual_seed(seed))


def edge_names(circuit: torch.Tensor, graph: Graph) -> set[str]:
    return {graph.edge_name(f, b) for f, b in circuit.nonzero().tolist()}


def test_edge_changes_by_hand():
    g = Graph(1, 1, False)
    edges = g.real_edge_mask.nonzero().tolist()
    (f0, b0), (f1, b1), (f2, b2) = edges[:3]
    before_c = torch.zeros_like(g.real_edge_mask)
    after_c = torch.zeros_like(g.real_edge_mask)
    before_c[f0, b0] = before_c[f1, b1] = True   # edge 0 lost, edge 1 kept, edge 2 gained
    after_c[f1, b1] = after_c[f2, b2] = True
    before = torch.zeros(g.n_forward, g.n_backward)
    after = torch.zeros(g.n_forward, g.n_backward)
    before[f0, b0], before[f1, b1], before[f2, b2] = 1.0, -2.0, 0.25
    after[f0, b0], after[f1, b1], after[f2, b2] = 0.5, -1.0, 3.0
    assert edge_changes(before_c, after_c, before, after, g) == {
        g.edge_name(f0, b0): {"kind": "lost", "before": 1.0, "after": 0.5},
        g.edge_name(f1, b1): {"kind": "kept", "before": -2.0, "after": -1.0},
        g.edge_name(f2, b2): {"kind": "gained", "before": 0.25, "after": 3.0},
    }


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: f"L{g.n_layers}H{g.n_heads}{'p' if g.parallel else ''}")
def test_greedy_circuit_is_the_pruned_greedy_pick_and_counts_it(graph):
    for seed in range(3):
        scores = random_scores(graph, seed)
        for n in (1, 5, graph.n_edges - 1, graph.n_edges, graph.n_edges + 7):
            picked = greedy(scores * graph.real_edge_mask, graph, n)
            circuit, count = greedy_circuit(scores, graph, n)
            assert torch.equal(circuit, prune(picked, graph))
            assert count == int(picked.sum())


def test_a_before_after_picture_holds_both_circuits_with_their_kinds():
    g = Graph(2, 2, False)
    before, after = random_scores(g, 1), random_scores(g, 2)
    b_names, a_names = (edge_names(binarise(s, g, "greedy", 12), g) for s in (before, after))
    shown = picture(before, g, 12, after=after)
    assert edge_names(shown.circuit, g) == b_names | a_names
    kinds = {name: d["kind"] for name, d in shown.diff.items()}
    assert {n for n, k in kinds.items() if k == "kept"} == b_names & a_names
    assert {n for n, k in kinds.items() if k == "lost"} == b_names - a_names
    assert {n for n, k in kinds.items() if k == "gained"} == a_names - b_names
    counts = (len(b_names & a_names), len(b_names - a_names), len(a_names - b_names))
    assert (shown.changed["kept"], shown.changed["lost"], shown.changed["gained"]) == counts
    assert shown.changed["jaccard"] == pytest.approx(counts[0] / len(b_names | a_names))
    assert shown.json == to_json(shown.circuit, g, after - before)  # widths: |after − before|
    assert shown.overlay is None and shown.stats == circuit_statistics(shown.circuit, g)
    single = picture(before, g, 12)
    assert edge_names(single.circuit, g) == b_names and single.diff is None and single.changed is None
    assert single.stats["n_edges"] == len(b_names)


def test_anchor_overlay_by_hand():
    g = Graph(2, 2, False)
    easy, hard, sample = random_scores(g, 3), random_scores(g, 4), random_scores(g, 5)
    anchors = {"easy": {"scores": easy, "members": ["a"]}, "hard": {"scores": hard, "members": ["b"]}}
    e, h = (edge_names(binarise(s, g, "greedy", 10), g) for s in (easy, hard))
    circuit = binarise(sample, g, "greedy", 10)
    overlay = anchor_overlay(circuit, anchors, g, 10)
    assert set(overlay) == edge_names(circuit, g)
    for name, member in overlay.items():
        assert member == {(True, True): "both", (True, False): "easy", (False, True): "hard",
                          (False, False): "own"}[(name in e, name in h)]
    assert picture(sample, g, 10, anchors=anchors).overlay == overlay


def test_layer_rows_of_the_depth_page_by_hand():
    per = {"s0": {"layer_mass_before": [[1.0, 2.0, 0.0], [3.0, 4.0, 5.0]],
                  "layer_mass_after": [[2.0, 2.0, 0.0], [3.0, 0.0, 1.0]]},
           "s1": {"layer_mass_before": [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
                  "layer_mass_after": [[3.0, 0.0, 0.0], [1.0, 1.0, 3.0]]}}
    assert change_by_layer(per, ["s0", "s1"]) == [
        {"layer": 0, "node type": "attention", "change": 1.5}, {"layer": 0, "node type": "mlp", "change": 0.0},
        {"layer": 1, "node type": "logits", "change": -1.0}]
    assert mass_by_layer(per, ["s0", "s1"]) == [
        {"when": "before", "layer": 0, "mass": 2.0}, {"when": "before", "layer": 1, "mass": 7.5},
        {"when": "after", "layer": 0, "mass": 3.5}, {"when": "after", "layer": 1, "mass": 4.5}]


def test_change_summary_groups_and_correlates_with_hardness():
    per = {f"s{i}": {"jaccard": j, "retained_flow": 1.0, "lost": i, "gained": 0, "delta_depth_com": 0.0,
                     "delta_longest_path": 0} for i, j in enumerate([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])}
    groups = {"s0": "easy", "s1": "easy", "s2": "easy", "s3": "hard", "s4": "hard", "s5": "hard"}
    out = change_summary(per, groups, {f"s{i}": float(i) for i in range(6)}, n_boot=200)
    assert out["groups"]["group"]["hard"]["n"] == 3
    assert out["groups"]["group"]["hard"]["jaccard"]["mean"] == pytest.approx(0.2)
    assert out["with_hardness"]["jaccard"]["spearman"] == pytest.approx(-1.0)
    assert out["with_hardness"]["lost"]["spearman"] == pytest.approx(1.0)
    assert change_summary(per, groups, {})["with_hardness"] == {}


def test_depth_spearman_is_scipys():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=20), rng.normal(size=20)
    y[3] = y[5]  # a tie
    assert depth_cud_spearman(x, y) == pytest.approx(spearmanr(x, y)[0], abs=1e-12)
    assert math.isnan(depth_cud_spearman([0.1, 0.2], [0.3, 0.4]))


def test_hardness_after_a_calibration_method_and_an_unlearning_run(tmp_path):
    ws = Workspace(tmp_path / "ws")
    cal = ws.create_run("calibrate", "m", "d", {})
    ws.save_results(cal, {
        "a": {"realised": {"npo": {"nll_after": 2.0}, "grad_diff": {"nll_after": 1.0}}},
        "b": {"realised": {"npo": {"nll_after": None}}},
        "c": {"realised": {"npo": {"nll_after": float("nan")}}},
        "d": {"realised": {"grad_diff": {"nll_after": 4.0}}}})
    assert hardness_after(ws, cal, "npo") == {"a": -2.0}
    assert hardness_after(ws, cal, "grad_diff") == {"a": -1.0, "d": -4.0}
    assert hardness_after(ws, cal, "simnpo") == {}
    run = ws.create_run("unlearn", "m", "d", {})
    ws.save_results(run, {"a": {"nll_after": 0.5}, "b": {"nll_after": None}, "c": {}})
    assert hardness_after(ws, run) == {"a": -0.5}


def test_cud_subset_is_the_sorted_ends():
    rng = np.random.default_rng(1)
    cud = {f"s{i}": float(v) for i, v in enumerate(rng.uniform(size=9))}
    ranked = sorted(cud, key=cud.get)
    for k in (1, 3, 9):
        assert cud_subset(cud, "easiest", k) == ranked[:k]
        assert cud_subset(cud, "hardest", k) == ranked[-k:]
    cud["s4"] = float("nan")  # without a CUD: after the highest, as a table sorted by CUD puts it
    frame = pd.DataFrame({"id": list(cud), "cud": list(cud.values())})
    assert cud_subset(cud, "hardest", 2) == frame.sort_values("cud")["id"].tolist()[-2:]
    assert cud_subset(cud, "easiest", 2) == frame.sort_values("cud")["id"].tolist()[:2]
    with pytest.raises(ValueError, match="subset"):
        cud_subset(cud, "all", 2)


@pytest.fixture(scope="module")
def copied(app_setup, tmp_path_factory):
    """A copy of the app's workspace (the pages' tests read the original) and its model."""
    from cud_core.engine.models import load_model

    root = tmp_path_factory.mktemp("views") / "ws"
    shutil.copytree(app_setup["workspace"], root)
    return Workspace(root), load_model(app_setup["model"], device="cpu")


def test_score_and_predict_reproduces_the_in_sample_cud(copied, app_setup):
    ws, lm = copied
    cal = app_setup["calibration"]
    samples = [s for s in ws.load_samples(cal) if s.id in app_setup["forget"]][1:]  # not the calibration's own run
    run, p = score_and_predict(RunContext(lm, ws, app_setup["data"]), samples, anchor_settings(ws, cal), cal,
                               extra_config={"anchors": cal})
    assert ws.get_run(run)["status"] == "done" and ws.load_artifact(run, "predicted_cud") == p
    assert ws.load_artifact(run, "context") == {"anchors": cal}
    results = ws.load_results(cal)
    assert set(p["cud"]) == {s.id for s in samples}
    for s in samples:
        assert p["cud"][s.id] == pytest.approx(results[s.id]["cud_in_sample"], abs=1e-9)
    again, none = score_and_predict(RunContext(lm, ws, app_setup["data"]), samples, anchor_settings(ws, cal), None)
    assert again == run and none is None  # the same run, reused; no calibration, no prediction


def test_a_sample_faithfulness_is_the_engines_and_its_curve_job_stops(copied):
    ws, lm = copied
    [score] = [r["id"] for r in ws.list_runs("score") if r["status"] == "done"][:1]
    sample = ws.load_samples(score)[0]
    graph = Graph.from_model(lm.model)
    circuit = binarise(random_scores(graph, 0), graph, "greedy", 20)
    assert sample_faithfulness(lm, ws, score, sample.id, circuit) == faithfulness(
        lm.model, lm.tokenizer, sample, circuit, graph, baseline="zero")
    with pytest.raises(Stopped):
        sample_faithfulness_curve(RunContext(lm, ws, run_id=score, should_stop=lambda: True), sample.id,
                                  random_scores(graph, 0))
    assert ws.load_artifact(score, curve_artifact(sample.id)) is None
