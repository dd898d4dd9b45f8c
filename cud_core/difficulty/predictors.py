"""Baseline difficulty predictors that CUD is compared against in the validation.

- original answer NLL and extraction strength come from `metrics`;
- MRD: Memory Removal Difficulty, the relative change of a sample's token log-probs under small Gaussian
  weight noise, as its authors' code computes it (over the whole formatted sequence), and the same
  computed over the answer tokens alone ("mrd_answer", not its authors' definition: a second variant);
- gradient norm: ‖∇θ answer NLL‖₂ of the sample in the original model;
- circuit depth: the depth centre of mass of the sample's circuit (from `circuits`);
- hidden states: per layer, the residual stream averaged over the answer tokens (the features of the
  representation baseline, `representation`).
"""
from __future__ import annotations

import copy

import torch

from cud_core.data.samples import Sample
from cud_core.engine.attribution import parameter_grads
from cud_core.engine.memory import token_lengths
from cud_core.engine.metrics import chunks, collate

# MRD as the paper's released code computes it (see `mrd`); stored with a calibration's predictors, so
# a calibration whose MRD was computed otherwise recomputes it when rerun.
MRD_DEFINITION = "feng2025-code: |mean_k sum_t (l_t - l_t^k) / l_t|, capped at 2; all tokens; sigma 1e-5 absolute"
MRD_ANSWER_DEFINITION = MRD_DEFINITION.replace("all tokens", "answer tokens only")
HIDDEN_DEFINITION = "hidden_states[1:] (each block's output; the last after the final norm), mean over answer tokens"
MRD_SIGMA, MRD_DRAWS, MRD_CAP = 1e-5, 10, 2.0


def mrd_from_logprobs(clean: torch.Tensor, noisy: torch.Tensor, mask: torch.Tensor,
                      cap: float = MRD_CAP) -> torch.Tensor:
    """MRD per sample [B] from token log-probs: clean [B, T], noisy [K, B, T] (one row per noise draw),
    mask [B, T] (tokens that count). MRD = min(|(1/K) Σ_k Σ_t (ℓ_t − ℓ_t^(k)) / ℓ_t|, cap): the signed
    relative change of each token's log-prob, summed over the sequence, averaged over the draws, then its
    magnitude; tokens with ℓ_t = 0 are skipped, as in the authors' code."""
    valid = mask.bool() & (clean != 0)
    rel = (clean - noisy) / torch.where(valid, clean, torch.ones_like(clean)) * valid
    return rel.sum(-1).mean(0).abs().clamp(max=cap)


@torch.no_grad()
def token_logprobs(model, tokenizer, samples: list[Sample], batch_size: int = 8
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(x_t | x_<t) of every token after the first [n, T−1] (right-padded, float32, 0 on padding),
    the mask of real tokens and the mask of answer tokens."""
    device = next(model.parameters()).device
    width = max(token_lengths(tokenizer, samples))
    logp = torch.zeros(len(samples), width - 1)
    mask = torch.zeros(len(samples), width - 1, dtype=torch.bool)
    answer = torch.zeros_like(mask)
    row = 0
    for group in chunks(samples, batch_size):
        b = collate(tokenizer, group).to(device)
        lp = torch.log_softmax(model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1].float(), -1)
        lp = lp.gather(-1, b.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        t = lp.shape[1]
        logp[row: row + len(group), :t] = lp.cpu()
        mask[row: row + len(group), :t] = b.attention_mask[:, 1:].bool().cpu()
        answer[row: row + len(group), :t] = b.answer_mask[:, 1:].bool().cpu()
        row += len(group)
    return logp * mask, mask, answer


@torch.no_grad()
def mrd(model, tokenizer, samples: list[Sample], sigma: float = MRD_SIGMA, draws: int = MRD_DRAWS, seed: int = 0,
        batch_size: int = 8, cap: float = MRD_CAP, progress=None) -> dict[str, dict[str, float]]:
    """Memory Removal Difficulty (Feng et al., 2025, arXiv:2504.06658) as the authors' released code
    computes it (github.com/QDRhhhh/MRD, `src/unlearn/base.py`: `compute_MRD` and the MRD loop of their
    trainer; the paper's own text could not be read here; docs/method.md §10): K draws of Gaussian noise
    N(0, σ²) added to every parameter (σ absolute, 1e-5 in their code), ℓ_t the log-prob of each token of
    the whole formatted sequence (prompt, template and answer: their code scores the whole input), then
    `mrd_from_logprobs` (capped at 2, as their code does). K = 10 as in their trainer (their stand-alone
    script uses 5). Their weighted sampler gives samples at or above the median MRD weight 0.6 and the
    rest 0.4, and the paper says it favours easily forgotten samples, so a high MRD is read as *easy*
    (`validation.analysis.EXPECTED_DIRECTION`). Works on a copy; draw k uses a CPU generator seeded
    `seed + k`. `progress(fraction, message)` after each draw.

    Returns {"mrd": the authors' definition, "mrd_answer": the same sum over the answer tokens alone} from
    the same noise draws: on a chat-formatted sample the template tokens dominate the whole-sequence sum,
    so the second variant (ours, not the authors') asks what the noise does to the answer itself."""
    clean, mask, answer = token_logprobs(model, tokenizer, samples, batch_size)
    noisy_model = copy.deepcopy(model)
    noisy = torch.zeros((draws, *clean.shape))
    for k in range(draws):
        gen = torch.Generator(device="cpu").manual_seed(seed + k)
        for p, p0 in zip(noisy_model.parameters(), model.parameters()):
            noise = torch.randn(p0.shape, generator=gen) * sigma
            p.copy_(p0 + noise.to(p0.device, p0.dtype))
        noisy[k] = token_logprobs(noisy_model, tokenizer, samples, batch_size)[0]
        if progress:
            progress((k + 1) / draws, f"noise draw {k + 1}/{draws}")
    return {name: {s.id: float(v) for s, v in zip(samples, mrd_from_logprobs(clean, noisy, m, cap))}
            for name, m in (("mrd", mask), ("mrd_answer", answer))}


@torch.no_grad()
def hidden_state_means(model, tokenizer, samples: list[Sample], batch_size: int = 8,
                       progress=None) -> dict[str, torch.Tensor]:
    """Sample id -> [layers, d_model] float32: per layer, the residual stream averaged over the sample's
    answer tokens (`HIDDEN_DEFINITION`: HF `hidden_states[1:]`, one per block; the embeddings left out)."""
    device = next(model.parameters()).device
    out = {}
    for group in chunks(samples, batch_size):
        b = collate(tokenizer, group).to(device)
        hs = model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True).hidden_states
        h = torch.stack([x.float() for x in hs[1:]], 1)                  # [B, L, T, d]
        m = b.answer_mask.float()[:, None, :, None]                        # [B, 1, T, 1]
        means = (h * m).sum(2) / m.sum(2).clamp(min=1)
        out.update({s.id: v.cpu() for s, v in zip(group, means)})
        if progress:
            progress(len(out) / len(samples), f"{len(out)}/{len(samples)} samples")
    return out


def gradient_norms(model, tokenizer, samples: list[Sample], progress=None) -> dict[str, float]:
    """‖∇θ mean answer NLL‖₂ per sample (no .grad is left on the model); `progress` every 8 samples."""
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
