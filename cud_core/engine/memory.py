"""Peak-memory estimates for scoring and unlearning, and a guard that lowers a batch that would not fit.

The estimates are computed from the model's dimensions before any work, so a run can be refused or
its batch lowered up front instead of being killed by the kernel half-way:

    longest = longest_sequence(lm.tokenizer, samples)
    batch, note = fit_batch_size(lambda b: estimate_scoring_peak(lm.model, longest, b, method, steps),
                                 batch_size, available_memory(lm.device))
    if note: report(note)            # "batch size 32 would need about 9.9 GB but 6.0 GB is available; ..."

What one attribution batch of B samples of T tokens holds at once (see attribution.py, hooked.py):

- three float32 buffers of one residual-width vector per (node, token): the baseline outputs and the
  clean outputs (becoming Δ) of the n_forward nodes, and the summed input gradients of the
  n_backward nodes: 4·d·(2·n_forward + n_backward) bytes per token. This is most of it: 3.3 MB per
  token for SmolLM2-135M, 8× the model's own training activations;
- the autograd activations of one hooked forward (per layer, a family-specific multiple of d and of
  the MLP width; measured with saved-tensor hooks, `_HOOKED`);
- transients: the per-head norm VJPs of one layer during backward (≈5 float32 [H, d] per token) and
  the answer-token logits of the metric (≈3 float32 vocabulary vectors per answer token);
- the [B, n_forward, n_backward] score tensors (a few copies).

The interpolation steps run one after another into the same buffers, so neither `steps` nor the
method changes the peak. On the CPU, glibc's allocator keeps freed blocks, so the resident peak is
larger than the live tensors: the per-token part is multiplied by `ALLOCATOR_FACTOR` (measured
1.1-1.3 on real models, more on toy ones), and a process-level `RUNTIME_BYTES` (Python, torch,
transformers, tokenizer, ROUGE) is added. Model weights are counted once at their dtype.

`bench/memory.py` measures real scoring runs and prints measured vs estimated peaks.

`available_memory` (cud_core/sysmem.py) tells what the device can give this process.
"""
from __future__ import annotations

from typing import Callable

import torch

from cud_core.data.samples import encode
from cud_core.engine.attribution import METHODS
from cud_core.engine.graph import Graph
from cud_core.engine.sysmem import ENV_LIMIT, available_memory

# Resident memory of a CPU scoring process besides the model and the batch: interpreter, torch,
# transformers, the tokenizer, ROUGE/generation code paths (measured: 0.54-0.60 GB, tiny and embedded
# models, torch 2.13 / transformers 5). Not counted on CUDA devices.
RUNTIME_BYTES = 600 * 2 ** 20
# resident / live tensor bytes for the per-token part on the CPU (glibc keeps freed blocks); bench/memory.py
ALLOCATOR_FACTOR = 1.2
# the share of a batch's tokens assumed to be answer tokens (the metric's logits are taken there)
ANSWER_FRACTION = 0.5

# Saved activations of one layer of the hooked forward, per token: (elements of d in the model's
# dtype, elements of d in float32, elements of the MLP width in the model's dtype). Measured with
# torch.autograd.graph.saved_tensors_hooks on tiny models of each family, float32 and bfloat16
# (Llama-style RMSNorm keeps float32 copies).
_HOOKED = {"llama": (4.3, 2.0, 3.0), "qwen2": (4.3, 2.0, 3.0), "mistral": (4.3, 2.0, 3.0),
           "gpt2": (6.1, 0.0, 4.0), "gpt_neox": (8.2, 0.0, 1.0)}
# ... and of the model's own forward (Hugging Face modules, SDPA attention), for training
_TRAINING = {"llama": (8.6, 2.0, 4.0), "qwen2": (8.6, 2.0, 4.0), "mistral": (8.6, 2.0, 4.0),
             "gpt2": (11.0, 0.0, 5.0), "gpt_neox": (9.1, 0.0, 2.0)}
_UNKNOWN = (11.0, 2.0, 5.0)  # other families: the largest of each


class NotEnoughMemory(ValueError):
    """A run would not fit in memory (for scoring: even with a batch of one); the message names what
    is needed, what is available and what to do."""

    def __init__(self, message: str, needed: int = 0, available: int = 0):
        super().__init__(message)
        self.needed, self.available = needed, available


# ----------------------------------------------------------------------------- model dimensions

def _dims(model) -> dict:
    model = getattr(model, "model", model) if not isinstance(model, torch.nn.Module) else model
    cfg = model.config
    d = int(getattr(cfg, "hidden_size", None) or cfg.n_embd)
    inner = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d
    graph = Graph.from_model(model)
    params = list(model.parameters())
    p0 = params[0]
    return {"d": d, "inner": int(inner), "vocab": int(cfg.vocab_size), "layers": graph.n_layers,
            "heads": graph.n_heads, "n_forward": graph.n_forward, "n_backward": graph.n_backward,
            "family": cfg.model_type, "elem": p0.element_size(), "device": p0.device,
            "n_params": sum(p.numel() for p in params),
            "weights": sum(p.numel() * p.element_size() for p in params),
            "largest": max(p.numel() * p.element_size() for p in params)}


def _fixed(device: torch.device) -> int:
    return RUNTIME_BYTES if device.type == "cpu" else 0


def _check(seq_len: int, batch_size: int) -> None:
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a whole number ≥ 1, got {value!r}")


def token_lengths(tokenizer, samples) -> list[int]:
    """Each sample's encoded prompt + answer, in tokens."""
    return [len(encode(tokenizer, s)[0]) for s in samples]


def longest_sequence(tokenizer, samples) -> int:
    """The longest encoded prompt + answer among `samples`, in tokens (what a batch is padded to)."""
    return max(token_lengths(tokenizer, samples), default=1)


# ----------------------------------------------------------------------------- estimates

def estimate_scoring_peak(model, seq_len: int, batch_size: int, method: str = "eap-ig-inputs",
                          steps: int = 5, n_metrics: int = 1) -> int:
    """Peak bytes of a scoring run (`scoring.score_run`: per-sample metrics, then attribution) whose
    batches hold `batch_size` samples padded to `seq_len` tokens, on `model`'s device and dtype.

    = runtime (CPU only) + weights + the larger of the two phases:
      attribution  ALLOCATOR_FACTOR · B·T · [4·d·(2F + N) + L·act + 4·(5·H·d + ANSWER_FRACTION·3·V)]
                   + 3 · B·F·N·4                                   (score tensors)
      metrics      B·T·V·(elem + 8)                                (logits and log-softmax)
    with F, N the forward/backward node counts, L layers, H heads, d width, V vocabulary and act the
    per-layer autograd activations of the hooked forward (`_HOOKED`). `method` and `steps` are checked
    but do not change the peak (the interpolation passes reuse the same buffers; EAP-IG-activations also
    keeps the clean residual stream entering each layer, L·B·T·d floats, under 1% of the activations).
    `n_metrics` metrics scored from the same passes (`scoring.score_runs`) hold one gradient sum
    (N·d per token) and one set of score tensors each."""
    _check(seq_len, batch_size)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number ≥ 1, got {steps!r}")
    m = _dims(model)
    d, e, tokens = m["d"], m["elem"], batch_size * seq_len
    a_dtype, a_f32, a_inner = _HOOKED.get(m["family"], _UNKNOWN)
    per_token = (4 * d * (2 * m["n_forward"] + n_metrics * m["n_backward"])             # base, clean/Δ, grads
                 + m["layers"] * (e * (a_dtype * d + a_inner * m["inner"]) + 4 * a_f32 * d)  # activations
                 + 4 * (5 * m["heads"] * d + ANSWER_FRACTION * 3 * m["vocab"]))       # transients
    attribution = (ALLOCATOR_FACTOR * tokens * per_token
                   + 3 * n_metrics * 4 * batch_size * m["n_forward"] * m["n_backward"])
    metrics = tokens * m["vocab"] * (e + 8)
    return int(_fixed(m["device"]) + m["weights"] + max(attribution, metrics))


def estimate_unlearning_peak(model, seq_len: int, batch_size: int, trainable_params: int | None = None) -> int:
    """Peak bytes of `unlearn.runner.run_unlearning` with forget and retain batches of `batch_size`
    samples padded to `seq_len` tokens. `trainable_params`: how many parameters the method updates
    (default: all of them).

    = runtime (CPU only) + weights (the original and the trained copy) + P_t·elem·3 (gradients and
    AdamW's two moments, in the parameters' dtype) + the larger of
      training step  ALLOCATOR_FACTOR · [2·B·T · (L·act + V·lg) + B·T·V·(elem + 8)]
                     (the copy's graphs for the forget and the retain batch, kept until backward, and
                     a frozen reference forward over the forget batch; lg = elem + 4 bytes of logits
                     and log-softmax per vocabulary entry, + 4 for the float32 copy of non-float32 logits)
      optimizer step the largest parameter twice (CPU) or P_t·elem twice (CUDA, foreach kernels)
    with act the per-layer training activations of the model's own forward (`_TRAINING`). Methods
    that train a few layers (RMU) keep fewer activations: the estimate errs high for them."""
    _check(seq_len, batch_size)
    m = _dims(model)
    trainable = m["n_params"] if trainable_params is None else int(trainable_params)
    if trainable < 0:
        raise ValueError(f"trainable_params must be ≥ 0, got {trainable_params!r}")
    d, e, tokens = m["d"], m["elem"], batch_size * seq_len
    a_dtype, a_f32, a_inner = _TRAINING.get(m["family"], _UNKNOWN)
    act = m["layers"] * (e * (a_dtype * d + a_inner * m["inner"]) + 4 * a_f32 * d)
    logits = e + 4 + (4 if e != 4 else 0)  # logits, a float32 copy unless already float32, log-softmax
    training = ALLOCATOR_FACTOR * (2 * tokens * (act + m["vocab"] * logits) + tokens * m["vocab"] * (e + 8))
    optimizer = 2 * (trainable * e if m["device"].type == "cuda" else min(m["largest"], trainable * e))
    state = trainable * e * 3
    return int(_fixed(m["device"]) + 2 * m["weights"] + state + max(training, optimizer))


# ----------------------------------------------------------------------------- the guard

def format_bytes(n: float) -> str:
    """'9.1 GB', '512 MB' (powers of 1000, as memory is usually quoted)."""
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{max(n, 0) / 1e6:.0f} MB"


def fit_batch_size(estimate: Callable[[int], int], batch_size: int, available: int,
                   headroom: float = 0.9) -> tuple[int, str | None]:
    """The largest batch ≤ `batch_size` whose `estimate(batch)` (bytes, growing with the batch) fits in
    `headroom`·`available`, and a message saying why it was lowered (None when it was not).
    Raises NotEnoughMemory when even a batch of one does not fit."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number ≥ 1, got {batch_size!r}")
    if not 0 < headroom <= 1:
        raise ValueError(f"headroom must be in (0, 1], got {headroom!r}")
    budget = headroom * available
    wanted = estimate(batch_size)
    if wanted <= budget:
        return batch_size, None
    if wanted <= available:
        why = (f"batch size {batch_size} would need about {format_bytes(wanted)}, more than {headroom:.0%} of the "
               f"{format_bytes(available)} available")
    else:
        why = (f"batch size {batch_size} would need about {format_bytes(wanted)} but {format_bytes(available)} "
               "is available")
    one = estimate(1)
    if one > budget:
        raise NotEnoughMemory(
            f"not enough memory: even batch size 1 would need about {format_bytes(one)} but "
            f"{format_bytes(available)} is available (with {1 - headroom:.0%} kept free); use a smaller model or "
            f"shorter samples, free memory, or set {ENV_LIMIT} if the detection is wrong", one, available)
    low, high = 1, batch_size  # estimate(low) fits, estimate(high) does not
    while high - low > 1:
        mid = (low + high) // 2
        if estimate(mid) <= budget:
            low = mid
        else:
            high = mid
    return low, f"{why}; using {low} (about {format_bytes(estimate(low))})"


# ----------------------------------------------------------------------------- the checks runs make

def scoring_batch(lm, samples, batch_size: int, method: str, steps: int, n_metrics: int = 1) -> tuple[int, str | None]:
    """The batch size a scoring run of `samples` can afford on `lm`'s device (≤ `batch_size`) and a
    message when it had to be lowered. Lowering does not change the scores (each sample is scored
    on its own within a batch), so the run keeps the requested size in its settings."""
    longest = longest_sequence(lm.tokenizer, samples)
    return fit_batch_size(lambda b: estimate_scoring_peak(lm.model, longest, b, method, steps, n_metrics), batch_size,
                          available_memory(next(lm.model.parameters()).device))


def check_unlearning(lm, samples, batch_size: int) -> None:
    """Refuse an unlearning batch that would not fit (lowering it would change the training): raises
    NotEnoughMemory naming the batch size that fits."""
    longest = longest_sequence(lm.tokenizer, samples)
    available = available_memory(next(lm.model.parameters()).device)
    fits, note = fit_batch_size(lambda b: estimate_unlearning_peak(lm.model, longest, b), batch_size, available)
    if note:
        raise NotEnoughMemory(f"unlearning {note.replace('; using', '; use --batch-size')} instead",
                              estimate_unlearning_peak(lm.model, longest, batch_size), available)
