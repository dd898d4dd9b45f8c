from cud_core.unlearn.base import UnlearningMethod, nll

# open-unlearning configs/trainer/GradDiff.yaml: gamma 1.0, alpha 1.0, retain_loss_type NLL
OPEN_UNLEARNING = {"gamma": 1.0, "alpha": 1.0}


class GradDiff(UnlearningMethod):
    """Gradient difference (open-unlearning `src/trainer/unlearn/grad_diff.py`): ascend the forget
    answer NLL, descend the retain answer NLL; both are token means over the batch (HF's `loss`)."""
    name = "grad_diff"
    description = "−γ·forget NLL + α·retain NLL"
    defaults = dict(OPEN_UNLEARNING)

    def loss(self, forget, retain):
        return -self.gamma * nll(self.model, forget) + self.retain_nll(retain)
