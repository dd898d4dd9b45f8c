"""Architecture adapters: a uniform, per-head view of a Hugging Face model's own weights.

Every supported family (Llama-like: llama, qwen2, mistral; gpt2; gpt_neox) is described by the same
pieces, which `hooked.py` runs:

    embed(ids)                       the `input` node's output (token + absolute position embedding)
    layer.ln_attn / layer.ln_mlp     the norm modules in front of attention / MLP
    layer.wq, wk, wv  [heads, d_head, d_model] and biases [heads, d_head]
    layer.wo          [heads, d_model, d_head] (head h writes z_h @ wo[h]ᵀ) and bias bo [d_model]
    layer.mlp         the MLP module (called on the normed input)
    rope(q, k)        rotary embedding on [B, heads, T, d_head] (identity for GPT-2)
    final_norm, unembed

Norm vector-Jacobian products are closed form (RMSNorm and LayerNorm), so the engine gets each
head's own input gradient without running the norm once per head.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cud_core.engine.graph import layout_of
from cud_core.engine.models import SUPPORTED_MODEL_TYPES


class UnsupportedModelError(ValueError):
    pass


@dataclass
class LayerWeights:
    ln_attn: torch.nn.Module
    ln_mlp: torch.nn.Module
    wq: torch.Tensor
    wk: torch.Tensor
    wv: torch.Tensor
    bq: torch.Tensor | None
    bk: torch.Tensor | None
    bv: torch.Tensor | None
    wo: torch.Tensor
    bo: torch.Tensor | None
    mlp: torch.nn.Module
    scale: float
    project: object = None  # n [B, T, d] -> q [B, T, H, dh], k, v [B, T, H_kv, dh] with the model's own modules


class Adapter:
    family: str

    def __init__(self, model):
        self.model = model
        self.config = model.config
        self.n_layers, self.n_heads, self.parallel = layout_of(model)
        self.layers: list[LayerWeights] = []

    @property
    def d_model(self) -> int:
        return self.layers[0].wq.shape[-1]

    @property
    def d_head(self) -> int:
        return self.layers[0].wq.shape[1]

    @property
    def n_kv_heads(self) -> int:
        return self.layers[0].wk.shape[0]

    @property
    def device(self):
        return self.layers[0].wq.device

    @property
    def dtype(self):
        return self.layers[0].wq.dtype

    def qkv(self, layer: LayerWeights, n: torch.Tensor):
        """Project normed input [B, T, d] to q [B, T, H, dh], k, v [B, T, H_kv, dh]."""
        return layer.project(n)

    rotary = None         # the model's rotary-embedding module (None: no rotary, as GPT-2)
    apply_rotary = None   # its family's apply_rotary_pos_emb

    def rope(self, q, k, positions):
        if self.rotary is None:
            return q, k
        cos, sin = self.rotary(q, positions)
        return self.apply_rotary(q, k, cos, sin)

    def sliding_window(self) -> int | None:
        return None

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(h)


def _heads(x: torch.Tensor, d_head: int) -> torch.Tensor:
    return x.view(*x.shape[:-1], -1, d_head)


class LlamaAdapter(Adapter):
    family = "llama"

    def __init__(self, model):
        super().__init__(model)
        base = model.model
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self.rotary, self.apply_rotary = base.rotary_emb, apply_rotary_pos_emb
        self.final_norm = base.norm
        self.embed_tokens = base.embed_tokens
        for block in base.layers:
            a = block.self_attn
            dh = a.head_dim
            heads = lambda lin: lin.weight.view(-1, dh, lin.weight.shape[-1])  # noqa: E731
            bias = lambda lin: None if lin.bias is None else lin.bias.view(-1, dh)  # noqa: E731
            wo = a.o_proj.weight.view(a.o_proj.weight.shape[0], -1, dh).transpose(0, 1)
            self.layers.append(LayerWeights(block.input_layernorm, block.post_attention_layernorm,
                                            heads(a.q_proj), heads(a.k_proj), heads(a.v_proj),
                                            bias(a.q_proj), bias(a.k_proj), bias(a.v_proj),
                                            wo, a.o_proj.bias, block.mlp, a.scaling,
                                            lambda n, a=a, dh=dh: (_heads(a.q_proj(n), dh), _heads(a.k_proj(n), dh),
                                                                   _heads(a.v_proj(n), dh))))

    def embed(self, ids):
        return self.embed_tokens(ids)

    def sliding_window(self):
        return getattr(self.config, "sliding_window", None) if self.config.model_type == "mistral" else None


class GPT2Adapter(Adapter):
    family = "gpt2"

    def __init__(self, model):
        super().__init__(model)
        base = model.transformer
        self.wte, self.wpe, self.final_norm = base.wte, base.wpe, base.ln_f
        cfg = self.config
        for i, block in enumerate(base.h):
            a = block.attn
            d, H = a.embed_dim, a.num_heads
            dh = d // H
            w, b = a.c_attn.weight, a.c_attn.bias  # Conv1D: x @ w + b, w [d, 3d]
            split = lambda j: w[:, j * d:(j + 1) * d].view(d, H, dh).permute(1, 2, 0)  # noqa: E731
            bsplit = lambda j: b[j * d:(j + 1) * d].view(H, dh)  # noqa: E731
            wo = a.c_proj.weight.view(H, dh, d).transpose(1, 2)  # [H, d, dh]
            scale = (1.0 / dh ** 0.5 if cfg.scale_attn_weights else 1.0)
            if cfg.scale_attn_by_inverse_layer_idx:
                scale /= float(i + 1)
            self.layers.append(LayerWeights(block.ln_1, block.ln_2, split(0), split(1), split(2),
                                            bsplit(0), bsplit(1), bsplit(2), wo, a.c_proj.bias, block.mlp, scale,
                                            lambda n, a=a, dh=dh: tuple(_heads(t, dh) for t in
                                                                        a.c_attn(n).split(a.split_size, dim=-1))))

    def embed(self, ids):
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.wte(ids) + self.wpe(positions)[None]


class GPTNeoXAdapter(Adapter):
    family = "gpt_neox"

    def __init__(self, model):
        super().__init__(model)
        base = model.gpt_neox
        from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

        self.embed_in, self.final_norm = base.embed_in, base.final_layer_norm
        self.rotary, self.apply_rotary = base.rotary_emb, apply_rotary_pos_emb
        for block in base.layers:
            a = block.attention
            d = a.query_key_value.weight.shape[1]
            H, dh = d // a.head_size, a.head_size
            w = a.query_key_value.weight.view(H, 3, dh, d)
            b = a.query_key_value.bias
            bias = (lambda j: b.view(H, 3, dh)[:, j]) if b is not None else (lambda j: None)
            wo = a.dense.weight.view(d, H, dh).transpose(0, 1)
            self.layers.append(LayerWeights(block.input_layernorm, block.post_attention_layernorm,
                                            w[:, 0], w[:, 1], w[:, 2], bias(0), bias(1), bias(2),
                                            wo, a.dense.bias, block.mlp, a.scaling,
                                            lambda n, a=a, H=H, dh=dh: _neox_qkv(a, n, H, dh)))

    def embed(self, ids):
        return self.embed_in(ids)



def _neox_qkv(attention, n, n_heads, d_head):
    # the fused projection is laid out per head: [q_h | k_h | v_h]
    out = attention.query_key_value(n).view(*n.shape[:-1], n_heads, 3, d_head)
    return out[..., 0, :], out[..., 1, :], out[..., 2, :]


ADAPTERS = {"llama": LlamaAdapter, "qwen2": LlamaAdapter, "mistral": LlamaAdapter,
            "gpt2": GPT2Adapter, "gpt_neox": GPTNeoXAdapter}


def adapter_for(model) -> Adapter:
    model_type = model.config.model_type
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(f"circuit extraction does not support {model_type!r} models; "
                                    f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return ADAPTERS[model_type](model)  # views of the live weights: cheap, never stale


# ----------------------------------------------------------------------------- norm VJPs

def norm_vjp(norm: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Jᵀg of `norm` at x, for a stack of cotangents: x [B, T, d], g [B, T, C, d] → [B, T, C, d].

    RMSNorm  y = w·x·r,  r = (mean x² + ε)^-½:     Jᵀg = r·u − x·r³·⟨x, u⟩/d,       u = w·g
    LayerNorm y = w·x̂ + b, x̂ = (x − μ)·s:        Jᵀg = s·(u − mean u − x̂·mean(u·x̂))
    """
    x = x.float().unsqueeze(2)
    d = x.shape[-1]
    if isinstance(norm, torch.nn.LayerNorm):
        u = g.float() * norm.weight.float()
        mu = x.mean(-1, keepdim=True)
        s = torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + norm.eps)
        xhat = (x - mu) * s
        return s * (u - u.mean(-1, keepdim=True) - xhat * (u * xhat).mean(-1, keepdim=True))
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)            # [B, T, 1, 1]
    # ⟨x, u⟩ = ⟨x·w, g⟩ as one matmul, then r·w·g − ⟨x, u⟩·(x·r³/d) as one batched rank-1 update: two
    # passes over the [B, T, C, d] stack instead of seven elementwise ones (this runs three times per
    # layer and pass)
    w = norm.weight.detach().float()
    B, T, C, _ = g.shape
    g = g.float()
    dot = torch.matmul(g, (x * w).transpose(-1, -2))                  # [B, T, C, 1]
    out = torch.mul(g, r * w, out=g.new_empty(B, T, C, d))  # contiguous whatever g's layout: viewable
    out.view(B * T, C, d).baddbmm_(dot.view(B * T, C, 1), (x * r.pow(3) / d).view(B * T, 1, d), alpha=-1)
    return out
