"""Validating CUD as a reviewer would (SPEC §6, validation protocol): cross-fitted out-of-fold CUD,
bootstrap CIs, paired comparisons with baselines, a permutation null, the reliability ceiling of the
target, the paper's in-sample numbers beside them, and the report (JSON, Markdown, offline HTML).

- `stats`: rank statistics and resampling (no model, no torch);
- `crossfit`: folds and out-of-fold CUD;
- `analysis`: the whole validation of one calibration, as a JSON-able dict;
- `report`: that dict as Markdown, offline HTML and the README's results section.
"""
from .analysis import EXPECTED_DIRECTION, PREDICTORS, PRIMARY, TARGETS, Inputs, Settings, analyse
from .crossfit import CrossFit, assign_folds, cross_fit, fold_anchors, score_folds

__all__ = ["EXPECTED_DIRECTION", "PREDICTORS", "PRIMARY", "TARGETS", "Inputs", "Settings", "analyse", "CrossFit",
           "assign_folds", "cross_fit", "fold_anchors", "score_folds"]
