"""The shared base of every unlearning method: one `loss(forget, retain)` per method.

A method trains a copy of the model (`self.model`); `self.reference` is the frozen original, used by
methods that compare against it (NPO, RMU, UNDIAL) and never updated.
"""
from __future__ import annotations

import math
import numbers

import torch

from cud_core.engine.metrics import Batch, answer_token_logprobs


class UnlearningMethod:
    name = "base"
    description = ""
    defaults: dict = {}

    positive: tuple[str, ...] = ()    # hyper-parameters that must be > 0
    minimum: dict[str, int] = {}       # whole-number hyper-parameters and their lowest value

    def __init__(self, model, reference, **hyper):
        self.model, self.reference = model, reference
        self.hyper = self.resolve(hyper)

    @classmethod
    def check_hyper(cls, hyper: dict) -> dict:
        """The hyper-parameters with whole numbers as int; ValueError naming the first unknown name or
        unusable value (before any model work): a finite number where the default is a number, whole
        where the default is whole (or None), within the method's `positive` / `minimum` limits."""
        unknown = set(hyper) - set(cls.defaults)
        if unknown:
            raise ValueError(f"{cls.name} has no hyper-parameter {', '.join(sorted(unknown))}; "
                             f"it takes {', '.join(cls.defaults) or 'none'}")
        out = {}
        for name, value in hyper.items():
            default = cls.defaults[name]
            if value is None and default is None:
                out[name] = None
                continue
            if isinstance(default, (bool, str)):
                if type(value) is not type(default):
                    raise ValueError(f"{cls.name} hyper-parameter {name} must be {type(default).__name__}, "
                                     f"got {value!r}")
                out[name] = value
                continue
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{cls.name} hyper-parameter {name} must be a finite number, got {value!r}")
            if isinstance(default, int) or default is None:
                if value != int(value) or abs(value) >= 2 ** 63:
                    raise ValueError(f"{cls.name} hyper-parameter {name} must be a whole number, got {value!r}")
                value = int(value)
            if name in cls.positive and not value > 0:
                raise ValueError(f"{cls.name} hyper-parameter {name} must be > 0, got {value!r}")
            if name in cls.minimum and value < cls.minimum[name]:
                raise ValueError(f"{cls.name} hyper-parameter {name} must be ≥ {cls.minimum[name]}, got {value!r}")
            out[name] = value if isinstance(value, int) else float(value)
        return out

    @classmethod
    def resolve(cls, hyper: dict) -> dict:
        """Every hyper-parameter this method runs with: its defaults, overridden by the checked `hyper`."""
        return {**cls.defaults, **cls.check_hyper(hyper)}

    @classmethod
    def passes(cls, hyper: dict, n_layers: int) -> tuple[float, float]:
        """(student forward+backward, frozen-reference forward) passes of a whole model per training
        step, in batches: the cost model of `estimate.estimate_unlearning`. Here: the forget pass, and
        the retain pass when α > 0."""
        return 1.0 + (hyper.get("alpha", 0) > 0), 0.0

    def retain_nll(self, retain: Batch) -> torch.Tensor | float:
        """α·(mean retain answer NLL); 0 without a forward pass when α = 0 (UNDIAL's default)."""
        return self.alpha * nll(self.model, retain) if self.alpha else 0.0

    def __getattr__(self, key):
        hyper = self.__dict__.get("hyper", {})
        if key in hyper:
            return hyper[key]
        raise AttributeError(key)

    def parameters(self):
        """The parameters this method updates (all by default)."""
        return self.model.parameters()

    def loss(self, forget: Batch, retain: Batch) -> torch.Tensor:
        raise NotImplementedError


def answer_logprobs(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the next token [B, T-1] and the answer-target mask [B, T-1]."""
    return answer_token_logprobs(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, batch)


def sequence_logprob(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ answer log-probs per sample [B], answer length per sample [B])."""
    logp, mask = answer_logprobs(model, batch)
    return (logp * mask).sum(1), mask.sum(1)


def nll(model, batch: Batch) -> torch.Tensor:
    """Mean answer-token NLL over the batch (the usual fine-tuning loss)."""
    logp, mask = answer_logprobs(model, batch)
    return -(logp * mask).sum() / mask.sum().clamp(min=1)
