import torch

from cud_core.unlearn.base import UnlearningMethod

# open-unlearning configs/trainer/RMU.yaml (for Llama-3.2-1B, 16 layers): module_regex model.layers.7,
# steering_coeff 2, alpha 1, gamma 1, retain_loss_type EMBED_DIFF, trainable_params_regex ".*" (all
# parameters). `layer` None = that layer scaled to the model's depth, round(7/16·L); `update_layers`
# None = every parameter (a positive number k updates only the k blocks up to `layer`, as WMDP's RMU).
OPEN_UNLEARNING = {"layer": None, "steering_coeff": 2.0, "alpha": 1.0, "gamma": 1.0, "update_layers": None,
                   "seed": 0}


def decoder_layers(model):
    """The list of transformer blocks of a Llama-like, GPT-2 or GPT-NeoX model."""
    base = getattr(model, "model", None) or getattr(model, "transformer", None) or getattr(model, "gpt_neox")
    return getattr(base, "layers", None) or getattr(base, "h")


def default_layer(n_layers: int) -> int:
    """open-unlearning's layer 7 of 16, at the same relative depth of an n-layer model."""
    return min(n_layers - 1, round(7 * n_layers / 16))


def activation_loss(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """open-unlearning's `compute_activation_loss`: per sample, Σ over masked positions of the mean over
    the hidden dimension of (h − target)², divided by the sample's masked positions; mean over samples."""
    per_token = ((h - target) ** 2).mean(-1) * mask
    return (per_token.sum(1) / mask.sum(1).clamp(min=1)).mean()


class RMU(UnlearningMethod):
    """Representation Misdirection for Unlearning (Li et al. 2024, WMDP, arXiv:2403.03218) as
    open-unlearning's `rmu.py` writes it: at one layer's output, push the forget activations toward a
    fixed random vector c·u/‖u‖ (u ~ U[0,1)^d) and keep the retain activations equal to the frozen
    model's (EMBED_DIFF), both over answer tokens only (labels ≠ −100); total γ·forget + α·retain."""
    name = "rmu"
    description = "γ·MSE(forget activations, c·u) + α·MSE(retain activations, original's) at one layer, answer tokens"
    defaults = dict(OPEN_UNLEARNING)
    minimum = {"layer": 0, "update_layers": 1, "seed": 0}

    def __init__(self, model, reference, **hyper):
        super().__init__(model, reference, **hyper)
        n = len(decoder_layers(model))
        self.layer = self.hyper["layer"] if self.hyper["layer"] is not None else default_layer(n)
        if not 0 <= self.layer < n:
            raise ValueError(f"rmu layer {self.layer} is outside 0..{n - 1}")
        d = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
        gen = torch.Generator().manual_seed(int(self.hyper["seed"]))
        u = torch.rand(d, generator=gen)
        self.control = (u / u.norm() * self.steering_coeff).to(next(model.parameters()).device)

    def parameters(self):
        if self.update_layers is None:
            return self.model.parameters()
        blocks = decoder_layers(self.model)
        first = max(0, self.layer - int(self.update_layers) + 1)
        return [p for block in blocks[first: self.layer + 1] for p in block.parameters()]

    @classmethod
    def passes(cls, hyper, n_layers):
        """Forget and retain, and the reference's retain activations, counted up to the layer: the
        backward stops there, and it dominates (SmolLM2 on 2 CPU cores: 4.9 s per step measured, 4.7 s
        from this count)."""
        depth = ((hyper["layer"] if hyper.get("layer") is not None else default_layer(n_layers)) + 1) / n_layers
        return 2 * depth, depth

    def _activations(self, model, batch):
        captured = {}
        block = decoder_layers(model)[self.layer]
        handle = block.register_forward_hook(
            lambda mod, args, out: captured.update(h=out[0] if isinstance(out, tuple) else out))
        try:
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        finally:
            handle.remove()
        return captured["h"].float()

    def loss(self, forget, retain):
        forget_loss = activation_loss(self._activations(self.model, forget), self.control, forget.answer_mask.float())
        h_r = self._activations(self.model, retain)
        with torch.no_grad():
            ref_r = self._activations(self.reference, retain)
        return self.gamma * forget_loss + self.alpha * activation_loss(h_r, ref_r, retain.answer_mask.float())
