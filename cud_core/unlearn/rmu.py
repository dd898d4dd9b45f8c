import torch

from .base import UnlearningMethod


def decoder_layers(model):
    """The list of transformer blocks of a Llama-like, GPT-2 or GPT-NeoX model."""
    base = getattr(model, "model", None) or getattr(model, "transformer", None) or getattr(model, "gpt_neox")
    return getattr(base, "layers", None) or getattr(base, "h")


class RMU(UnlearningMethod):
    """Representation Misdirection (Li et al. 2024): at one layer, push forget activations toward a
    fixed random direction scaled by c and keep retain activations equal to the frozen model's;
    only the few layers up to that one are updated."""
    name = "rmu"
    description = "forget activations → c·u at one layer, retain activations kept (MSE); few layers updated"
    defaults = {"layer": None, "steering_coeff": 20.0, "alpha": 100.0, "update_layers": 3, "seed": 0}
    minimum = {"layer": 0, "update_layers": 1, "seed": 0}

    def __init__(self, model, reference, **hyper):
        super().__init__(model, reference, **hyper)
        n = len(decoder_layers(model))
        self.layer = self.hyper["layer"] if self.hyper["layer"] is not None else max(0, n // 3)
        if not 0 <= self.layer < n:
            raise ValueError(f"rmu layer {self.layer} is outside 0..{n - 1}")
        d = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
        gen = torch.Generator().manual_seed(int(self.hyper["seed"]))
        u = torch.rand(d, generator=gen)
        self.control = (u / u.norm() * self.steering_coeff).to(next(model.parameters()).device)

    def parameters(self):
        blocks = decoder_layers(self.model)
        first = max(0, self.layer - int(self.update_layers) + 1)
        return [p for block in blocks[first: self.layer + 1] for p in block.parameters()]

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
        mask_f = forget.attention_mask.bool()
        h_f = self._activations(self.model, forget)[mask_f]
        forget_loss = ((h_f - self.control) ** 2).mean()
        mask_r = retain.attention_mask.bool()
        h_r = self._activations(self.model, retain)[mask_r]
        with torch.no_grad():
            ref_r = self._activations(self.reference, retain)[mask_r]
        return forget_loss + self.alpha * ((h_r - ref_r) ** 2).mean()
