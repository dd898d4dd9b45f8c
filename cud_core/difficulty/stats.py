"""Statistics for validating a difficulty predictor (the validation protocol).

All resampling is over samples, seeded, and vectorised: one (B, n) matrix of bootstrap indices is
drawn once per analysis and shared, so the paired difference ρ(CUD) − ρ(baseline) uses the same
resamples for both predictors.

- Spearman's ρ: Pearson correlation of average ranks (ties get their mean rank).
- AUROC: the Mann–Whitney U statistic / (n_pos · n_neg), ties counting one half.
- Partial Spearman of x and y given z: Pearson correlation of the residuals of rank(x) and rank(y)
  after a least-squares line on rank(z) (the rank partial correlation).
- Kendall's W for m raters of n items (Kendall & Babington Smith 1939): W = 12·S / (m²(n³ − n)),
  S = Σ_i (R_i − R̄)², R_i the rank sum of item i; no tie correction.
- Bootstrap CIs are percentile intervals (2.5%, 97.5%) over resamples where the statistic is
  defined.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

N_BOOT = 2000
LEVEL = 0.95


def ranks(x, axis: int = -1) -> np.ndarray:
    return rankdata(np.asarray(x, dtype=float), axis=axis)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of two (B, n) arrays; NaN where a row is constant."""
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1), np.nan)


def spearman(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return float("nan")
    return float(_pearson_rows(ranks(x)[None], ranks(y)[None])[0])


def partial_spearman(x, y, z) -> float:
    """ρ(x, y | z): correlation of rank residuals after regressing each rank vector on rank(z)."""
    x, y, z = (np.asarray(v, float) for v in (x, y, z))
    if len(x) < 4:
        return float("nan")
    return float(_pearson_rows(*(_residual(ranks(v)[None], ranks(z)[None]) for v in (x, y)))[0])


def _residual(r: np.ndarray, rz: np.ndarray) -> np.ndarray:
    rz = rz - rz.mean(-1, keepdims=True)
    rc = r - r.mean(-1, keepdims=True)
    den = (rz * rz).sum(-1, keepdims=True)
    slope = np.where(den > 0, (rc * rz).sum(-1, keepdims=True) / np.where(den > 0, den, 1), 0.0)
    return rc - slope * rz


def auroc(score, positive) -> float:
    """P(score of a positive > score of a negative), ties ½; NaN without both classes."""
    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = ranks(score)
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def boot_indices(n: int, seed: int = 0, n_boot: int = N_BOOT) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_ci(values: np.ndarray, level: float = LEVEL) -> list[float]:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) < 20:
        return [float("nan"), float("nan")]
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def boot_spearman(x, y, idx: np.ndarray) -> np.ndarray:
    """ρ on every resample (rows of idx index into x and y)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return _pearson_rows(ranks(x[idx], axis=1), ranks(y[idx], axis=1))


def boot_partial_spearman(x, y, z, idx: np.ndarray) -> np.ndarray:
    x, y, z = (np.asarray(v, float) for v in (x, y, z))
    rz = ranks(z[idx], axis=1)
    return _pearson_rows(_residual(ranks(x[idx], axis=1), rz), _residual(ranks(y[idx], axis=1), rz))


def boot_auroc(score, positive, seed: int = 0, n_boot: int = N_BOOT) -> np.ndarray:
    """AUROC on resamples drawn within each class (stratified), so both classes are always present."""
    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return np.full(n_boot, np.nan)
    rng = np.random.default_rng(seed)
    p = pos[rng.integers(0, len(pos), (n_boot, len(pos)))]
    q = neg[rng.integers(0, len(neg), (n_boot, len(neg)))]
    both = np.concatenate([p, q], axis=1)
    r = ranks(both, axis=1)
    n_p, n_n = len(pos), len(neg)
    return (r[:, :n_p].sum(1) - n_p * (n_p + 1) / 2) / (n_p * n_n)


def kendall_w(matrix) -> float:
    """Kendall's W of an (m raters, n items) matrix of scores (ranked within each rater)."""
    m = np.asarray(matrix, float)
    if m.ndim != 2 or m.shape[0] < 2 or m.shape[1] < 2:
        return float("nan")
    k, n = m.shape
    r = ranks(m, axis=1).sum(0)
    s = ((r - r.mean()) ** 2).sum()
    return float(12 * s / (k ** 2 * (n ** 3 - n)))


def permutation_p(observed: float, null: np.ndarray) -> float:
    """One-sided p = (1 + #{null ≥ observed}) / (1 + #null) (Phipson & Smyth 2010: never 0)."""
    null = np.asarray(null, float)
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or len(null) == 0:
        return float("nan")
    return float((1 + (null >= observed).sum()) / (1 + len(null)))


def spearman_brown(r: float, k: int = 2) -> float:
    """Reliability of the mean of k parallel measurements whose pairwise reliability is r."""
    return float(k * r / (1 + (k - 1) * r)) if np.isfinite(r) and r > -1 / (k - 1) else float("nan")


def spearman_p(rho: float, n: int) -> float:
    """One-sided p of H0: ρ ≤ 0 against ρ > 0, from the t approximation t = ρ·√((n − 2)/(1 − ρ²)) with
    n − 2 degrees of freedom (the approximation scipy.stats.spearmanr uses; Zar 1972)."""
    from scipy.stats import t as student_t

    if not np.isfinite(rho) or n < 3:
        return float("nan")
    if rho >= 1:
        return 0.0
    return float(student_t.sf(rho * np.sqrt((n - 2) / (1 - rho * rho)), n - 2))


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979): sort ascending, p_(i)·(m − i + 1) for the i-th of m,
    made monotone non-decreasing and capped at 1; NaNs stay NaN and do not count in m. Rejecting where the
    adjusted p ≤ α controls the family-wise error rate at α."""
    p = np.asarray(p, float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, p[j] * (m - i)))
        out[j] = running
    return out
