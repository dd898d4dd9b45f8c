"""Incremental value: does a predictor add anything to the original answer NLL?

Two cross-fitted rank-linear models of hardness, on the validation's own folds:
  base:  rank(hardness) ~ 1 + u(original NLL)
  full:  rank(hardness) ~ 1 + u(original NLL) + u(predictor)
u(x) = rank(x) / n over all forget samples: the predictors exist for every sample before unlearning, so
ranking them over the whole set uses no outcome. The hardness ranks a fold's model is fitted to are
ranks among that fold's *training* samples (scaled to [0, 1]), so no test sample's outcome enters its
own prediction; the fit is ordinary least squares. Each sample's out-of-fold prediction is then
compared with its realised hardness: the gain is ρ(full) − ρ(base) (Spearman) and AUROC(full) −
AUROC(base) on the labelled samples, with a paired bootstrap CI (the same resamples for both models)
and a permutation p (the predictor shuffled across samples, both models refitted on the same folds:
what the gain is when the predictor carries no information about the sample).
"""
from __future__ import annotations

import numpy as np

from cud_core.difficulty import stats


def uniform_ranks(x) -> np.ndarray:
    """rank(x) / n (average ranks for ties)."""
    x = np.asarray(x, float)
    return stats.ranks(x) / len(x)


def cross_fitted(columns: list[np.ndarray], y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold predictions of the least-squares fit of rank(y) on [1, columns]: for each fold f the
    model is fitted on the samples outside f (y ranked among them) and predicts the samples in f."""
    design = np.column_stack([np.ones(len(y)), *columns])
    pred = np.empty(len(y))
    for f in np.unique(folds):
        train, test = folds != f, folds == f
        target = stats.ranks(y[train]) / train.sum()
        coef = np.linalg.lstsq(design[train], target, rcond=None)[0]
        pred[test] = design[test] @ coef
    return pred


def incremental_value(base, extra, y, folds, labelled: np.ndarray, positive: np.ndarray, idx: np.ndarray,
                      n_permutations: int = 200, seed: int = 0, n_boot: int | None = None) -> dict:
    """The gain of adding `extra` to `base` (both per-sample predictor values, ranked here) in predicting
    hardness `y` out-of-fold on `folds`. `labelled` indexes the samples with an easy/hard label and
    `positive` says which of them are hard (for AUROC); `idx` is the shared (B, n) bootstrap matrix."""
    base, extra, y, folds = (np.asarray(v, float) for v in (base, extra, y, folds))
    ub, ue = uniform_ranks(base), uniform_ranks(extra)
    p_base = cross_fitted([ub], y, folds)
    p_full = cross_fitted([ub, ue], y, folds)
    n_boot = n_boot or len(idx)
    out = {"n": len(y), "n_labelled": int(len(labelled)), "models": ["original_nll", "original_nll + predictor"]}
    for name, fn, boot in (("spearman", stats.spearman, lambda p: stats.boot_spearman(p, y, idx)),
                           ("auroc", lambda p, _: stats.auroc(p[labelled], positive),
                            lambda p: stats.boot_auroc(p[labelled], positive, seed, n_boot))):
        b, f = fn(p_base, y), fn(p_full, y)
        diff = boot(p_full) - boot(p_base)
        out[name] = {"base": b, "full": f, "gain": f - b, "gain_ci": stats.percentile_ci(diff)}
    rng = np.random.default_rng(seed + 7)
    null = np.array([stats.spearman(cross_fitted([ub, rng.permutation(ue)], y, folds), y)
                     for _ in range(n_permutations)]) - out["spearman"]["base"]
    out["permutation_p"] = stats.permutation_p(out["spearman"]["gain"], null)
    out["n_permutations"] = n_permutations
    return out


def sentence(name: str, inc: dict, partial: float, partial_ci) -> str:
    """What the incremental test and the partial ρ say together, in words that follow from their CIs."""
    g, ci = inc["spearman"]["gain"], inc["spearman"]["gain_ci"]
    if not np.all(np.isfinite(ci)):
        return f"Too few samples to say whether {name} adds to the original NLL."
    adds = ("adds to" if ci[0] > 0 else "makes worse" if ci[1] < 0 else "adds nothing detectable to")
    p_lo, p_hi = partial_ci
    partial_words = ("distinguishable from 0" if np.isfinite(p_lo) and (p_lo > 0 or p_hi < 0)
                     else "not distinguishable from 0")
    return (f"Beyond the original NLL, {name} {adds} the out-of-fold prediction of hardness "
            f"(ρ {inc['spearman']['base']:.2f} → {inc['spearman']['full']:.2f}, gain {g:+.2f}, 95% CI "
            f"[{ci[0]:.2f}, {ci[1]:.2f}], permutation p = {inc['permutation_p']:.3f}, n = {inc['n']}); its partial ρ "
            f"given the original NLL is {partial:.2f} [{p_lo:.2f}, {p_hi:.2f}], {partial_words}.")
