"""Benchmark EAP-IG-activations and what makes it cheaper. Prints one JSON line.

All timings come from this run, on one batch of world-facts samples, interleaved and best of --repeats:
- `ours_s`, `peer_s`: the textbook and the reference-code (peer) variants, one metric each;
  `peer_over_ours` their ratio (the peer variant's passes start at their layer, plus one backward for what they
  add below it, `attribution._peer`);
- `ours_two_metrics_s`, `peer_two_metrics_s`: logprob and kl from the same passes
  (`attribute_metrics`); `*_two_metrics_over_one` against one metric (two separate runs: 2.0);
- `norm_vjp_s` vs `norm_vjp_elementwise_s`: the RMSNorm VJP of a [B, T, H, d] cotangent stack
  (run 3× per layer and pass) as one matmul and one rank-1 update vs the seven-op elementwise form.

    python bench/ig_activations.py --quick        # 2 samples, 2 steps: about 2 min on 2 CPU cores
    python bench/ig_activations.py --batch-size 8 --steps 5 --device cuda
"""
import argparse
import json
import os
import time

os.environ["HF_HUB_OFFLINE"] = "1"

import torch

from cud_core.data.samples import load_builtin
from cud_core.engine.adapters import adapter_for, norm_vjp
from cud_core.engine.attribution import attribute_metrics
from cud_core.engine.models import load_model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def elementwise_rms_vjp(norm, x, g):
    """The elementwise formula (the reference): r·u − x·r³·⟨x, u⟩/d with u = w·g, all elementwise."""
    x = x.float().unsqueeze(2)
    u = g.float() * norm.weight.float()
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return r * u - x * (r ** 3) * (x * u).sum(-1, keepdim=True) / x.shape[-1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="2 samples, 2 steps, one repeat")
    args = p.parse_args()
    if args.quick:
        args.batch_size, args.steps, args.repeats = 2, 2, 1

    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    model, tok, device = lm.model, lm.tokenizer, lm.device
    samples = load_builtin("world-facts")[: args.batch_size]
    attribute_metrics(model, tok, samples[:1], method="eap", steps=1)  # warm-up

    def run(method, metrics):
        return lambda: attribute_metrics(model, tok, samples, method=method, steps=args.steps, metrics=metrics,
                                         batch_size=len(samples))
    cases = {"ours_s": run("eap-ig-activations", ("logprob",)),
             "ours_two_metrics_s": run("eap-ig-activations", ("logprob", "kl")),
             "peer_s": run("eap-ig-activations-peer", ("logprob",)),
             "peer_two_metrics_s": run("eap-ig-activations-peer", ("logprob", "kl"))}
    best = {k: float("inf") for k in cases}
    for _ in range(args.repeats):
        for k, fn in cases.items():
            best[k] = min(best[k], timed(fn, device))

    ad = adapter_for(model)
    norm = ad.layers[0].ln_attn
    T, H, d = 40, ad.n_heads, ad.d_model
    x = torch.randn(8, T, d, device=device, dtype=torch.float32)
    g = torch.randn(8, T, H, d, device=device)
    vjp = {"norm_vjp_s": lambda: norm_vjp(norm, x, g),
           "norm_vjp_elementwise_s": lambda: elementwise_rms_vjp(norm, x, g)}
    vjp_best = {k: min(timed(lambda: [fn() for _ in range(20)], device) for _ in range(3)) for k, fn in vjp.items()}
    agree = float((norm_vjp(norm, x, g) - elementwise_rms_vjp(norm, x, g)).abs().max())

    figures = {"model": lm.name, "device": str(device), "dtype": args.dtype, "steps": args.steps,
               "batch_size": len(samples), "n_layers": len(ad.layers),
               **{k: round(v, 2) for k, v in best.items()},
               "peer_over_ours": round(best["peer_s"] / best["ours_s"], 3),
               "ours_two_metrics_over_one": round(best["ours_two_metrics_s"] / best["ours_s"], 3),
               "peer_two_metrics_over_one": round(best["peer_two_metrics_s"] / best["peer_s"], 3),
               **{k: round(v / 20, 5) for k, v in vjp_best.items()},
               "norm_vjp_speedup": round(vjp_best["norm_vjp_elementwise_s"] / vjp_best["norm_vjp_s"], 2),
               "norm_vjp_max_abs_diff": agree}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
