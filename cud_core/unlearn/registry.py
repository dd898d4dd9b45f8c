"""The registry of unlearning methods: name -> method class, and the methods whose agreement labels
samples easy/hard (all but plain gradient ascent, which only serves as a reference)."""
from cud_core.unlearn.base import UnlearningMethod
from cud_core.unlearn.grad_ascent import GradAscent
from cud_core.unlearn.grad_diff import GradDiff
from cud_core.unlearn.npo import NPO
from cud_core.unlearn.rmu import RMU
from cud_core.unlearn.simnpo import SimNPO
from cud_core.unlearn.undial import UNDIAL

METHODS: dict[str, type[UnlearningMethod]] = {m.name: m for m in (GradAscent, GradDiff, NPO, SimNPO, RMU, UNDIAL)}
LABEL_METHODS = ("grad_diff", "npo", "simnpo", "rmu", "undial")
