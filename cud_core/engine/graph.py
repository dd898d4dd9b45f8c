"""The computational graph of a transformer: nodes, edges and their dense layout.

Forward (upstream) nodes write to the residual stream: `input, a0.h0 … a0.h{H-1}, m0, a1.h0, …`.
Backward (downstream) nodes read it: per layer `a{l}.h*<q>`, `a{l}.h*<k>`, `a{l}.h*<v>`, `m{l}`,
and `logits` last. Edge scores live in dense `[n_forward, n_backward]` tensors; `real_edge_mask`
says which entries are real edges (the parent writes before the child reads).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

PARALLEL_TYPES = ("gpt_neox",)


def layout_of(model) -> tuple[int, int, bool]:
    """(layers, query heads, parallel attention+MLP) from a Hugging Face config."""
    cfg = model.config if hasattr(model, "config") else model
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    parallel = cfg.model_type in PARALLEL_TYPES and bool(getattr(cfg, "use_parallel_residual", True))
    return int(layers), int(heads), parallel


@dataclass
class Graph:
    n_layers: int
    n_heads: int
    parallel: bool = False
    forward_names: list[str] = field(init=False)
    backward_names: list[str] = field(init=False)
    real_edge_mask: torch.Tensor = field(init=False)

    def __post_init__(self):
        L, H = self.n_layers, self.n_heads
        self.forward_names = ["input"] + [n for l in range(L) for n in [f"a{l}.h{h}" for h in range(H)] + [f"m{l}"]]
        self.backward_names = [n for l in range(L) for n in
                               [f"a{l}.h{h}<{c}>" for c in "qkv" for h in range(H)] + [f"m{l}"]] + ["logits"]
        mask = torch.zeros(self.n_forward, self.n_backward, dtype=torch.bool)
        for l in range(L):
            mask[: self.layer_start(l), self.qkv_start(l): self.mlp_index(l)] = True
            mask[: self.layer_start(l) + (0 if self.parallel else H), self.mlp_index(l)] = True
        mask[:, -1] = True
        self.real_edge_mask = mask

    @classmethod
    def from_model(cls, model) -> "Graph":
        return cls(*layout_of(model))

    # ---------------------------------------------------------------- sizes and indices
    @property
    def n_forward(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_backward(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1) + 1

    @property
    def n_edges(self) -> int:
        return int(self.real_edge_mask.sum())

    def layer_start(self, layer: int) -> int:
        """Forward index of `a{layer}.h0`; everything before it is upstream of layer `layer`."""
        return 1 + layer * (self.n_heads + 1)

    def head_index(self, layer: int, head: int) -> int:
        return self.layer_start(layer) + head

    def mlp_forward_index(self, layer: int) -> int:
        return self.layer_start(layer) + self.n_heads

    def qkv_start(self, layer: int) -> int:
        """Backward index of `a{layer}.h0<q>`; q, k, v blocks of n_heads follow."""
        return layer * (3 * self.n_heads + 1)

    def mlp_index(self, layer: int) -> int:
        return self.qkv_start(layer) + 3 * self.n_heads

    @property
    def logits_index(self) -> int:
        return self.n_backward - 1

    def forward_layer(self, index: int) -> int:
        """Layer of a forward node; the input node is layer −1."""
        return -1 if index == 0 else (index - 1) // (self.n_heads + 1)

    def backward_layer(self, index: int) -> int:
        """Layer of a backward node; logits are layer n_layers."""
        return self.n_layers if index == self.logits_index else index // (3 * self.n_heads + 1)

    def edge_name(self, f: int, b: int) -> str:
        return f"{self.forward_names[f]}->{self.backward_names[b]}"

    def edges(self) -> list[tuple[int, int]]:
        return [tuple(e) for e in self.real_edge_mask.nonzero().tolist()]
