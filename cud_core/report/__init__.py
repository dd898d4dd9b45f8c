"""Reports: the validation and ablation results as JSON, Markdown, offline HTML and the results README,
and their charts. Imports `pipeline` and the layers below.
"""
