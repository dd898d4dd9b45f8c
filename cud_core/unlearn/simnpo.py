import torch.nn.functional as F

from .base import UnlearningMethod, nll, sequence_logprob


class SimNPO(UnlearningMethod):
    """Reference-free NPO with length-normalised log-likelihood (Fan et al. 2024)."""
    name = "simnpo"
    description = "−(2/β)·log σ(−β·log π/|y| − δ) on forget + α·retain NLL"
    defaults = {"beta": 4.5, "delta": 0.0, "alpha": 1.0}
    positive = ("beta",)

    def loss(self, forget, retain):
        logp, length = sequence_logprob(self.model, forget)
        forget_loss = -(2 / self.beta) * F.logsigmoid(-self.beta * logp / length.clamp(min=1) - self.delta).mean()
        return forget_loss + self.alpha * nll(self.model, retain)
