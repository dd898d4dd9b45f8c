import torch.nn.functional as F

from cud_core.unlearn.base import UnlearningMethod, sequence_logprob

# open-unlearning configs/trainer/SimNPO.yaml: delta 0.0, beta 4.5, alpha 1.0, gamma 0.125 (its comments:
# delta is `gamma` and gamma is `npo_coeff` in OPTML-Group/Unlearn-Simple's TOFU config), retain NLL
OPEN_UNLEARNING = {"beta": 4.5, "delta": 0.0, "gamma": 0.125, "alpha": 1.0}


class SimNPO(UnlearningMethod):
    """Reference-free NPO with a length-normalised margin (Fan et al. 2024, arXiv:2410.07163) as
    open-unlearning's `simnpo.py` writes it: with NLL = −Σ answer log π(y|x) and |y| answer tokens,
    forget loss = −(2/β)·mean log σ(β·(NLL/|y| − δ)); total γ·forget + α·retain NLL."""
    name = "simnpo"
    description = "γ·(−(2/β)·log σ(β·(NLL/|y| − δ))) on forget + α·retain NLL"
    defaults = dict(OPEN_UNLEARNING)
    positive = ("beta",)

    def loss(self, forget, retain):
        logp, length = sequence_logprob(self.model, forget)
        margin = -logp / length.clamp(min=1) - self.delta
        forget_loss = -(2 / self.beta) * F.logsigmoid(self.beta * margin).mean()
        return self.gamma * forget_loss + self.retain_nll(retain)
