"""Unlearning runs side by side on one axis: per run and evaluated step, the mean over its forget samples
of the answer NLL or of its change since step 0, with a 95% normal-approximation band (mean ± 1.96·SD/√n),
and for two runs the difference of those means at the steps both evaluated (second − first) with the
same kind of band (the runs' samples are independent: SE² = SE₁² + SE₂²). Change since step 0 is the
default comparison: two groups start at different NLLs, and forgetting is how far each one moved."""
from __future__ import annotations

import math

import numpy as np

MEASURES = {"delta": "change in answer NLL since step 0", "nll": "answer NLL"}
Z = 1.96


def run_rows(name: str, curve: list[dict], measure: str = "delta") -> list[dict]:
    """One row per evaluation of `curve` (each {"step", "forget_nll": {id: NLL}}): run, step, mean, low,
    high, n."""
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
    first = curve[0]["forget_nll"]
    rows = []
    for e in curve:
        v = np.array([e["forget_nll"][i] - (first[i] if measure == "delta" else 0.0) for i in e["forget_nll"]])
        se = v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0
        rows.append({"run": name, "step": e["step"], "mean": float(v.mean()), "low": float(v.mean() - Z * se),
                     "high": float(v.mean() + Z * se), "se": float(se), "n": len(v)})
    return rows


def difference_rows(first: list[dict], second: list[dict]) -> list[dict]:
    """(second − first) of two runs' `run_rows` at the steps both evaluated."""
    by_step = {r["step"]: r for r in first}
    out = []
    for r in second:
        a = by_step.get(r["step"])
        if a is None:
            continue
        d, se = r["mean"] - a["mean"], math.hypot(r["se"], a["se"])
        out.append({"step": r["step"], "difference": d, "low": d - Z * se, "high": d + Z * se})
    return out
