"""The validation protocol: statistics against independent computations, cross-fitting that
never lets a sample see its own outcome, CI coverage, the permutation null, the report's fields."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from cud_core.difficulty import stats
from cud_core.difficulty.analysis import Inputs, Settings, analyse, seed_mean_nll
from cud_core.difficulty.crossfit import assign_folds, cross_fit
from cud_core.difficulty.cud import build_anchors, cud_score, cud_scores, label_easy_hard
from cud_core.engine.graph import Graph

# ----------------------------------------------------------------------------- statistics

def test_rank_statistics_match_scipy_sklearn_and_hand_computations():
    rng = np.random.default_rng(0)
    x, y, z = rng.normal(size=(3, 40))
    x[3] = x[4]  # a tie
    assert stats.spearman(x, y) == pytest.approx(spearmanr(x, y)[0], abs=1e-12)
    labels = rng.random(40) > 0.5
    assert stats.auroc(x, labels) == pytest.approx(roc_auc_score(labels, x), abs=1e-12)
    # partial Spearman: residuals of rank(x), rank(y) on [1, rank(z)] by least squares, then Pearson
    r = [spearmanr(v, v)[0] * 0 + np.argsort(np.argsort(v)) + 1.0 for v in (x, y, z)]
    r[0][[3, 4]] = r[0][[3, 4]].mean()  # average rank of the tie
    design = np.column_stack([np.ones(40), r[2]])
    res = [v - design @ np.linalg.lstsq(design, v, rcond=None)[0] for v in r[:2]]
    assert stats.partial_spearman(x, y, z) == pytest.approx(np.corrcoef(*res)[0, 1], abs=1e-12)
    # Kendall's W by hand: 3 raters in perfect agreement → 1; reversed second rater of two → 0
    assert stats.kendall_w([[1, 2, 3, 4], [10, 20, 30, 40], [0.1, 0.2, 0.3, 0.4]]) == pytest.approx(1.0)
    assert stats.kendall_w([[1, 2, 3, 4], [4, 3, 2, 1]]) == pytest.approx(0.0)
    # m=2, n=3, ranks (1,2,3) and (1,3,2): R = (2,5,5), S = 6, W = 12·6 / (4·24) = 0.75
    assert stats.kendall_w([[1, 2, 3], [1, 3, 2]]) == pytest.approx(0.75)
    assert stats.permutation_p(0.5, np.array([0.1, 0.6, 0.2, 0.5])) == pytest.approx(3 / 5)
    assert stats.spearman_brown(0.5, 2) == pytest.approx(2 / 3)


def test_vectorised_cud_equals_the_per_sample_formula():
    rng = np.random.default_rng(1)
    m = torch.tensor(rng.random((6, 50)) > 0.7, dtype=torch.float32)
    m[0] = 0  # an empty circuit
    easy, hard = (torch.tensor(rng.random(50) > 0.6, dtype=torch.float32) for _ in range(2))
    for sim in ("cosine", "jaccard", "hamming"):
        got = cud_scores(m, easy, hard, sim)
        assert got.tolist() == pytest.approx([cud_score(row, easy, hard, sim) for row in m], abs=1e-12)


def test_bootstrap_ci_covers_a_known_spearman_at_about_the_nominal_rate():
    r = 0.5  # bivariate normal: Spearman ρ = (6/π)·asin(r/2)
    rho = 6 / math.pi * math.asin(r / 2)
    rng = np.random.default_rng(2)
    n, reps, covered = 80, 200, 0
    for k in range(reps):
        a = rng.normal(size=n)
        b = r * a + math.sqrt(1 - r * r) * rng.normal(size=n)
        lo, hi = stats.percentile_ci(stats.boot_spearman(a, b, stats.boot_indices(n, k, 1000)))
        covered += lo <= rho <= hi
    # 95% nominal; the percentile bootstrap runs a little under at n = 80. 200 reps: sd ≈ 1.5 points
    assert 0.88 <= covered / reps <= 0.99, covered / reps


def test_auroc_bootstrap_resamples_within_each_class():
    score = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    positive = np.array([0, 0, 0, 1, 1], bool)
    dist = stats.boot_auroc(score, positive, 0, 300)
    assert np.all(dist == 1.0)  # every resample still separates perfectly, never NaN


def test_auroc_is_shown_in_each_predictors_expected_direction():
    from cud_core.difficulty.summary import oriented_auroc, summary_rows

    # a predictor expected to mean "easy" when high (original NLL): high values are the easy samples
    nll = np.array([3.0, 2.5, 2.0, 0.4, 0.1])
    hard = np.array([0, 0, 0, 1, 1], bool)
    raw = stats.auroc(nll, hard)
    assert raw == 0.0 == roc_auc_score(hard, nll)  # stored: high ranked as hard, so 0 = perfect the other way
    e = {"high_means": "easy", "auroc": raw, "auroc_ci": (0.0, 0.25)}
    assert oriented_auroc(e) == (1.0, (0.75, 1.0))  # = roc_auc_score(hard, -nll), CI bounds swapped
    assert roc_auc_score(hard, -nll) == 1.0
    assert oriented_auroc({**e, "high_means": "hard"}) == (0.0, (0.0, 0.25))
    assert math.isnan(oriented_auroc({**e, "auroc": float("nan")})[0])
    target = {"spearman": 0.5, "spearman_ci": (0.1, 0.8)}
    r = {"predictors": {"original_nll": {**e, "n": 5, "partial_spearman": None, "partial_spearman_ci": (None, None),
                                         **{t: target for t in ("nll_after", "delta_nll", "forgotten_at")}}}}
    assert summary_rows(r)[0]["AUROC (expected direction)"] == "1.00 [0.75, 1.00]"


# ----------------------------------------------------------------------------- cross-fitting

class _Graph:
    """A two-layer chain graph is enough for binarise; built through the real Graph."""


@pytest.fixture(scope="module")
def synthetic(tiny_llama):
    """Edge scores of 40 samples on the tiny model's graph whose circuits follow a latent hardness,
    and realised outcomes of three methods × two seeds driven by the same latent (or not)."""
    graph = Graph.from_model(tiny_llama.model)
    rng = np.random.default_rng(3)
    n = 40
    ids = [f"s{i:02d}" for i in range(n)]
    latent = rng.normal(size=n)
    easy_dir, hard_dir = rng.normal(size=graph.n_edges), rng.normal(size=graph.n_edges)
    from cud_core.engine.circuits import as_vector, binarise, from_vector

    scores = {}
    for j, i in enumerate(ids):
        w = 1 / (1 + math.exp(-2 * latent[j]))
        scores[i] = torch.tensor((1 - w) * easy_dir + w * hard_dir + 0.3 * rng.normal(size=graph.n_edges),
                                 dtype=torch.float32)
    circuits = {i: as_vector(binarise(from_vector(scores[i], graph), graph, "greedy", 20), graph) for i in ids}

    def outcomes(signal: float, seed: int):
        r = np.random.default_rng(seed)
        return {m: {sd: {i: {"nll_after": float(3 - signal * latent[j] + r.normal() * 0.5), "delta_nll": 1.0,
                             "forgotten_at": int(r.integers(1, 6))} for j, i in enumerate(ids)} for sd in (0, 1)}
                for m in ("a", "b", "c")}
    baselines = {"original_nll": {i: float(rng.normal()) for i in ids}}
    return {"graph": graph, "ids": ids, "scores": scores, "circuits": circuits, "outcomes": outcomes,
            "baselines": baselines}


def test_out_of_fold_cud_never_uses_anchors_built_with_the_sample(synthetic):
    ids, graph = synthetic["ids"], synthetic["graph"]
    outcomes = synthetic["outcomes"](1.0, 0)
    inputs = Inputs(ids, outcomes, 5, synthetic["baselines"], synthetic["scores"], synthetic["circuits"], graph)
    nll = seed_mean_nll(inputs)
    labels = label_easy_hard(nll, 0.25)
    folds = assign_folds(ids, labels, 5, 0)
    assert sorted(np.bincount(list(folds.values()))) == [8] * 5
    for lab in ("easy", "hard"):  # stratified: each label spread evenly over the folds
        counts = np.bincount([folds[i] for i in ids if labels.get(i) == lab], minlength=5)
        assert counts.max() - counts.min() <= 1
    fit = cross_fit(ids, nll, synthetic["scores"], synthetic["circuits"], graph, 0.25, folds, "greedy", 20)
    for i in ids:
        used = fit.anchor_ids[fit.fold[i]]
        assert i not in used["easy"] and i not in used["hard"]
    # independent recomputation of one fold: labels from the other folds' outcomes only
    f = 2
    train = [i for i in ids if folds[i] != f]
    lab_f = label_easy_hard({m: {i: v[i] for i in train} for m, v in nll.items()}, 0.25)
    anchors = build_anchors(synthetic["scores"], lab_f, graph, "greedy", 20)
    for i in (i for i in ids if folds[i] == f):
        assert fit.cud[i] == pytest.approx(cud_score(synthetic["circuits"][i].float(), anchors.easy.float(),
                                                     anchors.hard.float()), abs=1e-9)
    # changing a sample's own outcome does not change its out-of-fold CUD
    i = ids[0]
    moved = {m: {**v, i: v[i] + 100.0} for m, v in nll.items()}
    again = cross_fit(ids, moved, synthetic["scores"], synthetic["circuits"], graph, 0.25, folds, "greedy", 20)
    assert again.cud[i] == fit.cud[i]


def test_permutation_null_centres_on_chance_and_a_real_signal_beats_it(synthetic):
    g, ids = synthetic["graph"], synthetic["ids"]
    settings = Settings(q=0.25, n_edges=20, n_boot=400, n_permutations=60)
    real = analyse(Inputs(ids, synthetic["outcomes"](1.5, 0), 30, synthetic["baselines"], synthetic["scores"],
                          synthetic["circuits"], g), settings)
    null = np.array(real["permutation"]["null"])
    assert abs(np.nanmean(null)) < 0.1 and np.isfinite(null).mean() > 0.9
    assert real["predictors"]["cud"]["nll_after"]["spearman"] > 0.3 and real["permutation_p"] < 0.05
    assert "CUD is distinguishable from chance" in real["verdict"]
    noise = analyse(Inputs(ids, synthetic["outcomes"](0.0, 1), 30, synthetic["baselines"], synthetic["scores"],
                           synthetic["circuits"], g), settings)
    assert noise["permutation_p"] > 0.05 and "not distinguishable from chance" in noise["verdict"]
    # two seeds of the same latent: a high test–retest reliability and its ceiling
    rel = real["reliability"]
    assert set(rel["test_retest"]) == {"a", "b", "c"} and rel["method_mean"]["ceiling"] > 0.8
    assert 0 < rel["kendall_w"] <= 1


def test_report_json_has_every_field_and_html_is_offline(app_setup, capsys, tmp_path):
    from cud_core.cli import main
    from cud_core.store.workspace import Workspace

    ws, run = app_setup["workspace"], app_setup["calibration"]
    assert main(["report", "--workspace", ws, "--run", run, "--format", "json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("n_forget", "n_labelled", "folds", "seeds", "cud_vs_baseline", "permutation_p", "reliability",
                "in_sample", "verdict"):
        assert key in r, key
    assert "kendall_w" in r["reliability"] and r["seeds"] == [0, 1]
    for name, entry in r["predictors"].items():
        for key in ("partial_spearman", "auroc", "auroc_ci"):
            assert key in entry, (name, key)
        for target in ("nll_after", "delta_nll", "forgotten_at"):
            assert {"spearman", "spearman_ci"} <= set(entry[target]) and len(entry[target]["spearman_ci"]) == 2
    assert set(r["cud_vs_baseline"]) == set(r["predictors"]) - {"cud"}
    # the run's own attribution settings and preset, as stored with it, in the settings line
    config = Workspace(ws).get_run(run)["config"]
    assert r["attribution"] == {k: config["score"][k] for k in ("method", "steps", "baseline", "metric", "n_edges")}
    assert r["preset"] == (config["preset"] or "default")
    from cud_core.report.validation import settings_line
    s = config["score"]
    assert settings_line(r).endswith(f"; preset {r['preset']}: {s['method']} attribution ({s['steps']} steps, "
                                     f"{s['baseline']} baseline, {s['metric']} metric), {s['n_edges']}-edge circuits, "
                                     f"{config['anchors']} anchors")
    assert "attribution" not in settings_line({k: v for k, v in r.items() if k != "attribution"})
    assert main(["report", "--workspace", ws, "--run", run, "--out", str(tmp_path)]) == 0
    page = (tmp_path / f"{run}.html").read_text()
    assert "<svg" in page and "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    assert "https://" not in page
    assert (tmp_path / f"{run}.md").read_text().startswith(f"## Validation of {run}")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:begin (generated by `python -m cud_core report --readme`; do not edit) -->"
                      "\nOLD-CONTENT\n<!-- results:end -->\nafter\n")
    assert main(["report", "--workspace", ws, "--run", run, "--readme", str(readme), "--format", "json"]) == 0
    text = readme.read_text()
    assert "OLD-CONTENT" not in text and "Regenerate this section: `python -m cud_core report" in text
    assert text.endswith("after\n") and text.startswith("intro\n")
    # the same section from the stored JSON report alone
    stored = tmp_path / "stored.json"
    capsys.readouterr()
    assert main(["report", "--workspace", ws, "--run", run, "--format", "json"]) == 0
    stored.write_text(capsys.readouterr().out)
    assert main(["report", "--from-json", str(stored), "--readme", str(readme), "--format", "markdown"]) == 0
    again = readme.read_text()
    assert again.replace(f"--from-json {stored}", "X") .split("Regenerate this section")[1].split("`", 2)[2] == \
        text.split("Regenerate this section")[1].split("`", 2)[2]
    assert main(["report", "--workspace", str(tmp_path / "none")]) == 2


def test_validation_page_renders_a_finished_calibration(app_setup, allow_test_folders):
    from pagetest import ready, shown

    at = ready(app_setup, "views/6_Validation.py")
    assert not at.exception
    text = " ".join(shown(at.markdown))
    assert "CUD is" in text and "distinguishable" in text  # the verdict
    assert any("Reliability ceiling" in i.value for i in at.info)
    # predictors, CUD − baseline, incremental value, leave-one-method-out, depth, out-of-fold vs in-sample,
    # reliability
    assert len(at.dataframe) == 7
    assert {"What the circuit adds beyond the original NLL", "Leave one method out",
            "Circuit depth and hardness"} <= {h.value for h in at.subheader}
    assert "representation" in set(at.dataframe[0].value["predictor"])
    at.radio[0].set_value("forgotten_at").run()
    assert not at.exception


def test_a_predictor_with_missing_values_uses_the_shared_resamples():
    from cud_core.difficulty.analysis import _rho_with_ci

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(2, 30))
    idx = stats.boot_indices(30, 0, 50)
    gappy = x.copy()
    gappy[[3, 7]] = np.nan
    rho, dist = _rho_with_ci(gappy, y, idx)
    keep = np.isfinite(gappy)
    assert rho == pytest.approx(spearmanr(x[keep], y[keep])[0])
    row = idx[5][keep[idx[5]]]  # resample 5, without the two missing samples
    assert dist[5] == pytest.approx(spearmanr(x[row], y[row])[0])


def test_without_consensus_labels_per_method_anchors_still_validate(synthetic):
    """Three methods whose top/bottom q never overlap: no consensus label, so no consensus anchors. The
    per-method headline still runs (out-of-fold, in-sample pinned to a hand recomputation) and the report
    says why consensus CUD is missing; a consensus headline stops with the reason."""
    from cud_core.report.validation import markdown, oof_vs_in_sample_rows

    ids, g = synthetic["ids"], synthetic["graph"]
    shift = {"a": 0, "b": 13, "c": 26}
    outcomes = {m: {sd: {i: {"nll_after": float((j + k) % 40), "delta_nll": 1.0, "forgotten_at": 3}
                         for j, i in enumerate(ids)} for sd in (0, 1)} for m, k in shift.items()}
    inputs = Inputs(ids, outcomes, 5, synthetic["baselines"], synthetic["scores"], synthetic["circuits"], g)
    assert label_easy_hard(seed_mean_nll(inputs), 0.125) == {}
    r = analyse(inputs, Settings(q=0.125, n_edges=20, n_boot=200, n_permutations=5, anchors="per-method"))
    assert "anchors need" in r["unavailable"]["cud"] and "cud" not in r["predictors"]
    assert r["n_labelled"] == 0 and r["fold_anchor_ids"] == [] and r["headline"] == "cud_per_method"
    assert r["anchors_all"]["consensus"] is None and list(r["anchors_all"]["per-method"]) == ["a", "b", "c"]
    assert np.isfinite(r["predictors"]["cud_per_method"]["nll_after"]["spearman"])
    for i, v in r["per_sample"].items():
        assert math.isnan(v["cud_oof"]) and v["cud"] == pytest.approx(np.mean(list(v["cud_per_method"].values())))
    i = ids[7]
    by_hand = np.mean([cud_score(synthetic["circuits"][i].float(), a.easy.float(), a.hard.float()) for a in (
        build_anchors(synthetic["scores"], label_easy_hard({m: {s: float((j + k) % 40) for j, s in enumerate(ids)}},
                                                           0.125), g, "greedy", 20) for m, k in shift.items())])
    assert r["per_sample"][i]["cud_in_sample"] == pytest.approx(by_hand, abs=1e-6)
    assert r["in_sample"]["anchors"] == "per-method" and len(oof_vs_in_sample_rows(r)) == 4
    assert "cud not computed: consensus anchors" in markdown(r)
    with pytest.raises(ValueError, match="anchors need at least one easy and one hard"):
        analyse(inputs, Settings(q=0.125, n_edges=20, n_boot=200, n_permutations=5, anchors="consensus"))


def test_analysis_reports_incremental_value_representation_lomo_and_depth(synthetic):
    """A latent drives the circuits, the hidden states, the circuit depth and every method's outcome; the
    original NLL is noise. CUD then adds to the NLL, the representation baseline finds the latent too,
    each method is predicted from the others, and depth goes with hardness."""
    g, ids = synthetic["graph"], synthetic["ids"]
    rng = np.random.default_rng(5)
    outcomes = synthetic["outcomes"](1.5, 0)
    hard = -np.mean([[outcomes[m][0][i]["nll_after"] for i in ids] for m in outcomes], 0)
    latent = hard + 0.1 * rng.normal(size=len(ids))
    direction = rng.normal(size=(2, 6))
    hidden = {i: torch.tensor(latent[j] * direction + 0.3 * rng.normal(size=(2, 6)), dtype=torch.float32)
              for j, i in enumerate(ids)}
    baselines = {**synthetic["baselines"],
                 "circuit_depth": {i: float(latent[j] + 0.5 * rng.normal()) for j, i in enumerate(ids)},
                 "longest_path": {i: float(rng.integers(1, 5)) for i in ids}}
    settings = Settings(q=0.25, n_edges=20, n_boot=400, n_permutations=40)
    r = analyse(Inputs(ids, outcomes, 30, baselines, synthetic["scores"], synthetic["circuits"], g, hidden), settings)
    assert r["predictors"]["representation"]["nll_after"]["spearman"] > 0.5
    assert "representation" in r["cud_vs_baseline"]
    inc = r["incremental"]
    assert set(inc) >= {"cud", "representation"}
    assert inc["cud"]["spearman"]["gain_ci"][0] > 0 and inc["representation"]["spearman"]["gain_ci"][0] > 0
    assert "Beyond the original NLL, CUD adds to" in r["verdict"]
    assert set(r["leave_one_method_out"]) == {"a", "b", "c"}
    assert all(e["cud"]["spearman"] > 0.2 and e["n_methods"] == 2 for e in r["leave_one_method_out"].values())
    d = r["depth"]
    assert d["depth_com"]["spearman_ci"][0] > 0 and d["depth_com"]["difference_ci"][0] > 0
    assert set(d) == {"depth_com", "longest_path"}


def test_validation_page_shows_a_prospective_validation_of_the_shown_calibration(app_setup, allow_test_folders):
    from pagetest import ready, shown

    from cud_core.engine.models import load_model
    from cud_core.pipeline.calibration import CalibrationSettings
    from cud_core.pipeline.context import RunContext
    from cud_core.pipeline.jobs import prepare_scenario
    from cud_core.pipeline.prospective import PHASE_KIND, ProspectiveSettings, validate_prospective
    from cud_core.pipeline.scoring import ScoreSettings
    from cud_core.store.workspace import Workspace

    at = ready(app_setup, "views/6_Validation.py")
    assert any("validate-prospective" in c for c in shown(at.caption))  # how to get one
    lm = load_model(app_setup["model"], device="cpu")
    sc = prepare_scenario(RunContext(lm, dataset=app_setup["data"]), forget_fraction=0.5, seed=0)
    settings = CalibrationSettings(protocol=None, methods=("grad_diff", "npo", "simnpo"), steps=8, lr=1e-3,
                                   eval_every=2, q=0.25, score=ScoreSettings(steps=2, n_edges=20, generation=False))
    ws = Workspace(app_setup["workspace"])
    run = validate_prospective(RunContext(sc.lm, ws, app_setup["data"]), sc.forget, sc.retain, settings,
                               ProspectiveSettings(k=1, strata=1))
    try:
        r = ws.load_artifact(run, "prospective_report")
        assert r["calibration"] == app_setup["calibration"]  # it found the finished calibration, ran no other
        at = ready(app_setup, "views/6_Validation.py")
        assert not at.exception
        assert any(r["verdict"] in t for t in shown(at.markdown))
        tables = [d.value for d in at.dataframe]
        assert any("ρ with B's hardness" in t.columns for t in tables)
        assert any("hard − easy" in t.columns for t in tables)
    finally:  # the shared workspace as the other page tests expect it
        for x in ws.list_runs(PHASE_KIND) + ws.list_runs("prospective"):
            ws.delete_run(x["id"])


def test_readme_headings_tell_apart_runs_that_differ_in_their_forget_set_only():
    from pathlib import Path

    from cud_core.report import validation as report

    results = Path(__file__).resolve().parent.parent / "results"
    runs = [report.from_json(results / f"world-facts-{name}-protocol.json") for name in ("adapted", "adapted-small")]
    runs.append(report.from_json(results / "world-facts-protocol.json"))
    titles = [line for line in report.readme_section(runs, "cmd").splitlines() if line.startswith("### ")]
    assert titles == [f"### builtin:world-facts-completion-adapted on SmolLM2-135M-Instruct+ft-b9913f72, under the "
                      f"operating-point protocol ({n} forget samples)" for n in (122, 35)] + [
                     "### builtin:world-facts on SmolLM2-135M-Instruct, under the operating-point protocol"]
