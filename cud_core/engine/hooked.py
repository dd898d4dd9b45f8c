"""The hooked forward: the model's own computation, node by node, with three optional taps.

- `capture`: write every forward node's output (input, each head's z_h·W_Oᵀ slice, each MLP) into a
  `[B, n_forward, T, d]` buffer.
- `on_grad(kind, layer, g)`: during backward, receive each downstream input's own gradient:
  `kind` "q"/"k"/"v" with g `[B, T, H, d]` (one residual copy per query head, GQA un-grouped),
  "mlp" and "logits" with g `[B, T, d]`. Per-head gradients come from the q/k/v projection
  gradients through the closed-form norm VJP, so the forward stays as cheap as the model's own.
- `override(kind, layer, value)`: replace a group's outputs ("heads" `[B, T, H, d]` or "mlp"); with
  `override_layer` set, attention is split into heads (for the override to see) at that layer only.
- `resid`: a list that receives the residual stream entering each layer (detached), so a later pass
  can start at layer l from it (`run(..., start=(l, resid[l]))`) instead of recomputing layers < l.
- `entries`: a list that receives the same residual streams still on the autograd graph, so a backward
  can start from them with given gradients (`torch.autograd.backward(entries, cotangents)`).
- `patch`: edge-level ablation. Each downstream input v gets the residual stream minus
  Σ_u w[u, v]·(out_u − baseline_u) (w = 1 removes edge u→v); used for faithfulness and for exact
  patching checks. Patched layers run one residual copy per head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from cud_core.engine.adapters import Adapter, norm_vjp
from cud_core.engine.graph import Graph


@dataclass
class Patch:
    weights: torch.Tensor   # [n_forward, n_backward]; 1 = this edge carries the baseline instead
    baseline: torch.Tensor  # [B, n_forward, T, d] baseline outputs of every forward node


@dataclass
class Taps:
    capture: torch.Tensor | None = None
    on_grad: Callable | None = None
    override: Callable | None = None
    override_layer: int | None = None
    patch: Patch | None = None
    resid: list | None = None
    entries: list | None = None


def run(adapter: Adapter, graph: Graph, input_ids: torch.Tensor, input_value: torch.Tensor | None = None,
        taps: Taps | None = None, start: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Forward pass returning the final residual stream [B, T, d] (before the final norm).

    `start = (l, x_l)`: begin at layer l with x_l as the residual entering it (layers < l are skipped;
    nothing is recorded for them and no patch may be given)."""
    taps = taps or Taps()
    B, T = input_ids.shape
    H, G = adapter.n_heads, adapter.n_heads // adapter.n_kv_heads
    first = 0
    if start is not None:
        if taps.patch is not None:
            raise ValueError("a patched forward cannot start mid-model")
        first, x = start
    else:
        x = adapter.embed(input_ids) if input_value is None else input_value
    running = None
    if taps.patch is not None:
        running = torch.zeros_like(taps.patch.baseline)
    record = _recorder(taps.capture, running)
    if start is None:
        record(slice(0, 1), x.unsqueeze(1))
    positions = torch.arange(T, device=input_ids.device)[None].expand(B, T)
    mask = _attention_mask(T, adapter.sliding_window(), input_ids.device)
    need_heads = taps.capture is not None or taps.patch is not None
    # hooks close over on_grad, never over taps: taps.entries holds graph tensors, and a hook that reaches
    # them is a cycle through C++ autograd nodes that Python's GC cannot see (the whole graph leaks)
    on_grad = taps.on_grad

    for l, lw in enumerate(adapter.layers):
        if l < first:
            continue
        if taps.resid is not None:
            taps.resid.append(x.detach())
        if taps.entries is not None:
            taps.entries.append(x)
        ls = graph.layer_start(l)
        qkv_cols = slice(graph.qkv_start(l), graph.mlp_index(l))
        corr = _correction(taps.patch, running, ls, qkv_cols, x.dtype)
        if corr is None:
            q, k, v = adapter.qkv(lw, lw.ln_attn(x))
            if G > 1:
                k, v = k.repeat_interleave(G, dim=2), v.repeat_interleave(G, dim=2)
            if on_grad is not None and q.requires_grad:
                _grad_hooks(on_grad, l, lw, x.detach(), q, k, v, G)
        else:  # one residual copy per q/k/v input
            n = lw.ln_attn(x.unsqueeze(2) - corr)
            q = _per_head(n[:, :, :H], lw.wq, lw.bq, 1)
            k = _per_head(n[:, :, H:2 * H], lw.wk, lw.bk, G)
            v = _per_head(n[:, :, 2 * H:], lw.wv, lw.bv, G)
        q, k = adapter.rope(q.transpose(1, 2), k.transpose(1, 2), positions)
        z = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), attn_mask=mask, is_causal=mask is None,
                                           scale=lw.scale).transpose(1, 2)  # [B, T, H, dh]
        if need_heads or (taps.override is not None and taps.override_layer in (None, l)):
            heads = torch.einsum("bthe,hde->bthd", z, lw.wo)
            if taps.override is not None:
                heads = taps.override("heads", l, heads)
            record(slice(ls, ls + H), heads.transpose(1, 2))
            attn = heads.sum(2)
        else:
            attn = torch.einsum("bthe,hde->btd", z, lw.wo)
        if lw.bo is not None:
            attn = attn + lw.bo

        m_in = x if graph.parallel else x + attn
        corr = _correction(taps.patch, running, ls + H, graph.mlp_index(l), x.dtype)
        if corr is not None:
            m_in = m_in - corr
        if on_grad is not None and m_in.requires_grad:
            m_in = m_in.view_as(m_in)  # its own autograd node: the hook sees only the MLP's gradient
            m_in.register_hook(lambda g, l=l: on_grad("mlp", l, g))
        m_out = lw.mlp(lw.ln_mlp(m_in))
        if taps.override is not None:
            m_out = taps.override("mlp", l, m_out)
        record(slice(ls + H, ls + H + 1), m_out.unsqueeze(1))
        x = x + attn + m_out

    corr = _correction(taps.patch, running, graph.n_forward, graph.logits_index, x.dtype)
    if corr is not None:
        x = x - corr
    if on_grad is not None and x.requires_grad:
        x = x.view_as(x)
        x.register_hook(lambda g: on_grad("logits", graph.n_layers, g))
    return x


def logits(adapter: Adapter, resid: torch.Tensor) -> torch.Tensor:
    return adapter.unembed(adapter.final_norm(resid))


def _recorder(capture, running):
    def record(rows: slice, value: torch.Tensor):  # value [B, rows, T, d]
        if capture is not None:
            capture[:, rows] = value.detach()
        if running is not None:
            running[:, rows] = value.detach()
    return record


def _attention_mask(T: int, window: int | None, device):
    if not window or T <= window:
        return None  # plain causal
    i = torch.arange(T, device=device)
    return (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)


def _correction(patch: Patch | None, running, limit: int, cols, dtype=torch.float32):
    """Σ_u w[u, v]·(out_u − baseline_u) over parents u < limit, per downstream column(s) v."""
    if patch is None:
        return None
    w = patch.weights[:limit, cols]
    if not bool(w.any()):
        return None
    diff = running[:, :limit] - patch.baseline[:, :limit]
    if w.dim() == 1:
        return torch.einsum("bftd,f->btd", diff, w.to(diff.dtype)).to(dtype)
    return torch.einsum("bftd,fc->btcd", diff, w.to(diff.dtype)).to(dtype)


def _per_head(n, w, b, group):
    """Per-head projection of per-head inputs n [B, T, H, d] with weights w [H_kv, dh, d]."""
    B, T, H, d = n.shape
    out = torch.einsum("btkgd,ked->btkge", n.reshape(B, T, H // group, group, d), w).reshape(B, T, H, -1)
    if b is not None:
        out = out + b.repeat_interleave(group, dim=0)
    return out


def _grad_hooks(on_grad, l, lw, x, q, k, v, group):
    """Turn q/k/v projection-output gradients into per-head residual-copy gradients."""
    def hook(kind, w):
        def fn(g):  # g [B, T, H, dh], pre-rotary
            B, T, H, dh = g.shape
            gn = torch.einsum("btkge,ked->btkgd", g.reshape(B, T, H // group_of[kind], group_of[kind], dh).float(),
                              w.float()).reshape(B, T, H, -1)
            on_grad(kind, l, norm_vjp(lw.ln_attn, x, gn))
        return fn
    group_of = {"q": 1, "k": group, "v": group}
    q.register_hook(hook("q", lw.wq))
    k.register_hook(hook("k", lw.wk))
    v.register_hook(hook("v", lw.wv))
