"""The engine: the computation graph, model adapters and hooked forward, edge attribution (EAP, EAP-IG),
circuits, metrics, model loading and memory planning. Imports torch and transformers, and `data` for samples.
"""
