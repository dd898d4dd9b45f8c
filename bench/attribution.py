"""Benchmark edge attribution against the bare model. Prints one JSON line.

overhead_ratio = time of attribute(method, steps=m) on a batch
                 ÷ time of (m + 1) bare Hugging Face forward+backward passes on the same batch and device.
Both are measured in this run, interleaved, best of --repeats, so machine noise mostly cancels.

    python bench/attribution.py --quick            # < 30 s on 2 CPU cores
    python bench/attribution.py --device cuda --dtype bfloat16 --batch-size 16
    python bench/attribution.py --pipeline 100     # also: full scoring run of 100 known world-facts
"""
import argparse
import json
import os
import resource
import tempfile
import time

os.environ["HF_HUB_OFFLINE"] = "1"

import torch

from cud_core.data.samples import load_builtin
from cud_core.engine.attribution import attribute
from cud_core.engine.metrics import collate
from cud_core.engine.models import load_model
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.knowledge import known_facts
from cud_core.pipeline.scoring import ScoreSettings, score_run
from cud_core.store.workspace import Workspace


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_passes(model, batch, n, device):
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        labels = batch.input_ids.masked_fill(~batch.answer_mask, -100)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t


def attribution_time(model, tok, samples, args, device):
    sync(device)
    t = time.perf_counter()
    attribute(model, tok, samples, method=args.method, steps=args.steps, batch_size=len(samples))
    sync(device)
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--method", default="eap-ig-inputs")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="small batch, one repeat (< 30 s on 2 CPU cores)")
    p.add_argument("--pipeline", type=int, default=0, help="also time a full scoring run of N known facts")
    args = p.parse_args()
    if args.quick:
        args.batch_size, args.repeats, args.steps = 4, 1, 3

    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    model, tok, device = lm.model, lm.tokenizer, lm.device
    samples = load_builtin("world-facts")[: args.batch_size]
    batch = collate(tok, samples).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    attribute(model, tok, samples[:1], method=args.method, steps=1)  # warm-up
    bare_passes(model, batch, 1, device)
    t_bare, t_attr = [], []
    for _ in range(args.repeats):
        t_bare.append(bare_passes(model, batch, args.steps + 1, device))
        t_attr.append(attribution_time(model, tok, samples, args, device))
    figures = {
        "model": lm.name, "device": str(device), "dtype": args.dtype, "method": args.method, "steps": args.steps,
        "batch_size": args.batch_size, "tokens_per_sample": round(batch.attention_mask.sum().item() / len(samples), 1),
        "attribute_s": round(min(t_attr), 3), "bare_s": round(min(t_bare), 3),
        "overhead_ratio": round(min(t_attr) / min(t_bare), 3),
        "samples_per_s": round(args.batch_size / min(t_attr), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if device.type == "cuda":
        figures["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
    if args.pipeline:
        figures.update(pipeline(lm, args.pipeline))
    print(json.dumps(figures))


def pipeline(lm, n):
    """Knowledge filter + a scoring run (metrics, attribution, circuits) of n known facts."""
    t = time.perf_counter()
    facts = known_facts(lm.model, lm.tokenizer, load_builtin("world-facts"))[:n]
    t_filter = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        score_run(RunContext(lm, Workspace(tmp), "builtin:world-facts"), facts, ScoreSettings())
        t_score = time.perf_counter() - t
    return {"pipeline_samples": len(facts), "pipeline_filter_s": round(t_filter, 1),
            "pipeline_score_s": round(t_score, 1), "pipeline_samples_per_s": round(len(facts) / t_score, 3)}


if __name__ == "__main__":
    main()
