"""A prospective split and an interventional test of CUD: the two designs that make "before unlearning"
real instead of simulated by folds.

- `split_halves`: the forget set split into a calibration half A and a test half B, stratified by the
  original answer NLL (samples sorted by it, taken in consecutive pairs, one of each pair to A by a
  seeded coin), so the halves match on the model's confidence.
- `split_parts`: the same idea for any number of disjoint parts (a calibration's forget sets): samples in
  NLL order cut into consecutive blocks of `parts`, each block's samples dealt to the parts in a seeded
  order, so every part spans the NLL range alike.
- `extremes`: the k CUD-easiest and k CUD-hardest samples of B; `matched_extremes`: the same within
  strata of the original NLL (B cut into `strata` equal-count strata by NLL rank; from each, the
  lowest- and highest-CUD samples, k/strata of each, the remainder to the largest strata first), so
  the two groups differ in CUD but hardly in NLL and the test is not the NLL again.
- `group_difference`: the difference in forgetting between two separately unlearned groups (hard group
  minus easy group) with a bootstrap CI resampling each group's samples.
- `budget_index`: where a group's run is read when the groups are compared at matched utility cost: its
  last evaluation before the held-out NLL first leaves the utility bound (what a user can forget of that
  group without breaking the model).
"""
from __future__ import annotations

import random

import numpy as np

from cud_core.difficulty import stats
from cud_core.difficulty.regimes import PROTOCOL, Protocol, within_bound


def split_halves(ids: list[str], nll: dict[str, float], seed: int = 0) -> tuple[list[str], list[str]]:
    """(A, B): consecutive pairs in NLL order, one of each to A by a coin seeded with `seed`; an odd last
    sample goes to B. Both halves are returned in NLL order."""
    order = sorted(ids, key=lambda i: (nll[i], i))
    rng = random.Random(f"prospective:{seed}")
    a, b = [], []
    for j in range(0, len(order) - 1, 2):
        first, second = order[j], order[j + 1]
        if rng.random() < 0.5:
            first, second = second, first
        a.append(first)
        b.append(second)
    if len(order) % 2:
        b.append(order[-1])
    key = {i: r for r, i in enumerate(order)}
    return sorted(a, key=key.get), sorted(b, key=key.get)


def split_parts(ids: list[str], nll: dict[str, float], parts: int, seed: int = 0) -> list[list[str]]:
    """`parts` disjoint lists covering `ids`: consecutive blocks of `parts` samples in NLL order, each block
    dealt out in an order shuffled with `seed`; the last, shorter block goes to parts also in a shuffled order.
    Each part is returned in NLL order; sizes differ by at most one."""
    if not 1 <= parts <= len(ids):
        raise ValueError(f"{len(ids)} samples cannot be cut into {parts} forget sets")
    order = sorted(ids, key=lambda i: (nll[i], i))
    rng = random.Random(f"forget-sets:{seed}")
    out = [[] for _ in range(parts)]
    for j in range(0, len(order), parts):
        deal = list(range(parts))
        rng.shuffle(deal)
        for i, p in zip(order[j:j + parts], deal):
            out[p].append(i)
    return out


def extremes(cud: dict[str, float], k: int) -> tuple[list[str], list[str]]:
    """(the k lowest-CUD ids, the k highest-CUD ids); ties broken by id."""
    if 2 * k > len(cud):
        raise ValueError(f"k = {k} easiest and hardest need at least {2 * k} samples, got {len(cud)}")
    order = sorted(cud, key=lambda i: (cud[i], i))
    return order[:k], order[-k:]


def matched_extremes(cud: dict[str, float], nll: dict[str, float], k: int,
                     strata: int = 4) -> tuple[list[str], list[str]]:
    """(easy, hard): k ids each, taken within NLL strata (see the module docstring)."""
    ids = sorted(cud, key=lambda i: (nll[i], i))
    if 2 * k > len(ids):
        raise ValueError(f"k = {k} easiest and hardest need at least {2 * k} samples, got {len(ids)}")
    groups = [list(g) for g in np.array_split(np.array(ids, dtype=object), strata) if len(g)]
    share = [k // len(groups)] * len(groups)
    for j in sorted(range(len(groups)), key=lambda j: -len(groups[j]))[:k % len(groups)]:
        share[j] += 1
    easy, hard = [], []
    for g, m in zip(groups, share):
        if 2 * m > len(g):
            raise ValueError(f"an NLL stratum of {len(g)} samples cannot give {m} easiest and {m} hardest; use "
                             "fewer strata or a smaller k")
        order = sorted(g, key=lambda i: (cud[i], i))
        easy += order[:m]
        hard += order[len(order) - m:]
    return easy, hard


def group_difference(easy: np.ndarray, hard: np.ndarray, seed: int = 0, n_boot: int = stats.N_BOOT) -> dict:
    """mean(hard) − mean(easy) of a per-sample measure, with a percentile bootstrap CI that resamples
    each group within itself."""
    easy, hard = np.asarray(easy, float), np.asarray(hard, float)
    rng = np.random.default_rng(seed)
    boot = (hard[rng.integers(0, len(hard), (n_boot, len(hard)))].mean(1)
            - easy[rng.integers(0, len(easy), (n_boot, len(easy)))].mean(1))
    return {"easy": float(easy.mean()), "hard": float(hard.mean()), "difference": float(hard.mean() - easy.mean()),
            "ci": stats.percentile_ci(boot), "n_easy": len(easy), "n_hard": len(hard)}


def budget_index(holdout_nll: list[float], protocol: Protocol = PROTOCOL) -> int:
    """Index of the last evaluation before the held-out NLL (one per evaluation, step 0 first) first leaves
    the utility bound; 0 (step 0, nothing unlearned) when it leaves at the first evaluation after it."""
    t = 0
    for j in range(1, len(holdout_nll)):
        if not within_bound(holdout_nll[j], holdout_nll[0], protocol):
            break
        t = j
    return t
