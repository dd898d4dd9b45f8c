"""Edge attribution: EAP, EAP-IG (inputs) and EAP-IG (activations, two variants) on the hooked
forward.

score(u → v) = Σ_t ⟨Δ_u[t], ḡ_v[t]⟩, Δ_u = u's clean output − its baseline output, ḡ_v the gradient of
the metric with respect to v's own input copy (at the clean input for `eap`, averaged over the
interpolation points for the IG variants). Scores are accumulated inside the backward hooks, one
batched matmul per hook, so no per-node gradient is ever stored.

EAP: Syed, Rager & Conmy (2023), arXiv:2310.10348. EAP-IG: Hanna, Pezzelle & Belinkov (2024),
arXiv:2403.17806, reference code github.com/hannamw/EAP-IG (`eap/attribute.py`). With G = 2L + 1
layer groups g (the input, each layer's attention heads, each MLP), m steps and pass (g, k) the
forward in which only g's outputs are set to baseline + (k/m)·Δ:

- `eap-ig-activations` (the textbook definition): the rows of g's nodes get the gradients of g's
  own passes only, score(u ∈ g → v) = Σ_t ⟨Δ_u, (1/m) Σ_{k=1..m} ∂M/∂in_v |_(g,k)⟩;
- `eap-ig-activations-peer` (as the reference code's `get_scores_ig_activations` aggregates): every
  pass adds its gradients into *all* edges, score(u → v) = Σ_t ⟨Δ_u, (1/(G·m)) Σ_g Σ_k ∂M/∂in_v |_(g,k)⟩.

In pass (g, k) g's outputs are constants, so no gradient flows through g to the inputs upstream of
it. For the textbook variant that does not matter (g's rows only need gradients downstream of g), so
the α = 1 passes of all groups are one clean pass: 1 + G·(m − 1) passes, and a pass of layer l's
heads or MLP starts at layer l from the clean pass's residual stream (layers < l are clean and their
gradients unused), which halves the cost on average. The peer variant adds every pass into every
edge, so its G passes at α = 1 differ and all run (G·m passes); its passes also start at their layer,
and what each would have added below it comes from one extra backward (`_peer`).

Several metrics can share the passes (`attribute_metrics`): each is a function of the mean answer
log-prob, so its gradient is the differentiated metric's times a per-sample factor.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from cud_core.data.samples import Sample
from cud_core.engine import hooked
from cud_core.engine.adapters import adapter_for
from cud_core.engine.graph import Graph
from cud_core.engine.metrics import Batch, chunks, collate

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "eap-ig-activations-peer")
BASELINES = ("zero", "mean")
METRICS = ("logprob", "kl")


def attribute(model, tokenizer, samples: list[Sample], method: str = "eap-ig-inputs", steps: int = 5,
              baseline: str = "zero", metric: str = "logprob", batch_size: int = 8, graph: Graph | None = None,
              progress=None, means: "MeanOutputs | None" = None) -> torch.Tensor:
    """Edge scores `[n_samples, n_forward, n_backward]` (float32, zero outside real edges).

    `means` (baseline "mean"): node outputs averaged over a reference dataset; by default over `samples`.
    """
    return attribute_metrics(model, tokenizer, samples, method, steps, baseline, (metric,), batch_size, graph,
                             progress, means)[metric]


def attribute_metrics(model, tokenizer, samples: list[Sample], method: str = "eap-ig-inputs", steps: int = 5,
                      baseline: str = "zero", metrics: tuple[str, ...] = ("logprob",), batch_size: int = 8,
                      graph: Graph | None = None, progress=None,
                      means: "MeanOutputs | None" = None) -> dict[str, torch.Tensor]:
    """`attribute` under several metrics from the same passes: metric → edge scores. Both metrics are
    functions of the mean answer log-prob, so one backward per pass serves all (`_dM_dlogp`):
    `logprob`'s scores are exactly `attribute`'s, `kl`'s equal to float rounding."""
    if not metrics or len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics must be distinct and at least one (got {metrics!r})")
    for metric in metrics:
        check_arguments(method, steps, baseline, metric, batch_size)
    if not samples:
        raise ValueError("no samples to attribute")
    graph = graph or Graph.from_model(model)
    adapter = adapter_for(model)
    if baseline == "mean" and means is None:
        means = mean_outputs(model, tokenizer, samples, graph, batch_size)
    elif baseline == "zero":
        means = None
    out = {m: torch.zeros(len(samples), graph.n_forward, graph.n_backward) for m in metrics}
    mask = graph.real_edge_mask
    done = 0
    with frozen(model):
        for group in chunks(samples, batch_size):
            batch = collate(tokenizer, group).to(adapter.device)
            base = _baseline_outputs(adapter, graph, batch, means)
            scores = _attribute_batch(adapter, graph, batch, base, method, steps, tuple(metrics))
            for m in metrics:
                out[m][done: done + len(group)] = scores[m].cpu() * mask
            done += len(group)
            if progress:
                progress(done / len(samples), f"attributed {done}/{len(samples)} samples")
    return out


def check_arguments(method: str, steps: int, baseline: str, metric: str, batch_size: int) -> None:
    """ValueError naming the first unusable attribution setting (before any model work)."""
    for name, value, allowed in (("method", method, METHODS), ("baseline", baseline, BASELINES),
                                 ("metric", metric, METRICS)):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be at least 1 (got {steps}, {batch_size})")


@contextmanager
def parameter_grads(model, enabled: bool):
    """Every parameter's requires_grad set to `enabled` for the block, each one's flag restored after."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(enabled)
    try:
        yield params
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def frozen(model):
    """Only activation gradients are needed: switch off parameter gradients (restored after)."""
    return parameter_grads(model, False)


# ----------------------------------------------------------------------------- metric

def metric_per_sample(adapter, resid: torch.Tensor, batch: Batch, metric: str,
                      p_clean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, mean answer log-prob) per sample [B]. M is the mean answer-token log-prob (`logprob`) or
    exp(p_c)·(p_c − p) with p = exp(mean log-prob) (`kl`; p_c defaults to this run's own p)."""
    pred = batch.answer_mask[:, 1:]                   # position t predicts token t+1
    rows = pred.nonzero()[:, 0]
    logits = hooked.logits(adapter, resid[:, :-1][pred]).float()
    target = batch.input_ids[:, 1:][pred]
    logp = torch.log_softmax(logits, -1).gather(-1, target[:, None]).squeeze(-1)
    n = pred.sum(1).clamp(min=1)
    mean_logp = torch.zeros(len(n), device=logp.device).index_add(0, rows, logp) / n
    if metric == "logprob":
        return mean_logp, mean_logp
    p = mean_logp.exp()
    pc = p.detach() if p_clean is None else p_clean
    return torch.exp(pc) * (pc - p), mean_logp


# ----------------------------------------------------------------------------- baselines

def _baseline_outputs(adapter, graph, batch, means) -> torch.Tensor:
    """Every forward node's baseline output [B, F, T, d] (float32)."""
    B, T = batch.input_ids.shape
    if means is not None:
        offsets = _offsets(batch)
        return means.take(offsets).permute(0, 2, 1, 3).contiguous()
    buf = torch.zeros(B, graph.n_forward, T, adapter.d_model, device=adapter.device)
    zero = torch.zeros(B, T, adapter.d_model, device=adapter.device, dtype=adapter.dtype)
    with torch.no_grad():
        hooked.run(adapter, graph, batch.input_ids, input_value=zero, taps=hooked.Taps(capture=buf))
    return buf


def _offsets(batch: Batch) -> torch.Tensor:
    """Position relative to the end of the prompt (0 = first answer token), [B, T]."""
    prompt_len = batch.answer_mask.float().argmax(1)
    return torch.arange(batch.input_ids.shape[1], device=prompt_len.device)[None] - prompt_len[:, None]


class MeanOutputs:
    """Each node's output averaged over a dataset, per offset from the end of the prompt."""

    def __init__(self, sums: dict[int, torch.Tensor], counts: dict[int, int]):
        self.offsets = torch.tensor(sorted(sums))
        self.table = torch.stack([sums[o] / counts[o] for o in sorted(sums)])  # [n_offsets, F, d]

    def take(self, offsets: torch.Tensor) -> torch.Tensor:
        """[B, T, F, d] for a matrix of offsets (the nearest known offset where one is missing)."""
        flat = offsets.flatten().cpu()
        nearest = (flat[:, None] - self.offsets[None]).abs().argmin(1)
        return self.table[nearest].view(*offsets.shape, *self.table.shape[1:]).to(offsets.device)


def mean_outputs(model, tokenizer, samples, graph, batch_size=8) -> MeanOutputs:
    adapter = adapter_for(model)
    sums, counts = {}, {}
    with torch.no_grad():
        for group in chunks(samples, batch_size):
            batch = collate(tokenizer, group).to(adapter.device)
            B, T = batch.input_ids.shape
            buf = torch.zeros(B, graph.n_forward, T, adapter.d_model, device=adapter.device)
            hooked.run(adapter, graph, batch.input_ids, taps=hooked.Taps(capture=buf))
            offsets, real = _offsets(batch), batch.attention_mask.bool()
            for o in offsets[real].unique().tolist():
                where = real & (offsets == o)                      # [B, T]
                total = buf.permute(0, 2, 1, 3)[where].sum(0)       # [F, d]
                sums[o] = sums.get(o, 0) + total.cpu()
                counts[o] = counts.get(o, 0) + int(where.sum())
    return MeanOutputs(sums, counts)


# ----------------------------------------------------------------------------- one batch

class _GradSum:
    """Backward-hook target: per metric, a weighted running sum of every downstream input's gradient,
    [B, n_backward, T, d]. Scores are then one batched matmul per layer with Δ (`scores_from`), so
    the expensive contraction happens once per batch, not once per interpolation step.

    Each backward differentiates one metric (`_Passes.differentiated`); the others' gradients are the
    same tensor times a per-sample factor (`_dM_dlogp`), set in `scale` before each backward (None: 1)."""

    def __init__(self, graph: Graph, B: int, T: int, d: int, device, metrics=("logprob",)):
        self.graph = graph
        self.sums = {m: torch.zeros(B, graph.n_backward, T, d, device=device) for m in metrics}
        self.weight = 1.0
        self.scale: dict[str, torch.Tensor | None] = {m: None for m in metrics}
        self.active = list(metrics)

    def __call__(self, kind: str, layer: int, g: torch.Tensor):
        G = self.graph
        if kind == "logits":
            start, n = G.logits_index, 1
        elif kind == "mlp":
            start, n = G.mlp_index(layer), 1
        else:
            start, n = G.qkv_start(layer) + "qkv".index(kind) * G.n_heads, G.n_heads
        g = (g.float() if g.dim() == 4 else g.float().unsqueeze(2)).transpose(1, 2)
        for m in self.active:
            total, scale = self.sums[m], self.scale[m]
            if scale is None:
                total[:, start: start + n].add_(g, alpha=self.weight)
            else:
                total[:, start: start + n].add_(g * scale.view(-1, 1, 1, 1), alpha=self.weight)

    def reset(self, first_column: int = 0):
        """Zero the sums from `first_column` on (a pass starting at layer l writes nothing before l)."""
        for total in self.sums.values():
            total[:, first_column:].zero_()


def scores_from(graph: Graph, delta: torch.Tensor, grads: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
    """score[b, u, v] = Σ_t ⟨delta[b, u, t], grads[b, v, t]⟩ for the upstream rows given, computed
    layer by layer over real parents only. Entries outside real edges are left as garbage or zero;
    callers multiply by `real_edge_mask`."""
    B, F, T, d = delta.shape
    rows = rows or slice(0, F)
    scores = torch.zeros(B, F, graph.n_backward, device=delta.device)
    # one block of columns per layer (q, k, v inputs and the MLP), then the logits
    blocks = [(graph.qkv_start(l), graph.mlp_index(l) + 1, graph.layer_start(l) + graph.n_heads)
              for l in range(graph.n_layers)] + [(graph.logits_index, graph.n_backward, F)]
    flat_grads = grads.reshape(B, graph.n_backward, T * d)
    for c0, c1, limit in blocks:
        r0, r1 = rows.start, min(rows.stop, limit)
        if r0 >= r1:
            continue
        up = delta[:, r0:r1].reshape(B, r1 - r0, T * d)
        scores[:, r0:r1, c0:c1] = torch.bmm(up, flat_grads[:, c0:c1].transpose(1, 2))
    return scores


def _dM_dlogp(metric: str, mean_logp: torch.Tensor, p_clean: torch.Tensor | None) -> torch.Tensor:
    """dM/d(mean answer log-prob) per sample: 1 for `logprob`; −exp(p_c)·p for `kl` (M = exp(p_c)·(p_c − p),
    p = exp(mean log-prob)). Every metric is a function of the mean log-prob alone, so its gradient is
    the log-prob gradient times this factor."""
    if metric == "logprob":
        return torch.ones_like(mean_logp)
    p = mean_logp.exp()
    pc = p if p_clean is None else p_clean
    return -torch.exp(pc) * p


class _Passes:
    """One batch's forward+backward passes: one metric is differentiated (`logprob` when asked for,
    whose factor for the others, −exp(p_c)·p, is bounded; the other way round it would be its
    reciprocal), the others follow from it (`_GradSum`)."""

    def __init__(self, adapter, graph, batch, metrics, grads):
        self.adapter, self.graph, self.batch, self.metrics, self.grads = adapter, graph, batch, metrics, grads
        self.differentiated = "logprob" if "logprob" in metrics else metrics[0]
        self.p_clean = None

    def backward_at(self, input_value, capture=None, override=None, start=None, resid=None, override_layer=None):
        """A pass; returns (mean answer log-prob [B], ∂M/∂(residual at `start`) of the differentiated
        metric, or None)."""
        x0 = input_value.detach().requires_grad_(True)
        if start is not None:
            start = (start[0], start[1].detach().requires_grad_(True))
        taps = hooked.Taps(capture=capture, on_grad=self.grads, override=override, resid=resid,
                           override_layer=override_layer)
        with torch.enable_grad():
            resid = hooked.run(self.adapter, self.graph, self.batch.input_ids, input_value=x0, taps=taps, start=start)
            m, mean_logp = metric_per_sample(self.adapter, resid, self.batch, self.differentiated, self.p_clean)
            self.set_scale(mean_logp.detach())
            m.sum().backward()
        return mean_logp.detach(), (None if start is None else start[1].grad)

    def set_scale(self, mean_logp):
        own = _dM_dlogp(self.differentiated, mean_logp, self.p_clean)
        for other in self.metrics:
            if other != self.differentiated:
                self.grads.scale[other] = _dM_dlogp(other, mean_logp, self.p_clean) / own


def _attribute_batch(adapter, graph, batch, base, method, steps, metrics) -> dict[str, torch.Tensor]:
    B, T = batch.input_ids.shape
    clean = torch.zeros_like(base)
    grads = _GradSum(graph, B, T, adapter.d_model, adapter.device, metrics)
    passes = _Passes(adapter, graph, batch, metrics, grads)
    emb = adapter.embed(batch.input_ids).detach()
    base_in = base[:, 0].to(emb.dtype)

    if method == "eap-ig-activations-peer":
        return _peer(passes, graph, batch, base, base_in, emb, clean, steps)
    # the clean pass (α = 1) comes first: it captures the clean outputs and, for `kl`, p_clean
    grads.weight = 1.0 / (1 if method == "eap" else steps)
    clean_resid = [] if method == "eap-ig-activations" else None
    passes.p_clean = passes.backward_at(emb, capture=clean, resid=clean_resid)[0].exp()
    delta = clean.sub_(base)
    if method != "eap-ig-activations":
        if method == "eap-ig-inputs":
            for k in range(1, steps):
                passes.backward_at(base_in + (k / steps) * (emb - base_in))
        return {m: scores_from(graph, delta, grads.sums[m]) for m in metrics}
    # eap-ig-activations: α = 1 is shared by all groups; the other steps interpolate one group at a time
    scores = {m: scores_from(graph, delta, grads.sums[m]) for m in metrics}
    for rows, kind, layer in _groups(graph):
        if steps == 1:
            break
        grads.reset(0 if kind == "input" else graph.qkv_start(layer))  # scores_from(rows) reads no column before
        for k in range(1, steps):
            _pass_at(passes, kind, layer, base, base_in, emb, delta, rows, k / steps, clean_resid)
        for m in metrics:
            scores[m][:, rows] += scores_from(graph, delta, grads.sums[m], rows)[:, rows]
    return scores


def _peer(passes, graph, batch, base, base_in, emb, clean, steps) -> dict[str, torch.Tensor]:
    """The reference aggregation: every pass (g, k), α = 1 included, adds into every edge.

    A pass of layer l's heads or MLP starts at layer l from the clean residual stream x_l (layers < l
    are clean in it). Below l its gradients are the clean network's backward of c = ∂M/∂x_l, a linear
    map that is the same for every pass, so they are not taken per pass: each pass's c is added to C_l,
    and one backward of the clean forward from all the x_l at once, with gradients C_l, adds the
    passes' gradients below their layers: (L + 2)·m full-pass equivalents, a clean forward, and one
    forward with a backward per metric, instead of 1 + (2L + 1)·m full passes."""
    adapter, grads, metrics = passes.adapter, passes.grads, passes.metrics
    clean_resid = []
    with torch.no_grad():
        resid = hooked.run(adapter, graph, batch.input_ids, input_value=emb,
                           taps=hooked.Taps(capture=clean, resid=clean_resid))
        passes.p_clean = metric_per_sample(adapter, resid, batch, "logprob")[1].exp()
    delta = clean.sub_(base)
    groups = list(_groups(graph))
    grads.weight = 1.0 / (len(groups) * steps)
    cot = {m: [torch.zeros_like(x, dtype=torch.float32) for x in clean_resid] for m in metrics}
    for rows, kind, layer in groups:
        for k in range(1, steps + 1):
            c = _pass_at(passes, kind, layer, base, base_in, emb, delta, rows, k / steps, clean_resid)
            if c is None:
                continue
            for m in metrics:
                scale = grads.scale[m]
                cot[m][layer].add_(c.float() if scale is None else c.float() * scale.view(-1, 1, 1))
    entries = []  # the passes' gradients below their own layers, one backward per metric
    with torch.enable_grad():
        hooked.run(adapter, graph, batch.input_ids, input_value=emb.detach().requires_grad_(True),
                   taps=hooked.Taps(on_grad=grads, entries=entries))
        for i, m in enumerate(metrics):
            grads.active, grads.scale[m] = [m], None
            torch.autograd.backward(entries[1:], [cot[m][l].to(x.dtype) for l, x in enumerate(entries) if l > 0],
                                    retain_graph=i < len(metrics) - 1)
    return {m: scores_from(graph, delta, grads.sums[m]) for m in metrics}


def _pass_at(passes, kind, layer, base, base_in, emb, delta, rows, alpha, clean_resid=None):
    """One interpolated pass: group (kind, layer)'s outputs at baseline + α·Δ, everything else clean.
    With `clean_resid` (the residual entering each layer in the clean pass) it starts at `layer` and
    returns ∂M/∂x_layer."""
    if kind == "input":
        return passes.backward_at(base_in + alpha * (emb - base_in))[1]
    start = None if clean_resid is None else (layer, clean_resid[layer])
    return passes.backward_at(emb, override=_interpolate(kind, layer, base, delta, rows, alpha), start=start,
                              override_layer=layer)[1]


def _groups(graph: Graph):
    """The node groups interpolated in turn by eap-ig-activations: input, then per layer heads, MLP."""
    yield slice(0, 1), "input", -1
    for l in range(graph.n_layers):
        ls = graph.layer_start(l)
        yield slice(ls, ls + graph.n_heads), "heads", l
        yield slice(ls + graph.n_heads, ls + graph.n_heads + 1), "mlp", l


def _interpolate(kind, layer, base, delta, rows, alpha):
    def override(k, l, value):
        if k != kind or l != layer:
            return value
        new = (base[:, rows] + alpha * delta[:, rows]).to(value.dtype)  # [B, n, T, d]
        return new.transpose(1, 2) if k == "heads" else new[:, 0]
    return override
