"""Samples: loading and validating question/answer files, encoding, forget/retain splits, and the
built-in scenarios (world facts, fictitious authors). Imports nothing else from the project.
"""
