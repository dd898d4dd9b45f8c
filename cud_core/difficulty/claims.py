"""Two of the paper's claims, measured as claims on a calibration's own outcomes.

- "Stable across methods" → leave-one-method-out: for each voting method m, CUD cross-fitted (the
  validation's folds) from the labels of the *other* methods alone, and its ρ with method m's own
  hardness; beside it the ρ of the other methods' mean hardness with m's (how much the methods agree at
  all, the most any predictor built from them can carry over).
- "Easy = shallow/early, hard = deep/late" → the circuit's depth centre of mass and longest path: their
  ρ with hardness, and the hard − easy difference of their means over the labelled samples. A positive
  ρ and difference is the paper's direction.
Every number has a bootstrap CI (the analysis' shared resamples; class-stratified resamples for the
easy/hard difference).
"""
from __future__ import annotations

import numpy as np

from cud_core.difficulty import stats
from cud_core.difficulty.crossfit import cross_fit

DEPTH_MEASURES = {"depth_com": "depth centre of mass", "longest_path": "longest path (layers)"}


def _rho(x, y, idx) -> dict:
    x, y = np.asarray(x, float), np.asarray(y, float)
    return {"spearman": stats.spearman(x, y), "spearman_ci": stats.percentile_ci(stats.boot_spearman(x, y, idx))}


def leave_one_method_out(ids: list[str], nll: dict[str, dict[str, float]], hardness: dict[str, np.ndarray],
                         fit, folds: dict[str, int], idx: np.ndarray) -> dict:
    """method -> {"cud": ρ of CUD from the other methods' labels with this method's hardness,
    "others": ρ of the other methods' mean hardness with it, "n_methods": how many the labels came from}
    (or {"unavailable": why}). `fit(nll_subset, folds)` returns out-of-fold CUD {id: value}."""
    if len(nll) < 2:
        return {}
    out = {}
    for m in nll:
        others = {k: v for k, v in nll.items() if k != m}
        y = hardness[m]
        entry = {"n_methods": len(others), "n": len(ids),
                 "others": _rho(np.mean([hardness[k] for k in others], 0), y, idx)}
        try:
            cud = fit(others, folds)
            entry["cud"] = _rho([cud[i] for i in ids], y, idx)
        except ValueError as exc:
            entry["unavailable"] = str(exc)
        out[m] = entry
    return out


def consensus_fit(ids, inputs, s):
    """The `fit` of `leave_one_method_out` for consensus anchors with the validation's settings."""
    def fit(nll_subset, folds):
        return cross_fit(ids, nll_subset, inputs.edge_scores, inputs.circuits, inputs.graph, s.q, folds, s.binarise,
                         s.n_edges, s.similarity).cud
    return fit


def depth(values: dict[str, np.ndarray], y: np.ndarray, labelled: np.ndarray, positive: np.ndarray,
          idx: np.ndarray, seed: int = 0, n_boot: int = stats.N_BOOT) -> dict:
    """measure -> {ρ with hardness y, mean over hard and easy labelled samples, hard − easy with CI}."""
    out = {}
    rng = np.random.default_rng(seed + 11)
    for name, x in values.items():
        x = np.asarray(x, float)
        xs = x[labelled]
        hard, easy = xs[positive], xs[~positive]
        entry = {"label": DEPTH_MEASURES.get(name, name), **_rho(x, y, idx), "n": len(x),
                 "n_hard": len(hard), "n_easy": len(easy)}
        if len(hard) and len(easy):
            diff = (hard[rng.integers(0, len(hard), (n_boot, len(hard)))].mean(1)
                    - easy[rng.integers(0, len(easy), (n_boot, len(easy)))].mean(1))
            entry.update(mean_hard=float(hard.mean()), mean_easy=float(easy.mean()),
                         difference=float(hard.mean() - easy.mean()), difference_ci=stats.percentile_ci(diff))
        out[name] = entry
    return out


def depth_sentence(d: dict) -> str:
    """What the depth measures say against the paper's "hard = deep/late", following the CIs."""
    parts = []
    for entry in d.values():
        lo, hi = entry["spearman_ci"]
        if not np.all(np.isfinite([lo, hi])):
            continue
        words = ("deeper goes with harder (the paper's direction)" if lo > 0 else
                 "deeper goes with easier (against the paper)" if hi < 0 else "no detectable relation")
        parts.append(f"{entry['label']}: ρ = {entry['spearman']:.2f} [{lo:.2f}, {hi:.2f}], {words}")
    return "; ".join(parts) + "." if parts else ""
