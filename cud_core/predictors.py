"""Baseline difficulty predictors that CUD is compared against (SPEC §6 validation).

- original answer NLL and extraction strength come from `metrics`;
- MRD: mean relative change of a sample's answer log-likelihood under small Gaussian weight noise;
- gradient norm: ‖∇θ answer NLL‖₂ of the sample in the original model;
- circuit depth: the depth centre of mass of the sample's circuit (from `circuits`).
"""
from __future__ import annotations

import copy

import torch

from .data import Sample
from .metrics import answer_token_logprobs, chunks, collate


@torch.no_grad()
def answer_loglik(model, tokenizer, samples: list[Sample], batch_size: int = 8) -> torch.Tensor:
    """Σ answer-token log-probs per sample [n]."""
    device = next(model.parameters()).device
    out = []
    for group in chunks(samples, batch_size):
        b = collate(tokenizer, group).to(device)
        logp, mask = answer_token_logprobs(model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits, b)
        out.append((logp * mask).sum(1).cpu())
    return torch.cat(out)


@torch.no_grad()
def mrd(model, tokenizer, samples: list[Sample], sigma: float = 0.05, draws: int = 4, seed: int = 0,
        batch_size: int = 8, progress=None) -> dict[str, float]:
    """E_ε |LL(θ+ε) − LL(θ)| / |LL(θ)|, ε per tensor ~ N(0, (σ·std(W))²); works on a copy.

    Meant as Memory Removal Difficulty (Feng et al., 2025, arXiv:2504.06658: the change of a sample's
    likelihood under random parameter perturbations, estimated by Monte Carlo). The paper's exact
    noise scale, draw count and normalisation are unverified here (docs/method.md §10; issue #10).
    `progress(fraction, message)` after each noise draw."""
    clean = answer_loglik(model, tokenizer, samples, batch_size)
    noisy = copy.deepcopy(model)
    originals = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    total = torch.zeros(len(samples))
    for d in range(draws):
        for p, p0 in zip(noisy.parameters(), originals):
            scale = sigma * (p0.float().std() if p0.numel() > 1 else p0.float().abs())
            noise = torch.randn(p0.shape, generator=gen) * scale
            p.copy_(p0 + noise.to(p0.device, p0.dtype))
        total += (answer_loglik(noisy, tokenizer, samples, batch_size) - clean).abs() / clean.abs().clamp(min=1e-6)
        if progress:
            progress((d + 1) / draws, f"noise draw {d + 1}/{draws}")
    return {s.id: float(v) for s, v in zip(samples, total / draws)}


def gradient_norms(model, tokenizer, samples: list[Sample], progress=None) -> dict[str, float]:
    """‖∇θ mean answer NLL‖₂ per sample (no .grad is left on the model); `progress` every 8 samples."""
    from .attribution import parameter_grads

    device = next(model.parameters()).device
    out = {}
    with parameter_grads(model, True) as params:
        for s in samples:
            b = collate(tokenizer, [s]).to(device)
            labels = b.input_ids.masked_fill(~b.answer_mask, -100)
            with torch.enable_grad():
                loss = model(input_ids=b.input_ids, labels=labels).loss
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            out[s.id] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
            if progress and (len(out) % 8 == 0 or len(out) == len(samples)):
                progress(len(out) / len(samples), f"{len(out)}/{len(samples)} samples")
    return out
