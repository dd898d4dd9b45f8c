"""Storage: the workspace database (runs, samples, scores, curves), atomic writes, owners, score files,
bundles, annotations and escaping for CSV/Markdown. Imports `data` and `engine.graph`.
"""
