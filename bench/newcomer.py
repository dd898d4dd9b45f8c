"""A newcomer's first minutes on the embedded default, through the app's job queue: one JSON line.

    python bench/newcomer.py [--skip-demo]

- score10: Score of 10 forget samples of world-facts from a fresh workspace (as the home page's
  Score button does): seconds to the first progress message and in total;
- demo: the Demo preset (as the home page's Demo button): first progress and total;
- first_unlearning: after the Demo, the Unlearning page's first run (CUD-hardest 5, NPO, 12 steps, as that
  page prepares it: the scored forget ids, every other fact as retain candidates through the knowledge
  filter): seconds until the preparation ends (`prepared_s`: the unlearning job's own first message) and
  until its step-0 evaluation (`step0_s`); target: ≤ 20 s (the retain facts' answers ship with the package
  and must not be computed again);
- stop: Demo jobs stopped `--stop-after` seconds after they start (default 20 s: while scoring, 120 s: while
  unlearning): seconds from Stop to the job being stopped.

Targets: first progress ≤ 10 s, Score of 10 ≤ 3 min, Demo ≤ 5 min, Stop ≤ 5 s (2 CPU cores).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from cud_core.data.samples import load_builtin
from cud_core.engine.models import load_model
from cud_core.pipeline.calibration import calibrate
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.jobs import PREPARING, JobManager, prepare_scenario
from cud_core.pipeline.knowledge import known_facts
from cud_core.pipeline.presets import PRESETS, calibration_settings
from cud_core.pipeline.scoring import ScoreSettings, score_run
from cud_core.pipeline.unlearning import UnlearnSettings, unlearn
from cud_core.store.workspace import Workspace
from cud_core.unlearn.runner import DEFAULT_LR

os.environ["HF_HUB_OFFLINE"] = "1"


def timed_job(manager, kind, fn, stop_after: float | None = None) -> dict:
    """Submit `fn` as a job; the time of its first progress message, its total, and (with
    `stop_after`) how long Stop took."""
    t0, first = time.perf_counter(), []

    def wrapped(progress, should_stop):
        def report(fraction, message):
            if not first:
                first.append(time.perf_counter() - t0)
            progress(fraction, message)
        return fn(report, should_stop)
    job = manager.submit(kind, kind, wrapped)
    out = {}
    if stop_after is not None:
        time.sleep(stop_after)
        t_stop = time.perf_counter()
        manager.stop(job.id)
        manager.wait(job.id, 600)
        out["stop_latency_s"] = round(time.perf_counter() - t_stop, 1)
        out["stopped_during"] = job.message[:80]
    manager.wait(job.id, 3600)
    out.update(status=job.status, first_progress_s=round(first[0], 1) if first else None,
               total_s=round(time.perf_counter() - t0, 1))
    if job.status == "failed":
        out["error"] = job.error
    return out


def first_unlearning(manager, lm, data: str, ws) -> dict:
    """The Unlearning page's first run after the Demo: CUD-hardest 5 with NPO for 12 steps."""
    cal = next(r for r in ws.list_runs("calibrate") if r["status"] == "done")
    results = ws.load_results(cal["id"])
    forget_ids = list(results)
    hardest = sorted(forget_ids, key=lambda i: results[i].get("cud_oof", results[i]["cud"]))[-5:]
    t0, marks = time.perf_counter(), {}

    def fn(progress, should_stop):
        def report(fraction, message):
            if not message.startswith(PREPARING):
                marks.setdefault("prepared_s", round(time.perf_counter() - t0, 1))
            if message.startswith("step 0/"):
                marks.setdefault("step0_s", round(time.perf_counter() - t0, 1))
            progress(fraction, message)
        sc = prepare_scenario(RunContext(lm, dataset=data, progress=report, should_stop=should_stop),
                              forget_ids=forget_ids)
        forget = [s for s in sc.forget if s.id in set(hardest)]
        return unlearn(RunContext(sc.lm, ws, data, progress=report, should_stop=should_stop), forget, sc.retain,
                       UnlearnSettings("npo", 12, DEFAULT_LR, 5, 0, 8, {}), "CUD-hardest 5")
    return {**timed_job(manager, "unlearn", fn), **marks}


def main() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    print(json.dumps(measure(parser.parse_args())))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--stop-after", type=float, nargs="+", default=[20.0, 120.0],
                        help="seconds after the start of a Demo job to press Stop (one job each)")


def measure(args) -> dict:
    """The figures above as a dict (bench/app.py reports them too)."""
    data = "builtin:world-facts"
    t = time.perf_counter()
    lm = load_model("embedded", device="cpu")
    result = {"bench": "newcomer", "model_load_s": round(time.perf_counter() - t, 1)}
    manager = JobManager()
    with tempfile.TemporaryDirectory() as root:
        ten = [s.id for s in known_facts(lm.model, lm.tokenizer, load_builtin("world-facts"))[:10]]

        def score10(progress, should_stop):  # as the home page's Score: forget set only, no retain filter
            sc = prepare_scenario(RunContext(lm, dataset=data, progress=lambda f, m: progress(0.0, m),
                                             should_stop=should_stop), forget_ids=ten, need_retain=False)
            assert len(sc.forget) == 10, len(sc.forget)
            return score_run(RunContext(sc.lm, Workspace(Path(root) / "a"), data, progress=progress,
                                        should_stop=should_stop), sc.forget, ScoreSettings(generation=False))
        result["score10"] = timed_job(manager, "score", score10)

        demo = PRESETS["demo"]

        def run_demo(folder):
            def fn(progress, should_stop):
                sc = prepare_scenario(RunContext(lm, dataset=data, progress=lambda f, m: progress(0.0, m),
                                                 should_stop=should_stop), demo.forget_fraction,
                                      limit=demo.limit)
                return calibrate(RunContext(sc.lm, Workspace(Path(root) / folder), data, progress=progress,
                                            should_stop=should_stop), sc.forget, sc.retain,
                                 calibration_settings("demo"))
            return fn
        if not args.skip_demo:
            result["demo"] = timed_job(manager, "calibrate", run_demo("b"))
            result["first_unlearning"] = first_unlearning(manager, lm, data, Workspace(Path(root) / "b"))
        for i, after in enumerate(args.stop_after):  # e.g. once while scoring, once while unlearning
            result[f"stop_after_{after:g}s"] = timed_job(manager, "calibrate", run_demo(f"c{i}"), stop_after=after)
    return result


if __name__ == "__main__":
    main()
