"""The validation's summary table: one row per predictor with its out-of-fold ρ, partial ρ and AUROC,
each with its 95% CI, as stored beside a calibration and shown by the app, the CLI and the reports."""
from __future__ import annotations

import math

from cud_core.difficulty.analysis import TARGETS
from cud_core.difficulty.predictors import MRD_DEFINITION


def fmt(v, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def ci(pair, digits: int = 2) -> str:
    return f"[{fmt(pair[0], digits)}, {fmt(pair[1], digits)}]"


def oriented_auroc(e: dict) -> tuple[float, tuple[float, float]]:
    """A predictor's AUROC (hard vs easy) [CI] read in the direction it was expected to have before
    looking: stored AUROCs rank *high* values as hard, so for a predictor expected to mean "easy" when
    high (original NLL, gradient norm) it is 1 − AUROC, CI [1 − hi, 1 − lo]. 1 = separates hard from
    easy perfectly as expected, 0.5 = chance, < 0.5 = the opposite way."""
    a, (lo, hi) = e["auroc"], e["auroc_ci"]
    if e["high_means"] == "hard":
        return a, (lo, hi)
    flip = lambda v: None if v is None else 1.0 - v  # noqa: E731
    return flip(a), (flip(hi), flip(lo))


def summary_rows(r: dict) -> list[dict]:
    """One row per predictor: ρ with each method-mean target [CI], partial ρ, AUROC [CI] in the
    predictor's expected direction (out-of-fold)."""
    rows = []
    for name, e in r["predictors"].items():
        if name == "mrd" and r.get("predictor_definitions", {}).get("mrd") != MRD_DEFINITION:
            name = "mrd (ΔLL/LL, relative σ: not its authors' definition)"  # a report with another MRD
        row = {"predictor": name, "high means": e["high_means"], "n": e["n"]}
        for t in TARGETS:
            row[f"ρ {t}"] = f"{fmt(e[t]['spearman'])} {ci(e[t]['spearman_ci'])}"
        row["partial ρ given original NLL"] = f"{fmt(e['partial_spearman'])} {ci(e['partial_spearman_ci'])}"
        auc, auc_ci = oriented_auroc(e)
        row["AUROC (expected direction)"] = f"{fmt(auc)} {ci(auc_ci)}"
        rows.append(row)
    return rows
