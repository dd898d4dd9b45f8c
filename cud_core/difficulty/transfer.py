"""Anchors across datasets: how well one calibration's anchors predict another calibration's hardness.

Every predictor is evaluated on the target calibration's forget samples that were not in the anchors'
calibration, against the target's realised hardness (−NLL after unlearning, mean over its voting
methods and seeds: the validation's primary target). For each: Spearman ρ with a percentile bootstrap
CI (resampling samples; one set of resamples shared by every predictor, so differences are paired), the
partial ρ given the target's original answer NLL, and the AUROC on the target's easy/hard labels (class-
stratified resamples). A transferred predictor also gets a one-sided permutation p (hardness shuffled
across samples; its anchors never saw the target's outcomes, so nothing else needs re-fitting).
"""
from __future__ import annotations

import numpy as np

from cud_core.difficulty import stats

N_PERMUTATIONS = 200


def evaluate(x, hardness, nll, positive: np.ndarray, labelled: np.ndarray, idx: np.ndarray, seed: int = 0,
             n_permutations: int = 0) -> dict:
    """One predictor `x` (high = hard expected for anchor scores) against `hardness`: ρ and its CI, the
    partial ρ given `nll` and its CI, the AUROC over the `labelled` positions (`positive`: labelled hard)
    and its CI, n, and with `n_permutations` a permutation p."""
    x, y, z = (np.asarray(v, float) for v in (x, hardness, nll))
    out = {"n": len(x), "spearman": stats.spearman(x, y),
           "spearman_ci": stats.percentile_ci(stats.boot_spearman(x, y, idx)),
           "partial_spearman": stats.partial_spearman(x, y, z),
           "partial_spearman_ci": stats.percentile_ci(stats.boot_partial_spearman(x, y, z, idx)),
           "auroc": stats.auroc(x[labelled], positive),
           "auroc_ci": stats.percentile_ci(stats.boot_auroc(x[labelled], positive, seed, len(idx)))}
    if n_permutations:
        rng = np.random.default_rng(seed)
        null = np.array([stats.spearman(x, y[rng.permutation(len(y))]) for _ in range(n_permutations)])
        out["permutation_p"] = stats.permutation_p(out["spearman"], null)
    return out


def paired_difference(a, b, hardness, idx: np.ndarray) -> dict:
    """ρ(a, hardness) − ρ(b, hardness) with its paired bootstrap CI (the same resamples for both)."""
    a, b, y = (np.asarray(v, float) for v in (a, b, hardness))
    dist = stats.boot_spearman(a, y, idx) - stats.boot_spearman(b, y, idx)
    return {"difference": stats.spearman(a, y) - stats.spearman(b, y), "ci": stats.percentile_ci(dist)}


def verdict(r: dict) -> str:
    """One sentence on the transferred CUD that follows from its CIs."""
    p = r["predictors"]
    t = p["cud_transfer"]
    lo, hi = t["spearman_ci"]
    if not np.isfinite(lo):
        return f"No confidence interval for the transferred CUD (n = {t['n']}): no conclusion."
    source, target = r["anchors_data"], r["target_data"]
    head = (f"CUD from {source}'s anchors predicts {target}'s hardness" if lo > 0 else
            f"CUD from {source}'s anchors predicts {target}'s hardness in the wrong direction" if hi < 0 else
            f"CUD from {source}'s anchors shows no detectable relation to {target}'s hardness")
    words = [f"{head} (ρ {t['spearman']:.2f} [{lo:.2f}, {hi:.2f}], n = {t['n']}, permutation p = "
             f"{t['permutation_p']:.3f})."]
    own, d = p.get("cud_own"), r.get("transfer_minus_own")
    if own and d:
        dl, dh = d["ci"]
        compare = ("it predicts less well" if dh < 0 else "it predicts better" if dl > 0 else
                   "no detectable difference")
        words.append(f"Against the target's own out-of-fold CUD (ρ {own['spearman']:.2f}): {compare} (difference "
                     f"{d['difference']:.2f} [{dl:.2f}, {dh:.2f}]).")
    pl, ph = t["partial_spearman_ci"]
    beyond = "it adds to it" if pl > 0 else "it goes against it" if ph < 0 else "it adds nothing detectable"
    words.append(f"Beyond the original NLL (ρ {p['original_nll']['spearman']:.2f} alone), {beyond} (partial ρ "
                 f"{t['partial_spearman']:.2f} [{pl:.2f}, {ph:.2f}]).")
    return " ".join(words)
