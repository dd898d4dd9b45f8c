"""The shared base of every unlearning method: one `loss(forget, retain)` per method.

A method trains a copy of the model (`self.model`); `self.reference` is the frozen original, used by
methods that compare against it (NPO, RMU, UNDIAL) and never updated.
"""
from __future__ import annotations

import torch

from ..metrics import Batch, answer_token_logprobs


class UnlearningMethod:
    name = "base"
    description = ""
    defaults: dict = {}

    def __init__(self, model, reference, **hyper):
        unknown = set(hyper) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name} has no hyper-parameter {', '.join(sorted(unknown))}; "
                             f"it takes {', '.join(self.defaults) or 'none'}")
        self.model, self.reference = model, reference
        self.hyper = {**self.defaults, **hyper}

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
