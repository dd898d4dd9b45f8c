import torch
import torch.nn.functional as F

from .base import UnlearningMethod, nll


class UNDIAL(UnlearningMethod):
    """Self-distillation with adjusted logits (Dong et al. 2024): on forget answer tokens, match
    softmax(original logits − β·onehot(label)); plus retain NLL."""
    name = "undial"
    description = "cross-entropy to softmax(original logits − β·onehot(label)) on forget tokens + retain NLL"
    defaults = {"beta": 10.0, "alpha": 1.0}

    def loss(self, forget, retain):
        mask = forget.answer_mask[:, 1:]
        labels = forget.input_ids[:, 1:][mask]
        logits = self.model(input_ids=forget.input_ids, attention_mask=forget.attention_mask).logits[:, :-1][mask]
        with torch.no_grad():
            ref = self.reference(input_ids=forget.input_ids, attention_mask=forget.attention_mask).logits[:, :-1][mask]
            target = torch.softmax(ref.float() - self.beta * F.one_hot(labels, ref.shape[-1]).float(), -1)
        forget_loss = -(target * torch.log_softmax(logits.float(), -1)).sum(-1).mean()
        return forget_loss + self.alpha * nll(self.model, retain)
