"""Incremental value, the representation baseline, leave-one-method-out and depth: pinned to hand
computations on tiny data (numpy.polyfit, scipy, explicit means)."""
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from cud_core.difficulty import claims, incremental, representation, stats
from cud_core.difficulty.cud import cud_score


def test_cross_fitted_rank_model_matches_a_least_squares_line_fitted_per_fold():
    x = np.array([0.3, 1.2, -0.4, 2.2, 0.9, -1.5, 0.1, 1.7])
    y = np.array([1.0, 3.0, 0.5, 4.0, 2.5, -2.0, 0.2, 2.0])
    folds = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    u = incremental.uniform_ranks(x)
    assert u.tolist() == pytest.approx(np.array([4, 6, 2, 8, 5, 1, 3, 7]) / 8)
    got = incremental.cross_fitted([u], y, folds)
    for f in (0, 1):
        train, test = folds != f, folds == f
        # y ranked among the training samples only, scaled by their count
        target = np.argsort(np.argsort(y[train])) + 1.0
        slope, intercept = np.polyfit(u[train], target / train.sum(), 1)
        assert got[test] == pytest.approx(slope * u[test] + intercept)


def test_incremental_value_finds_a_predictor_that_carries_the_target_and_not_noise():
    rng = np.random.default_rng(0)
    n = 120
    latent = rng.normal(size=n)
    y = latent + 0.3 * rng.normal(size=n)
    base = rng.normal(size=n)                       # the NLL knows nothing here
    folds = np.arange(n) % 5
    labelled = np.arange(0, n, 2)
    positive = y[labelled] > np.median(y[labelled])
    idx = stats.boot_indices(n, 0, 400)
    good = incremental.incremental_value(base, latent, y, folds, labelled, positive, idx, 100, 0)
    assert good["spearman"]["gain_ci"][0] > 0.5 and good["permutation_p"] < 0.02
    assert good["auroc"]["gain"] == pytest.approx(good["auroc"]["full"] - good["auroc"]["base"])
    # the point gain is the difference of the two out-of-fold ρ, each what scipy says of the predictions
    u = [incremental.uniform_ranks(base), incremental.uniform_ranks(latent)]
    full = incremental.cross_fitted(u, y, folds)
    assert good["spearman"]["full"] == pytest.approx(spearmanr(full, y).statistic)
    noise = incremental.incremental_value(base, rng.normal(size=n), y, folds, labelled, positive, idx, 100, 0)
    lo, hi = noise["spearman"]["gain_ci"]
    assert lo < 0 < hi and noise["permutation_p"] > 0.05
    text = incremental.sentence("CUD", noise, 0.02, [-0.1, 0.15])
    assert "adds nothing detectable" in text and "not distinguishable from 0" in text
    assert "adds to" in incremental.sentence("CUD", good, 0.8, [0.7, 0.9])


def test_representation_features_are_centred_and_each_layer_scaled_to_unit_rms():
    f = torch.tensor([[[1.0, 0.0], [10.0, 0.0]],
                      [[3.0, 0.0], [10.0, 4.0]],
                      [[2.0, 3.0], [10.0, 8.0]]])
    got = representation.standardise(f)
    # layer 0: centred rows (−1, −1), (1, −1), (0, 2); squared norms 2, 2, 4 → rms √(8/3)
    # layer 1: centred rows (0, −4), (0, 0), (0, 4); squared norms 16, 0, 16 → rms √(32/3)
    r0, r1 = np.sqrt(8 / 3), np.sqrt(32 / 3)
    expected = [[-1 / r0, -1 / r0, 0, -4 / r1], [1 / r0, -1 / r0, 0, 0], [0, 2 / r0, 0, 4 / r1]]
    assert got.numpy() == pytest.approx(np.array(expected))


def test_representation_anchor_is_cuds_recipe_on_fold_means():
    rng = np.random.default_rng(1)
    ids = [f"s{i}" for i in range(12)]
    features = {i: torch.tensor(rng.normal(size=(2, 3)), dtype=torch.float32) for i in ids}
    folds = {i: j % 2 for j, i in enumerate(ids)}
    labels = [{"s1": "easy", "s3": "easy", "s5": "hard", "s7": "hard"},
              {"s0": "easy", "s2": "hard", "s4": "hard", "s6": "easy"}]
    got = representation.cross_fit(ids, features, folds, labels)
    matrix = representation.standardise(torch.stack([features[i] for i in ids])).numpy()
    row = {i: j for j, i in enumerate(ids)}
    for f, lab in enumerate(labels):
        easy = np.mean([matrix[row[i]] for i, v in lab.items() if v == "easy"], 0)
        hard = np.mean([matrix[row[i]] for i, v in lab.items() if v == "hard"], 0)
        for i in (i for i in ids if folds[i] == f):
            assert got[i] == pytest.approx(cud_score(matrix[row[i]], easy, hard), abs=1e-9)
    with pytest.raises(ValueError, match="easy and a hard"):
        representation.cross_fit(ids, features, folds, [{"s1": "easy"}, labels[1]])


def test_depth_claims_by_hand():
    y = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    depth = np.array([0.1, 0.5, 0.2, 0.6, 0.4, 0.9])
    labelled = np.array([0, 1, 4, 5])
    positive = np.array([False, False, True, True])       # samples 4 and 5 are hard
    d = claims.depth({"depth_com": depth}, y, labelled, positive, stats.boot_indices(6, 0, 500), 0, 500)["depth_com"]
    assert d["spearman"] == pytest.approx(spearmanr(depth, y).statistic)
    assert d["mean_hard"] == pytest.approx(0.65) and d["mean_easy"] == pytest.approx(0.3)
    assert d["difference"] == pytest.approx(0.35)
    lo, hi = d["difference_ci"]
    assert lo <= 0.35 <= hi and d["n_hard"] == d["n_easy"] == 2
    assert "deeper goes with harder" in claims.depth_sentence({"depth_com": {**d, "spearman_ci": [0.1, 0.9]}})
    assert "against the paper" in claims.depth_sentence({"depth_com": {**d, "spearman_ci": [-0.9, -0.1]}})


def test_leave_one_method_out_predicts_each_method_from_the_others():
    ids = [f"s{i}" for i in range(8)]
    rng = np.random.default_rng(2)
    hardness = {m: rng.normal(size=8) for m in ("a", "b", "c")}
    nll = {m: {i: float(-v) for i, v in zip(ids, h)} for m, h in hardness.items()}
    seen = []

    def fit(subset, folds):  # a stand-in "CUD": the others' mean NLL, negated
        seen.append(sorted(subset))
        return {i: -np.mean([subset[m][i] for m in subset]) for i in ids}

    out = claims.leave_one_method_out(ids, nll, hardness, fit, {}, stats.boot_indices(8, 0, 200))
    assert seen == [["b", "c"], ["a", "c"], ["a", "b"]]
    for m in hardness:
        others = np.mean([hardness[k] for k in hardness if k != m], 0)
        assert out[m]["others"]["spearman"] == pytest.approx(spearmanr(others, hardness[m]).statistic)
        assert out[m]["cud"]["spearman"] == pytest.approx(out[m]["others"]["spearman"])
        assert out[m]["n_methods"] == 2
    assert claims.leave_one_method_out(ids, {"a": nll["a"]}, hardness, fit, {}, None) == {}


def test_prospective_split_pairs_samples_by_nll():
    from cud_core.difficulty.prospective import split_halves

    nll = {"a": 0.1, "b": 0.5, "c": 0.2, "d": 0.9, "e": 0.3}
    a, b = split_halves(list(nll), nll, seed=3)
    # NLL order a c e b d: pairs (a, c), (e, b); d (the odd one) goes to B
    assert len(a) == 2 and len(b) == 3 and "d" in b
    assert sorted([*a, *b]) == sorted(nll)
    assert {frozenset(p) for p in zip(a, b[:2])} == {frozenset("ac"), frozenset("eb")}
    assert split_halves(list(nll), nll, seed=3) == (a, b)
    assert any(split_halves(list(nll), nll, seed=s) != (a, b) for s in range(10))


def test_extremes_and_nll_matched_extremes_by_hand():
    from cud_core.difficulty.prospective import extremes, group_difference, matched_extremes

    ids = [f"s{i}" for i in range(8)]
    cud = dict(zip(ids, [0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4]))
    assert extremes(cud, 2) == (["s1", "s5"], ["s4", "s0"])  # ascending CUD: 0.1, 0.2 | 0.8, 0.9
    nll = dict(zip(ids, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]))
    # two NLL strata: s0..s3 (CUD 0.9 0.1 0.5 0.3) and s4..s7 (0.8 0.2 0.7 0.4); one easiest and one
    # hardest from each
    easy, hard = matched_extremes(cud, nll, 2, strata=2)
    assert easy == ["s1", "s5"] and hard == ["s0", "s4"]
    with pytest.raises(ValueError, match="cannot give"):
        matched_extremes(cud, nll, 4, strata=3)  # strata of 3, 3, 2: the first would need 2 + 2
    with pytest.raises(ValueError, match="at least 10"):
        extremes(cud, 5)
    d = group_difference([1.0, 2.0, 3.0], [4.0, 6.0], seed=0, n_boot=400)
    assert d["difference"] == pytest.approx(3.0) and d["ci"][0] <= 3.0 <= d["ci"][1]
    assert (d["n_easy"], d["n_hard"]) == (3, 2)
