"""Difficulty: circuit-guided unlearning difficulty (CUD) against easy/hard anchors, the baseline
predictors (MRD, NLL, gradient norm), circuit diffs and the statistics of validation (cross-fitting,
bootstrap, analysis, the ablation grid's cells). Imports `engine` and `data`.
"""
