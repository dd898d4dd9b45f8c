"""One prepared GPU check (run it on a machine with CUDA). Prints one JSON line.

- CUDA bfloat16 and float32 attribution against CPU float32: Spearman rank agreement of |scores|
  over real edges, and overlap of the greedy 75-edge circuits.
- The hooked forward against Hugging Face logits on CUDA (float32).
- Bench figures on the GPU (overhead ratio, samples/s, peak memory), as bench/attribution.py.

    python bench/gpu_check.py [--model embedded] [--samples 8]
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import torch
from scipy.stats import spearmanr

from cud_core.data.samples import load_builtin
from cud_core.engine import hooked
from cud_core.engine.adapters import adapter_for
from cud_core.engine.attribution import attribute
from cud_core.engine.circuits import as_vector, binarise
from cud_core.engine.graph import Graph
from cud_core.engine.metrics import collate
from cud_core.engine.models import load_model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded")
    p.add_argument("--samples", type=int, default=8)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"error": "CUDA is not available on this machine"}))
        return 1
    samples = load_builtin("world-facts")[: args.samples]
    out = {"gpu": torch.cuda.get_device_name(0)}
    cpu = load_model(args.model, dtype="float32", device="cpu")
    graph = Graph.from_model(cpu.model)
    ref = attribute(cpu.model, cpu.tokenizer, samples, batch_size=args.samples)
    del cpu
    for dtype in ("float32", "bfloat16"):
        lm = load_model(args.model, dtype=dtype, device="cuda")
        if dtype == "float32":
            batch = collate(lm.tokenizer, samples).to("cuda")
            ad = adapter_for(lm.model)
            with torch.no_grad():
                diff = (hooked.logits(ad, hooked.run(ad, graph, batch.input_ids))
                        - lm.model(batch.input_ids).logits).abs().max()
            out["cuda_logits_max_abs_diff"] = float(diff)
        torch.cuda.synchronize()
        t = time.perf_counter()
        got = attribute(lm.model, lm.tokenizer, samples, batch_size=args.samples).cpu()
        torch.cuda.synchronize()
        rho, overlap = [], []
        for a, b in zip(ref, got):
            rho.append(spearmanr(as_vector(a, graph).abs(), as_vector(b, graph).abs())[0])
            ca, cb = binarise(a, graph), binarise(b, graph)
            overlap.append(float((ca & cb).sum() / max(1, (ca | cb).sum())))
        out[f"{dtype}_spearman_vs_cpu"] = round(float(sum(rho) / len(rho)), 4)
        out[f"{dtype}_circuit_jaccard_vs_cpu"] = round(sum(overlap) / len(overlap), 4)
        out[f"{dtype}_attribute_s"] = round(time.perf_counter() - t, 3)
        del lm
        torch.cuda.empty_cache()
    print(json.dumps(out))
    os.execv(sys.executable, [sys.executable, str(Path(__file__).parent / "attribution.py"),
                              "--model", args.model, "--device", "cuda", "--dtype", "bfloat16",
                              "--batch-size", "16", "--repeats", "3"])


if __name__ == "__main__":
    sys.exit(main())
