"""Throughput of scoring on the local executor vs a private Ray instance on this machine:
the same samples and settings, each in a fresh workspace, in one process; Ray's start-up (actors
loading the model) is timed apart from the scoring. Prints one JSON line with samples/s for both,
the per-unit time and the scheduling overhead per task (Ray wall time − Σ unit compute / workers),
from which the note derives the expected speed-up on N GPUs.

    .venv/bin/python bench/scale.py [--samples 32] [--method eap-ig-inputs] [--workers 2] [--batch-size 4]
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import cud_core.pipeline.scoring as scoring
from cud_core.engine.models import load_model
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.executor import ExecutorSettings, make
from cud_core.pipeline.jobs import prepare_scenario
from cud_core.pipeline.scoring import ScoreSettings, score_run
from cud_core.store.workspace import Workspace


def main() -> None:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--method", default="eap-ig-inputs")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()
    lm = load_model("embedded")
    samples = prepare_scenario(RunContext(lm, dataset="builtin:world-facts"), forget_fraction=0.2, seed=0,
                               need_retain=False).forget
    samples = samples[:args.samples]
    settings = ScoreSettings(method=args.method, batch_size=args.batch_size, generation=False)
    units = -(-len(samples) // args.batch_size)
    out = {"model": lm.name, "samples": len(samples), "method": args.method, "batch_size": args.batch_size,
           "units": units, "cpu_threads_local": torch.get_num_threads(), "workers": args.workers}
    compute = []  # each unit's compute seconds, as its worker measured them
    write = scoring.write_batch
    scoring.write_batch = lambda ws, run, batch: (compute.append(batch["compute_s"]), write(ws, run, batch))
    with tempfile.TemporaryDirectory() as folder:
        t = time.perf_counter()
        score_run(RunContext(lm, Workspace(Path(folder) / "local"), "builtin:world-facts"), samples, settings)
        local = time.perf_counter() - t
        local_units = compute[:]
        compute.clear()
        t = time.perf_counter()
        ex = make(ExecutorSettings("ray", "local-cluster", workers=args.workers), lm)
        ex.workers()  # every actor has loaded the model
        startup = time.perf_counter() - t
        try:
            t = time.perf_counter()
            score_run(RunContext(lm, Workspace(Path(folder) / "ray"), "builtin:world-facts", executor=ex), samples,
                      settings)
            remote = time.perf_counter() - t
        finally:
            ex.close()
    busy = min(args.workers, units)
    out.update(local_s=round(local, 1), ray_s=round(remote, 1), ray_startup_s=round(startup, 1),
               local_samples_per_s=round(len(samples) / local, 3), ray_samples_per_s=round(len(samples) / remote, 3),
               speedup=round(local / remote, 2), per_unit_local_s=round(sum(local_units) / units, 2),
               per_unit_worker_s=round(sum(compute) / units, 2),
               overhead_per_task_s=round((remote - sum(compute) / busy) / units, 3))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
