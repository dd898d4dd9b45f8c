"""Unlearning methods (SPEC §7): one small file per method, one shared base, a registry.

    from cud_core.unlearn import METHODS, run_unlearning
    result = run_unlearning(model, tokenizer, forget, retain, "npo", steps=30, lr=5e-5, eval_every=5, seed=0)
"""
from .base import UnlearningMethod
from .grad_ascent import GradAscent
from .grad_diff import GradDiff
from .npo import NPO
from .rmu import RMU
from .runner import UnlearnResult, run_unlearning
from .simnpo import SimNPO
from .undial import UNDIAL

METHODS: dict[str, type[UnlearningMethod]] = {m.name: m for m in (GradAscent, GradDiff, NPO, SimNPO, RMU, UNDIAL)}
# the K methods whose agreement labels samples easy/hard (SPEC §6): all but plain gradient ascent
LABEL_METHODS = ("grad_diff", "npo", "simnpo", "rmu", "undial")

__all__ = ["METHODS", "LABEL_METHODS", "UnlearningMethod", "UnlearnResult", "run_unlearning"]
