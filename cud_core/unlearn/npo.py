import torch
import torch.nn.functional as F

from cud_core.unlearn.base import UnlearningMethod, sequence_logprob

# open-unlearning configs/trainer/NPO.yaml: beta 0.1, alpha 1.0, gamma 1.0, retain NLL (its docs/repro.md
# table: "α = 1, γ = 1, β = 0.1"). β is that config's 0.1, not the 0.5 quoted elsewhere.
OPEN_UNLEARNING = {"beta": 0.1, "alpha": 1.0, "gamma": 1.0}


class NPO(UnlearningMethod):
    """Negative Preference Optimization (Zhang et al. 2024, arXiv:2404.05868) as open-unlearning's
    `npo.py` + `compute_dpo_loss` write it: with s = Σ answer log π(y|x) − Σ log π_ref(y|x) (sequence
    sums, the frozen original as π_ref), forget loss = −(2/β)·mean log σ(−β·s); total γ·forget + α·retain NLL."""
    name = "npo"
    description = "γ·(−(2/β)·log σ(−β·(log π − log π_ref))) on forget + α·retain NLL"
    defaults = dict(OPEN_UNLEARNING)
    positive = ("beta",)

    @classmethod
    def passes(cls, hyper, n_layers):
        return super().passes(hyper, n_layers)[0], 1.0  # + the reference's forward on the forget batch

    def loss(self, forget, retain):
        logp, _ = sequence_logprob(self.model, forget)
        with torch.no_grad():
            ref, _ = sequence_logprob(self.reference, forget)
        forget_loss = -(2 / self.beta) * F.logsigmoid(-self.beta * (logp - ref)).mean()
        return self.gamma * forget_loss + self.retain_nll(retain)
