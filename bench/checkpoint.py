"""Cost of unlearning checkpoints on the embedded model: one line of JSON.

    python bench/checkpoint.py [--method npo] [--steps 4]

Measures, in one run: the time of one unlearning step, of one evaluation, and of one checkpoint save
and restore (trained parameters + AdamW state + curve), the checkpoint's size, and the overhead of
checkpointing at every evaluation relative to the steps and evaluation it follows (eval every 5).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cud_core.data.samples import load_builtin
from cud_core.engine.models import load_model
from cud_core.unlearn import run_unlearning
from cud_core.unlearn.checkpoint import Checkpoint
from cud_core.unlearn.runner import UnlearnResult


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="npo")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import torch

    lm = load_model("embedded", device="cpu")
    facts = load_builtin("world-facts")
    forget, retain = facts[:16], facts[16:48]
    t = time.perf_counter()
    result = run_unlearning(lm.model, lm.tokenizer, forget, retain, args.method, steps=args.steps,
                            eval_every=args.steps, batch_size=args.batch_size, retain_eval=16)
    total = time.perf_counter() - t
    eval_s = result.elapsed[0]  # the step-0 evaluation
    step_s = (total - 2 * eval_s) / args.steps

    # a checkpoint of the trained copy, with an optimizer state like the run's (one step of AdamW)
    student = result.model
    params = list(student.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-5)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ckpt.safetensors"
        saver = Checkpoint(path, lm.model, result.settings, forget, retain)
        t = time.perf_counter()
        saver.save(student, opt, result, args.steps)
        save_s = time.perf_counter() - t
        size = path.stat().st_size
        t = time.perf_counter()
        step = saver.restore(student, opt, UnlearnResult(args.method, result.settings))
        restore_s = time.perf_counter() - t
    assert step == args.steps
    per_eval_interval = 5 * step_s + eval_s
    print(json.dumps({"bench": "checkpoint", "model": lm.name, "method": args.method, "batch_size": args.batch_size,
                      "step_s": round(step_s, 2), "eval_s": round(eval_s, 2), "save_s": round(save_s, 2),
                      "restore_s": round(restore_s, 2), "checkpoint_mb": round(size / 2**20, 1),
                      "overhead_every_eval_5_steps": round(save_s / per_eval_interval, 3)}))


if __name__ == "__main__":
    main()
