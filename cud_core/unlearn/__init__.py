"""Unlearning methods: one small file per method over a shared base (`base`), a registry (`registry`),
the runner that streams a forgetting curve (`runner`) and its checkpoints (`checkpoint`).

    from cud_core.unlearn import METHODS, run_unlearning
    result = run_unlearning(model, tokenizer, forget, retain, "npo", steps=30, lr=5e-5, eval_every=5, seed=0)
"""
from cud_core.unlearn.base import UnlearningMethod
from cud_core.unlearn.registry import LABEL_METHODS, METHODS
from cud_core.unlearn.runner import UnlearnResult, run_unlearning

__all__ = ["METHODS", "LABEL_METHODS", "UnlearningMethod", "UnlearnResult", "run_unlearning"]
