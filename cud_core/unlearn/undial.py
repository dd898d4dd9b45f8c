import torch
import torch.nn.functional as F

from cud_core.unlearn.base import UnlearningMethod

# open-unlearning configs/trainer/UNDIAL.yaml: beta 10.0, alpha 0.0 (no retain term), gamma 1.0, retain NLL;
# its learning rate 1e-4 is not taken (one learning rate for every method here, see runner.DEFAULT_LR)
OPEN_UNLEARNING = {"beta": 10.0, "alpha": 0.0, "gamma": 1.0}


class UNDIAL(UnlearningMethod):
    """Self-distillation with adjusted logits (Dong et al. 2024, arXiv:2402.10052): on the forget
    answer tokens, cross-entropy to softmax(original logits − β·onehot(label)); total γ·forget + α·retain NLL.

    Deviation, kept on purpose: open-unlearning's `compute_undial_loss` averages over every position
    of the sequence (prompt, chat template and padding too, where the label −100 indexes the penalty
    at vocabulary entry V − 100); here only the answer tokens are distilled, which is the method's
    intent and leaves the shared prompt tokens alone."""
    name = "undial"
    description = "γ·cross-entropy to softmax(original logits − β·onehot(label)) on forget answer tokens + α·retain NLL"
    defaults = dict(OPEN_UNLEARNING)

    @classmethod
    def passes(cls, hyper, n_layers):
        return super().passes(hyper, n_layers)[0], 1.0  # + the reference's forward on the forget batch

    def loss(self, forget, retain):
        mask = forget.answer_mask[:, 1:]
        labels = forget.input_ids[:, 1:][mask]
        logits = self.model(input_ids=forget.input_ids, attention_mask=forget.attention_mask).logits[:, :-1][mask]
        with torch.no_grad():
            ref = self.reference(input_ids=forget.input_ids, attention_mask=forget.attention_mask).logits[:, :-1][mask]
            target = torch.softmax(ref.float() - self.beta * F.one_hot(labels, ref.shape[-1]).float(), -1)
        forget_loss = -(target * torch.log_softmax(logits.float(), -1)).sum(-1).mean()
        return self.gamma * forget_loss + self.retain_nll(retain)
