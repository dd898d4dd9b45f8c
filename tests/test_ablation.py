"""The ablation grid: cells reuse the calibration's outcomes and folds, the
calibration's own cell reproduces its CUD exactly, the job resumes, Holm and the one-sided p are
pinned to hand computations, and every cell reaches the report."""
import json

import numpy as np
import pytest

from cud_core.difficulty import grid, stats
from cud_core.pipeline.context import RunContext


@pytest.fixture(scope="module")
def calibrated(app_setup, tmp_path_factory):
    """A calibration on the tiny memorised model whose own setting is a grid cell (25 edges)."""
    from cud_core.engine.models import load_model
    from cud_core.pipeline.calibration import CalibrationSettings, calibrate
    from cud_core.pipeline.jobs import prepare_scenario
    from cud_core.pipeline.scoring import ScoreSettings
    from cud_core.store.workspace import Workspace

    sc = prepare_scenario(RunContext(load_model(app_setup["model"], device="cpu"), dataset=app_setup["data"]),
                          forget_fraction=0.5, seed=0)
    ws = Workspace(tmp_path_factory.mktemp("ablation") / "ws")
    settings = CalibrationSettings(protocol=None,
                                   methods=("grad_diff", "npo", "simnpo"), steps=8, lr=1e-3, eval_every=2, q=0.25,
                                   folds=2, n_boot=200, n_permutations=0,
                                   score=ScoreSettings(steps=2, n_edges=25, generation=False))
    run_id = calibrate(RunContext(sc.lm, ws, app_setup["data"]), sc.forget, sc.retain, settings)
    return sc, ws, run_id


@pytest.fixture(scope="module")
def ablated(calibrated):
    from cud_core.pipeline.ablation import ablate

    sc, ws, run_id = calibrated
    first = ablate(RunContext(sc.lm, ws, run_id=run_id), sc.forget, sc.retain, attribution=["eap"])
    stored_first = ws.load_artifact(run_id, "ablation_cells")
    summary = ablate(RunContext(sc.lm, ws, run_id=run_id), sc.forget, sc.retain, attribution=["eap", "eap-ig-inputs"])
    return sc, ws, run_id, first, stored_first, summary


def test_every_cell_is_reported_and_the_reference_reproduces_the_calibration(ablated):
    sc, ws, run_id, first, stored_first, summary = ablated
    assert summary["n_cells"] == 4 * 2 * 2 * 4 * 3 * 2
    assert summary["n_run"] == len(summary["cells"]) == 2 * 2 * 2 * 24
    assert {(s["attribution"], s["metric"], s["baseline"]) for s in summary["not_run"]} == {
        (a, m, b) for a in ("eap-ig-activations", "eap-ig-activations-peer") for m in ("logprob", "kl")
        for b in ("zero", "mean")}
    from cud_core.report.ablation import headline

    assert "Not run: eap-ig-activations, eap-ig-activations-peer (192 cells)." in headline(summary)
    partly = {**summary, "not_run": [s for s in summary["not_run"] if (s["attribution"], s["metric"], s["baseline"])
                                     != ("eap-ig-activations", "kl", "zero")]}
    assert "Not run: eap-ig-activations (3 of 4 metric × baseline settings), eap-ig-activations-peer (168 cells)." \
        in headline(partly)
    ref = summary["reference"]
    assert ref == {"attribution": "eap-ig-inputs", "metric": "logprob", "baseline": "zero", "n_edges": 25,
                   "similarity": "cosine", "anchors": "consensus"}
    cell = [c for c in summary["cells"] if all(c[f] == ref[f] for f in grid.FACTORS)]
    assert len(cell) == 1
    results = ws.load_results(run_id)
    expected = [results[i]["cud_oof_consensus"] for i in summary["ids"]]
    np.testing.assert_allclose(cell[0]["cud_oof"], expected, atol=1e-6)
    report = ws.load_artifact(run_id, "validation_report")
    assert cell[0]["nll_after"]["spearman"] == pytest.approx(report["predictors"]["cud"]["nll_after"]["spearman"],
                                                             abs=1e-5)
    per_method = [c for c in summary["cells"] if all(c[f] == ref[f] for f in grid.FACTORS if f != "anchors")
                  and c["anchors"] == "per-method"][0]
    np.testing.assert_allclose(per_method["cud_oof"],
                               [np.mean(list(results[i]["cud_oof_per_method"].values())) for i in summary["ids"]],
                               atol=1e-6)
    # the calibration's own scoring run is reused, not redone, and the timing table says so
    stored = ws.load_artifact(run_id, "ablation_cells")
    assert stored["eap-ig-inputs|logprob|zero"]["score_run"] == ws.load_artifact(run_id, "score_run")
    assert stored["eap-ig-inputs|logprob|zero"]["reused_scoring"] == run_id
    assert stored["eap|kl|mean"]["reused_scoring"] is None
    from cud_core.report.ablation import timing_rows

    rows = {r["attribution setting"]: r["scoring s"] for r in timing_rows(summary)}
    assert rows["eap-ig-inputs / logprob / zero"] == f"reused ({run_id}'s)" and rows["eap / kl / mean"] != "reused"


def test_the_metrics_of_a_method_and_baseline_share_their_passes(ablated):
    from cud_core.pipeline.ablation import scoring_units
    from cud_core.report.ablation import timing_rows

    sc, ws, run_id, first, stored_first, summary = ablated
    stored = ws.load_artifact(run_id, "ablation_cells")
    for baseline in ("zero", "mean"):
        lp, kl = stored[f"eap|logprob|{baseline}"], stored[f"eap|kl|{baseline}"]
        assert lp["scored_with"] == [f"eap|kl|{baseline}"] and kl["scored_with"] == [f"eap|logprob|{baseline}"]
        assert lp["score_run"] != kl["score_run"] and lp["scoring_s"] == kl["scoring_s"]
        assert [ws.get_run(e["score_run"])["config"]["metric"] for e in (lp, kl)] == ["logprob", "kl"]
    # the calibration's own scoring is reused, so its kl partner is scored alone
    assert stored["eap-ig-inputs|logprob|zero"]["scored_with"] == stored["eap-ig-inputs|kl|zero"]["scored_with"] == []
    rows = {r["attribution setting"]: r["scoring s"] for r in timing_rows(summary)}
    assert rows["eap / kl / mean"].endswith("(share of passes with eap / logprob / mean)")
    a, b = "eap-ig-activations", "eap-ig-activations-peer"
    todo = [(a, "logprob", "zero"), (a, "logprob", "mean"), (a, "kl", "zero"), (a, "kl", "mean"),
            (b, "logprob", "zero"), (b, "kl", "zero")]
    assert scoring_units(todo, {(b, "logprob", "zero")}) == [
        [(a, "logprob", "zero"), (a, "kl", "zero")], [(a, "logprob", "mean"), (a, "kl", "mean")],
        [(b, "logprob", "zero")], [(b, "kl", "zero")]]


def test_a_pair_stopped_before_its_cells_keeps_its_shared_scoring_time(calibrated, tmp_path):
    """Both scoring runs of a metric pair are done when the Stop comes during the first one's cells:
    on resume they are found, not re-attributed, and each keeps the time and partner recorded then."""
    import shutil

    from cud_core.pipeline.ablation import ablate
    from cud_core.store.workspace import Workspace

    sc, ws, run_id = calibrated
    shutil.copytree(ws.root, tmp_path / "ws")
    copy = Workspace(tmp_path / "ws")
    pair, said = ["eap-ig-activations/logprob/mean", "eap-ig-activations/kl/mean"], []
    assert ablate(RunContext(sc.lm, copy, run_id=run_id, progress=lambda f, m: said.append(m),
                             should_stop=lambda: any("cells" in m for m in said)), sc.forget, sc.retain,
                  attribution=pair) is None
    assert not [k for k in copy.load_artifact(run_id, "ablation_cells", {}) if k.startswith("eap-ig-activations|")]
    ablate(RunContext(sc.lm, copy, run_id=run_id), sc.forget, sc.retain, attribution=pair)
    stored = copy.load_artifact(run_id, "ablation_cells")
    lp, kl = stored["eap-ig-activations|logprob|mean"], stored["eap-ig-activations|kl|mean"]
    assert lp["reused_scoring"] is None and kl["reused_scoring"] is None
    assert lp["scoring_s"] == kl["scoring_s"]  # the pair's time, halved, recorded when it was attributed
    assert lp["scored_with"] == ["eap-ig-activations|kl|mean"]
    assert kl["scored_with"] == ["eap-ig-activations|logprob|mean"]


def test_resume_keeps_finished_settings(ablated):
    sc, ws, run_id, first, stored_first, summary = ablated
    assert first["n_run"] == 4 * 24
    stored = ws.load_artifact(run_id, "ablation_cells")
    for key, entry in stored_first.items():
        assert stored[key] == entry  # not recomputed by the second call
    assert ws.load_artifact(run_id, "ablation")["n_run"] == summary["n_run"]


def test_stop_returns_none_and_keeps_nothing_half_done(calibrated):
    from cud_core.pipeline.ablation import ablate

    sc, ws, run_id = calibrated
    before = ws.load_artifact(run_id, "ablation_cells", {})
    assert ablate(RunContext(sc.lm, ws, run_id=run_id, should_stop=lambda: True), sc.forget, sc.retain,
                  attribution=["eap-ig-activations"]) is None
    assert ws.load_artifact(run_id, "ablation_cells", {}) == before


def test_wrong_samples_are_named(calibrated):
    from cud_core.pipeline.ablation import ablate

    sc, ws, run_id = calibrated
    with pytest.raises(ValueError, match="retain samples given are not the ones"):
        ablate(RunContext(sc.lm, ws, run_id=run_id), sc.forget, sc.retain[:-1], attribution=["eap"])
    with pytest.raises(ValueError, match="unknown attribution method"):
        ablate(RunContext(sc.lm, ws, run_id=run_id), sc.forget, sc.retain, attribution=["eap-xx"])
    with pytest.raises(ValueError, match="unknown attribution setting.*eap/kl/median"):
        ablate(RunContext(sc.lm, ws, run_id=run_id), sc.forget, sc.retain, attribution=["eap/kl/median"])


def test_single_settings_can_be_selected(ablated):
    from cud_core.pipeline.ablation import remaining_settings

    sc, ws, run_id, *_ = ablated
    assert remaining_settings(ws, run_id, ["eap-ig-activations/kl/zero", "eap-ig-inputs/kl/mean"]) == [
        ("eap-ig-activations", "kl", "zero")]  # the other one is stored
    assert len(remaining_settings(ws, run_id, ["eap-ig-activations", "eap-ig-activations/kl/zero"])) == 4


def test_settings_scored_by_any_run_are_found(ablated):
    from cud_core.pipeline.ablation import scored_settings

    sc, ws, run_id, *_ = ablated
    todo = [("eap", "kl", "mean"), ("eap-ig-activations", "kl", "zero")]
    assert scored_settings(sc.lm, sc.forget, sc.retain, ws, run_id, todo) == [("eap", "kl", "mean")]


def test_cells_match_an_independent_recomputation(ablated):
    """One non-reference cell recomputed by hand: circuits cut at n, anchors per fold from the other
    fold's labels, CUD by cosine, ρ against the method-mean hardness by scipy."""
    from scipy.stats import spearmanr

    from cud_core.difficulty.cud import build_anchors, cud_score, label_easy_hard
    from cud_core.engine.circuits import as_vector, binarise, from_vector
    from cud_core.engine.graph import Graph
    from cud_core.store.score_files import load_edge_scores

    sc, ws, run_id, first, stored_first, summary = ablated
    cell = [c for c in summary["cells"] if (c["attribution"], c["metric"], c["baseline"], c["n_edges"],
                                            c["similarity"], c["anchors"]) ==
            ("eap", "kl", "mean", 75, "jaccard", "consensus")][0]
    graph = Graph.from_model(sc.lm.model)
    scores = load_edge_scores(ws, cell["score_run"], graph.n_edges)
    results = ws.load_results(run_id)
    ids = summary["ids"]
    nll = {}
    for m in ("grad_diff", "npo", "simnpo"):
        curves = [ws.load_artifact(run_id, name) for name in (f"curve-{m}", f"curve-{m}.seed1")]
        nll[m] = {i: float(np.mean([c["curve"][-1][i] for c in curves])) for i in ids}
    cud = {}
    for f in sorted({results[i]["fold"] for i in ids}):
        train = [i for i in ids if results[i]["fold"] != f]
        labels = label_easy_hard({m: {i: v[i] for i in train} for m, v in nll.items()}, 0.25)
        anchors = build_anchors(scores, labels, graph, "greedy", 75)
        for i in ids:
            if results[i]["fold"] == f:
                circuit = as_vector(binarise(from_vector(scores[i], graph), graph, "greedy", 75), graph)
                cud[i] = cud_score(circuit, anchors.easy, anchors.hard, "jaccard")
    np.testing.assert_allclose(cell["cud_oof"], [cud[i] for i in ids], atol=1e-6)
    hardness = [-np.mean([nll[m][i] for m in nll]) for i in ids]
    assert cell["nll_after"]["spearman"] == pytest.approx(spearmanr([cud[i] for i in ids], hardness).statistic,
                                                          abs=1e-6)


def test_holm_and_one_sided_p_by_hand():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → monotone 0.06
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005, np.nan]), [0.03, 0.06, 0.06, 0.02, np.nan])
    assert stats.holm([0.6, 0.5])[1] == 1.0  # capped at 1
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30) * 2
    rho = stats.spearman(x, y)
    assert stats.spearman_p(rho, 30) == pytest.approx(spearmanr(x, y, alternative="greater").pvalue, rel=1e-9)
    # ρ = 0.5, n = 12: t = 0.5·√(10 / 0.75) = 1.8257, just above t(0.95; 10 df) = 1.8125: p just under 0.05
    assert stats.spearman_p(0.5, 12) == pytest.approx(0.0489, abs=1e-4)
    assert stats.spearman_p(1.0, 12) == 0.0 and np.isnan(stats.spearman_p(0.5, 2))


def _cell(attribution, n, rho, cud):
    return {"attribution": attribution, "metric": "logprob", "baseline": "zero", "n_edges": n,
            "similarity": "cosine", "anchors": "consensus", "nll_after": {"spearman": rho}, "cud_oof": cud}


def test_factor_effects_and_ranking_agreement_by_hand():
    cells = [_cell("eap", 25, 0.1, [1, 2, 3, 4]), _cell("eap", 75, 0.3, [1, 2, 4, 3]),
             _cell("eap-ig-inputs", 25, 0.2, [4, 3, 2, 1]), _cell("eap-ig-inputs", 75, 0.6, [1, 2, 3, 4])]
    effects = {(e["factor"], e["level"]): e for e in grid.factor_effects(cells)}
    assert set(f for f, _ in effects) == {"attribution", "n_edges"}  # one-level factors are left out
    assert effects[("attribution", "eap")]["mean_rho"] == pytest.approx(0.2)
    # changing only the attribution: |0.1 − 0.2| and |0.3 − 0.6|
    assert effects[("attribution", "eap")]["mean_abs_delta"] == pytest.approx(0.2)
    assert effects[("n_edges", "25")]["max_abs_delta"] == pytest.approx(0.4)
    agree = grid.ranking_agreement(cells, "attribution")
    # pairs: n = 25 → ρ([1,2,3,4], [4,3,2,1]) = −1; n = 75 → ρ([1,2,4,3], [1,2,3,4]) = 0.8
    assert agree[("eap", "eap-ig-inputs")] == (pytest.approx(-0.1), 2)
    assert agree[("eap", "eap")] == (pytest.approx(1.0), 2)
    m = grid.spearman_between(cells)
    assert m[0, 2] == pytest.approx(-1.0) and m[1, 3] == pytest.approx(0.8)


def test_report_lists_every_cell_and_round_trips(ablated, tmp_path):
    from cud_core.report import ablation as ar

    sc, ws, run_id, first, stored_first, summary = ablated
    run = ws.get_run(run_id)
    text = ar.markdown(summary, run)
    table = text.split("<details>")[1]
    assert table.count("\n| ") == summary["n_run"] + len(summary["not_run"]) + 1  # + the header
    assert text.count("◆") == 2  # the legend and the calibration's own cell
    path = tmp_path / "a.json"
    path.write_text(ar.as_json(summary, run))
    again, run2 = ar.from_json(path)
    assert run2["id"] == run_id and ar.markdown(again, run2) == text
    # timings as `ablate` stores them: a setting scored alone (scored_with None) and a metric pair
    import copy
    mixed = copy.deepcopy(summary)
    (a, ta), (b, tb) = list(mixed["timings"].items())[:2]
    mixed["timings"][a] = {**ta, "scored_with": None, "reused_scoring": None}
    mixed["timings"][b] = {**tb, "scored_with": [a], "reused_scoring": None}
    path.write_text(ar.as_json(mixed, run))
    rows = ar.timing_rows(ar.from_json(path)[0])
    assert rows == ar.timing_rows(mixed)
    assert rows[1]["scoring s"].endswith(f"(share of passes with {a.replace('|', ' / ')})")
    path.write_text(ar.as_json(summary, run))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{ar.README.begin}\nstale text\n{ar.README.end}\nrest\n")
    readme.write_text(ar.README.replace(readme.read_text(), ar.readme_section(again, run2, "cmd")))
    assert readme.read_text().startswith("intro\n") and readme.read_text().endswith("rest\n")
    assert "stale text" not in readme.read_text() and "Regenerate this section: `cmd`" in readme.read_text()
    json.loads(path.read_text())


def test_validation_page_shows_the_grid(ablated, app_setup, allow_test_folders):
    from pagetest import ready

    sc, ws, run_id, first, stored_first, summary = ablated
    at = ready({**app_setup, "workspace": str(ws.root)}, "views/6_Validation.py")
    assert not at.exception
    frames = [d.value for d in at.dataframe]
    grid_table = [f for f in frames if "Holm p" in f.columns]
    assert len(grid_table) == 1 and len(grid_table[0]) == summary["n_run"]
    assert grid_table[0]["own setting"].sum() == 1
    assert any("cells computed" in m.value for m in at.markdown)
    for factor in ("attribution", "n_edges", "anchors"):
        at.selectbox(key="ablation_factor").set_value(factor).run()
        assert not at.exception


def test_cells_whose_anchors_cannot_be_built_are_reported_not_fatal(calibrated, tiny_llama):
    """Outcomes without any consensus label still ablate: the consensus cells are NaN with the reason,
    the per-method cells are numbers. Four methods, two ranking the samples one way and two the other:
    on every training fold the extremes get two easy and two hard votes (conflicts), the rest none."""
    from dataclasses import replace

    from cud_core.engine.graph import Graph
    from cud_core.pipeline.ablation import fixed_inputs
    from cud_core.report.ablation import headline
    from cud_core.store.score_files import load_edge_scores

    sc, ws, run_id = calibrated
    fixed, _ = fixed_inputs(ws, run_id)
    ids = fixed.ids
    nll = {m: {i: float(j * sign) for j, i in enumerate(ids)} for m, sign in (("a", 1), ("b", -1), ("c", 1), ("d", -1))}
    fixed = replace(fixed, nll=nll)
    graph = Graph.from_model(sc.lm.model)
    score_id = ws.load_artifact(run_id, "score_run")
    cells = grid.size_cells(fixed, load_edge_scores(ws, score_id, graph.n_edges), {}, graph,
                            ("eap-ig-inputs", "logprob", "zero"), 10)
    consensus = [c for c in cells if c["anchors"] == "consensus"]
    per_method = [c for c in cells if c["anchors"] == "per-method"]
    assert len(consensus) == len(per_method) == 3
    assert all("anchors need" in c["unavailable"] and np.isnan(c["nll_after"]["spearman"]) for c in consensus)
    # (their CUD_b = 1 − CUD_a here, so the mean is flat: only that the numbers exist is asserted)
    assert all("unavailable" not in c and np.isfinite(c["cud_oof"]).all() for c in per_method)
    summary = {"cells": grid.finish(cells), "reference": {}, "n_run": 6, "n_cells": 6, "alpha": 0.05, "not_run": []}
    assert "3 computed cell(s) have no numbers because their anchors could not be built (consensus anchors" in \
        headline(summary)


def test_a_packed_calibration_unpacks_elsewhere_and_ablates_identically(ablated, tmp_path):
    """pack → unpack into an empty workspace gives the same run, samples, results and artifacts; the
    edge scores stay behind unless asked for; an ablation setting re-scored there reproduces the
    original's cells exactly; a clash, a second unpack and bad files are handled."""
    import zipfile

    from cud_core.engine.graph import Graph
    from cud_core.pipeline.ablation import ablate
    from cud_core.report.validation import markdown
    from cud_core.store.bundle import BundleError, pack, unpack
    from cud_core.store.score_files import load_edge_scores
    from cud_core.store.workspace import Workspace

    sc, ws, run_id, first, stored_first, summary = ablated
    score_id = ws.load_artifact(run_id, "score_run")
    path = tmp_path / "cal.cudpack"
    manifest = pack(ws, run_id, path)
    assert manifest["runs"] == [run_id, score_id]
    members = zipfile.ZipFile(path).namelist()
    assert not [m for m in members if "/tensors/scores-" in m] and [m for m in members if "/tensors/circuits-" in m]
    assert [m for m in members if m.startswith(f"runs/{run_id}/tensors/")]  # the anchors

    other = Workspace(tmp_path / "other")
    assert unpack(other, path)["added"] == [run_id, score_id]
    for rid in (run_id, score_id):
        a, b = ws.get_run(rid), other.get_run(rid)
        same = lambda r: {k: v for k, v in r.items() if k not in ("owner", "updated")}  # noqa: E731
        assert same(a) == same(b)
        assert ws.load_samples(rid) == other.load_samples(rid) and ws.load_results(rid) == other.load_results(rid)
        assert other.artifact_names(rid) == sorted(ws.artifact_names(rid) + ["unpacked"])
        assert all(ws.load_artifact(rid, n) == other.load_artifact(rid, n) for n in ws.artifact_names(rid))
        assert other.load_artifact(rid, "unpacked")["bundle"] == "cal.cudpack"
    from cud_core.store.score_files import stored_ids
    assert stored_ids(ws, score_id) == {s.id for s in sc.forget} and stored_ids(other, score_id) == set()
    report = ws.load_artifact(run_id, "validation_report")
    assert markdown(other.load_artifact(run_id, "validation_report"), other.get_run(run_id)) == \
        markdown(report, ws.get_run(run_id))

    # ablation settings scored again on the unpacked copy give the original's cells: a new one, and the
    # calibration's own, whose unpacked scoring run (no edge scores) is scored again in place
    cells = other.load_artifact(run_id, "ablation_cells")
    originals = {k: cells.pop(k) for k in ("eap|logprob|zero", "eap-ig-inputs|logprob|zero")}
    other.save_artifact(run_id, "ablation_cells", cells)
    again = ablate(RunContext(sc.lm, other, run_id=run_id), sc.forget, sc.retain, attribution=["eap/logprob/zero",
                                                                                               "eap-ig-inputs/logprob/zero"])
    redone = other.load_artifact(run_id, "ablation_cells")
    strip = lambda cs: [{k: v for k, v in c.items() if k != "analysis_s"} for c in cs]  # noqa: E731
    for key, original in originals.items():
        assert strip(redone[key]["cells"]) == strip(original["cells"]), key
    assert redone["eap-ig-inputs|logprob|zero"]["score_run"] == score_id
    assert redone["eap-ig-inputs|logprob|zero"]["reused_scoring"] is None  # it was scored, not looked up
    assert len(load_edge_scores(other, score_id, Graph.from_model(sc.lm.model).n_edges)) == len(sc.forget)
    assert again["n_run"] == summary["n_run"]

    assert unpack(other, path)["skipped"] == [run_id, score_id]
    clash = Workspace(tmp_path / "clash")
    clash.restore_run({**ws.get_run(score_id), "created": 0.0})
    with pytest.raises(BundleError, match=f"run {score_id} already exists .* with other contents"):
        unpack(clash, path)
    assert clash.get_run(run_id) is None  # nothing half-imported
    broken = tmp_path / "broken.cudpack"  # the second run's artifacts lost: the first is removed again
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(broken, "w") as dst:
        for m in src.namelist():
            if m != f"runs/{score_id}/artifacts.json":
                dst.writestr(m, src.read(m))
    fresh = Workspace(tmp_path / "fresh")
    with pytest.raises(BundleError, match=f"runs/{score_id}/artifacts.json is missing"):
        unpack(fresh, broken)
    assert fresh.list_runs() == [] and not (fresh.root / "tensors" / run_id).exists()
    with_scores = tmp_path / "full.cudpack"
    pack(ws, run_id, with_scores, with_scores=True)
    assert [m for m in zipfile.ZipFile(with_scores).namelist() if "/tensors/scores-" in m]

    bad = tmp_path / "notes.txt"
    bad.write_text("not a bundle")
    with pytest.raises(BundleError, match="notes.txt: not a CUD Explorer bundle"):
        unpack(other, bad)
    with pytest.raises(BundleError, match="no such file"):
        unpack(other, tmp_path / "missing.cudpack")
    with pytest.raises(BundleError, match=f"no calibration run '{score_id}'"):
        pack(ws, score_id, tmp_path / "x.cudpack")


def test_unpack_refuses_crafted_or_damaged_bundles_and_repairs_what_it_can(ablated, tmp_path):
    """Run ids cannot leave the workspace, malformed members are named, a damaged member is reported,
    a run a killed unpack left behind is replaced, and unpacking a bundle with edge scores over a copy
    without them adds the scores."""
    import json
    import zipfile

    from cud_core.store.bundle import BundleError, pack, unpack
    from cud_core.store.score_files import has_edge_scores
    from cud_core.store.workspace import Workspace

    sc, ws, run_id, *_ = ablated
    score_id = ws.load_artifact(run_id, "score_run")
    good = tmp_path / "good.cudpack"
    pack(ws, run_id, good)

    def variant(name, edit):
        out = tmp_path / name
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w") as dst:
            members = {m: src.read(m) for m in src.namelist()}
            for m, data in edit(members).items():
                dst.writestr(m, data)
        return out

    def manifest_with(**changes):
        return lambda ms: {**ms, "manifest.json": json.dumps({**json.loads(ms["manifest.json"]), **changes})}

    target = Workspace(tmp_path / "target")
    escape = variant("escape.cudpack", manifest_with(runs=[run_id, "../../escaped"]))
    with pytest.raises(BundleError, match="lists no valid run ids"):
        unpack(target, escape)
    with pytest.raises(BundleError, match="lists no valid run ids"):
        unpack(target, variant("noruns.cudpack", manifest_with(runs=None)))
    wrong = variant("wrong.cudpack", lambda ms: {**ms, f"runs/{score_id}/artifacts.json": "[1, 2]"})
    with pytest.raises(BundleError, match=f"runs/{score_id}/artifacts.json should hold a JSON object"):
        unpack(target, wrong)
    rows = variant("rows.cudpack", lambda ms: {**ms, f"runs/{run_id}/samples.json": '[["a", null, "b", {}]]'})
    with pytest.raises(BundleError, match="each sample must be"):
        unpack(target, rows)
    assert target.list_runs() == [] and not (tmp_path / "escaped").exists()

    damaged = tmp_path / "damaged.cudpack"
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as z:
        info = z.getinfo(f"runs/{run_id}/results.json")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 5] ^= 0xFF  # one byte of the member's compressed data
    damaged.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="damaged"):
        unpack(target, damaged)
    assert target.list_runs() == []

    half = Workspace(tmp_path / "half")  # a killed unpack left the calibration "importing"
    half.restore_run({**ws.get_run(run_id), "status": "importing"})
    assert unpack(half, good)["added"] == [run_id, score_id] and half.get_run(run_id)["status"] == "done"
    assert not has_edge_scores(half, score_id)
    full = tmp_path / "full.cudpack"
    pack(ws, run_id, full, with_scores=True)
    assert unpack(half, full)["skipped"] == [run_id, score_id] and has_edge_scores(half, score_id)


def test_pack_and_unpack_on_the_command_line(ablated, tmp_path, capsys):
    from cud_core.cli import main

    sc, ws, run_id, *_ = ablated
    out = tmp_path / "b.cudpack"
    assert main(["pack", "--workspace", str(ws.root), "--run", run_id, "--out", str(out)]) == 0
    assert "without edge scores" in capsys.readouterr().out
    assert main(["unpack", str(out), "--workspace", str(tmp_path / "w2")]) == 0
    assert f"calibration {run_id}" in capsys.readouterr().out
    assert main(["export", "--workspace", str(tmp_path / "w2")]) == 0
    assert run_id and "cud_oof" in capsys.readouterr().out
    (tmp_path / "junk.cudpack").write_bytes(b"PK\x03\x04 broken")
    assert main(["unpack", str(tmp_path / "junk.cudpack"), "--workspace", str(tmp_path / "w3")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "junk.cudpack: not a CUD Explorer bundle" in err and err.count("\n") == 1


def test_cells_without_reused_scoring_are_refused_until_upgraded(ablated):
    """Cells stored without "reused_scoring" (an older CUD Explorer's grid): `ablate` names `upgrade`, which
    fills it in from the context each scoring run stored, as the grid records it today."""
    from cud_core.pipeline.ablation import ablate
    from cud_core.pipeline.upgrade import upgrade
    from cud_core.store.workspace import WorkspaceError

    sc, ws, run_id, *_ = ablated
    stored = ws.load_artifact(run_id, "ablation_cells")
    try:
        ws.save_artifact(run_id, "ablation_cells", {k: {f: v for f, v in e.items() if f != "reused_scoring"}
                                                    for k, e in stored.items()})
        with pytest.raises(WorkspaceError, match=f"the ablation grid of calibration {run_id} was written by an "
                                                 "older CUD Explorer; run `python -m cud_core upgrade"):
            ablate(RunContext(sc.lm, ws, run_id=run_id), sc.forget, sc.retain, attribution=["eap"])
        assert upgrade(ws.root) == [f"ablation cells of {run_id}: reused scoring runs recorded"]
        assert ws.load_artifact(run_id, "ablation_cells") == stored
    finally:
        ws.save_artifact(run_id, "ablation_cells", stored)
