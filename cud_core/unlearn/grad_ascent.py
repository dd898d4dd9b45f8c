from cud_core.unlearn.base import UnlearningMethod, nll


class GradAscent(UnlearningMethod):
    name = "grad_ascent"
    description = "maximise the forget NLL"

    def loss(self, forget, retain):
        return -nll(self.model, forget)
