from .base import UnlearningMethod, nll


class GradDiff(UnlearningMethod):
    name = "grad_diff"
    description = "−γ·forget NLL + α·retain NLL"
    defaults = {"gamma": 1.0, "alpha": 1.0}

    def loss(self, forget, retain):
        return -self.gamma * nll(self.model, forget) + self.alpha * nll(self.model, retain)
