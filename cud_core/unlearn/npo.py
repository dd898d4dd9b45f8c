import torch
import torch.nn.functional as F

from .base import UnlearningMethod, nll, sequence_logprob


class NPO(UnlearningMethod):
    """Negative Preference Optimization (Zhang et al. 2024) with the frozen original as reference."""
    name = "npo"
    description = "−(2/β)·log σ(−β·(log π − log π_ref)) on forget + α·retain NLL"
    defaults = {"beta": 0.1, "alpha": 1.0}
    positive = ("beta",)

    def loss(self, forget, retain):
        logp, _ = sequence_logprob(self.model, forget)
        with torch.no_grad():
            ref, _ = sequence_logprob(self.reference, forget)
        forget_loss = -(2 / self.beta) * F.logsigmoid(-self.beta * (logp - ref)).mean()
        return forget_loss + self.alpha * nll(self.model, retain)
