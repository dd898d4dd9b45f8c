"""Long work as background jobs: a one-at-a-time queue with progress and stop, plus preparing a
scenario (the data, fine-tuned and filtered) that the app's and the command line's jobs start from.

Jobs run in one worker thread; a heavy job never runs beside another (the rest wait in the queue).
Everything a job produces goes to the workspace, so a page can show it while it runs and after a
restart.
"""
from __future__ import annotations

import itertools
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from cud_core.data.samples import (
    Sample,
    check_lengths,
    load_data,
    needs_finetuning,
    needs_format_adaptation,
    needs_knowledge_filter,
    split_forget_retain,
)
from cud_core.engine.models import LoadedModel, context_length
from cud_core.engine.stopping import Stopped
from cud_core.pipeline.context import Progress, RunContext, StopFlag
from cud_core.pipeline.finetune import FORMAT_ADAPTATION, cached_folder, finetune_seconds, finetuned
from cud_core.pipeline.knowledge import known_facts, unanswered
from cud_core.pipeline.presets import DEFAULT

# ----------------------------------------------------------------------------- the queue

@dataclass
class Job:
    id: int
    kind: str
    title: str
    fn: Callable[[Progress, StopFlag], object] = field(repr=False)
    status: str = "queued"          # queued, running, done, failed, stopped, cancelled
    progress: float = 0.0
    message: str = ""
    error: str = ""
    result: object = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    stop_requested: bool = False

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    @property
    def state(self) -> str:
        """What to show: 'stopping…' between the user's Stop and the job's next check."""
        return "stopping…" if self.status == "running" and self.stop_requested else self.status


class JobManager:
    def __init__(self):
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._worker = threading.Thread(target=self._loop, name="cud-jobs", daemon=True)
        self._worker.start()

    def submit(self, kind: str, title: str, fn: Callable[[Progress, StopFlag], object]) -> Job:
        with self._lock:
            job = Job(next(self._ids), kind, title, fn)
            self._jobs[job.id] = job
            self._wake.notify()
        return job

    def stop(self, job_id: int) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            job.stop_requested = True
            if job.status == "queued":
                job.status, job.finished = "cancelled", time.time()

    def jobs(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.id, reverse=True)

    def active(self, kind: str | None = None) -> list[Job]:
        return [j for j in self.jobs() if j.active and (kind is None or j.kind == kind)]

    def wait(self, job_id: int, timeout: float = 600) -> Job:
        end = time.time() + timeout
        while self._jobs[job_id].active and time.time() < end:
            time.sleep(0.05)
        return self._jobs[job_id]

    def _next(self) -> Job:
        with self._lock:
            while True:
                queued = [j for j in self._jobs.values() if j.status == "queued"]
                if queued:
                    job = min(queued, key=lambda j: j.id)
                    job.status, job.started = "running", time.time()
                    return job
                self._wake.wait()

    def _loop(self):
        while True:
            job = self._next()

            def progress(fraction, message, job=job):
                job.progress, job.message = max(0.0, min(1.0, fraction)), message
            try:
                job.result = job.fn(progress, lambda job=job: job.stop_requested)
                job.status = "stopped" if job.stop_requested else "done"
                if job.status == "done":
                    job.progress = 1.0
            except Stopped as exc:
                job.status, job.message = "stopped", str(exc)
            except Exception as exc:  # a failed job must not kill the worker
                job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
                job.message = traceback.format_exc(limit=3)
            job.finished = time.time()


# ----------------------------------------------------------------------------- recipes

@dataclass
class Scenario:
    lm: LoadedModel            # the "original" model (fine-tuned first where the scenario needs it)
    samples: list[Sample]      # usable samples (known facts for world-facts)
    forget: list[Sample]
    retain: list[Sample]


def prepare_scenario(ctx: RunContext, forget_fraction: float = DEFAULT.forget_fraction, seed: int = DEFAULT.seed,
                     forget_ids: list[str] | None = None, limit: int | None = None, known_filter: bool = True,
                     samples: list[Sample] | None = None, need_retain: bool = True) -> Scenario:
    """Load the dataset `ctx.dataset` (unless `samples` already holds it; `limit` keeps its first N
    samples), fine-tune `ctx.lm` on it if the scenario needs that, split it, and keep the facts the model
    knows.

    The split comes first (seeded, or `forget_ids`), so the knowledge filter answers the forget
    candidates first and the retain candidates only when `need_retain` (scoring needs none): on a
    model without shipped answers a Score starts after answering a tenth of the facts, not all.
    Raises stopping.Stopped when `ctx.should_stop()` becomes true (answers so far stay cached)."""
    lm, data, report, should_stop = ctx.lm, ctx.dataset, ctx.report, ctx.should_stop
    samples = load_data(data) if samples is None else samples
    samples = samples[:limit] if limit else samples
    if needs_format_adaptation(data) and not known_filter:
        raise ValueError(f"{data} adapts the model on the facts the knowledge filter sets aside: it cannot run "
                         "without the filter (--no-known-filter)")
    if needs_finetuning(data):
        lm = finetuned(lm, samples, should_stop=should_stop,
                       progress=lambda f, m: report(f, f"{PREPARING}: fine-tuning on the scenario, {m}"))
    forget, retain = split_forget_retain(samples, forget_fraction, seed, forget_ids)
    if needs_knowledge_filter(data) and known_filter:
        def known(part, name):
            return known_facts(lm.model, lm.tokenizer, part, should_stop=should_stop, progress=lambda f, m: report(
                f, f"{PREPARING}: keeping {name} facts the model knows, {m}"))
        forget = known(forget, "forget")
        if not forget:
            raise ValueError(f"{lm.name} knows none of the {len(samples)} {data} facts drawn for the forget set")
        retain = known(retain, "retain") if need_retain else []
    if needs_format_adaptation(data):
        lm = format_adapted(lm, samples, report, should_stop)
    kept = {s.id: s for s in forget + retain}
    samples = [kept[s.id] for s in samples if s.id in kept]  # the file's order
    check_lengths(lm.tokenizer, samples, context_length(lm.model))
    return Scenario(lm, samples, forget, retain)


def format_adapted(lm: LoadedModel, samples: list[Sample], report, should_stop=None) -> LoadedModel:
    """`lm` fine-tuned on the format of `samples` with the facts among them it does not know.

    A model that has not seen a data format learns it from any training on it: an unlearning method's
    retain loss then lowers the held-out NLL as it teaches the format and hides what the forget loss costs
    the held-out facts. Trained first on the facts `lm` gets wrong (`FORMAT_ADAPTATION`; cached), the model
    starts unlearning with the format learned. Those facts are not in the scenario: the knowledge filter of
    `lm` itself, run before, keeps the ones it knows."""
    unknown = unknown_facts(lm, samples, should_stop=should_stop, progress=lambda f, m: report(
        f, f"{PREPARING}: keeping the facts the model knows, {m}"))
    if not unknown:
        raise ValueError(f"{lm.name} knows every fact: none is left to adapt it to the format with")
    return finetuned(lm, unknown, FORMAT_ADAPTATION, should_stop=should_stop, progress=lambda f, m: report(
        f, f"{PREPARING}: adapting to the answer format on the {len(unknown)} facts the model does not know, {m}"))


def unknown_facts(lm: LoadedModel, samples: list[Sample], **kw) -> list[Sample]:
    """The samples the knowledge filter of `lm` rejects (`kw`: `known_facts`'s progress and should_stop)."""
    kept = {s.id for s in known_facts(lm.model, lm.tokenizer, samples, **kw)}
    return [s for s in samples if s.id not in kept]


# how the job panel names the stages before a job's first step (the bar shows the stage's own progress)
PREPARING = "before the first step"


def estimate_preparation(ctx: RunContext, forget_fraction: float = DEFAULT.forget_fraction, seed: int = DEFAULT.seed,
                         forget_ids: list[str] | None = None, limit: int | None = None, known_filter: bool = True,
                         samples: list[Sample] | None = None, need_retain: bool = True, probe: int = 8) -> dict:
    """What `prepare_scenario` with these arguments still has to do before a job's first step, without
    doing it: {"stages": [{"stage", "seconds", "work"}], "seconds"}. Fine-tuning that is not cached, at
    the rates of a training probe; the knowledge filter's questions with no cached or shipped answer, at
    the rate of answering `probe` of them now (their answers are cached: nothing is lost)."""
    lm, data = ctx.lm, ctx.dataset
    samples, forget, retain = _candidates(data, forget_fraction, seed, forget_ids, limit, samples)
    stages = []
    if needs_finetuning(data):
        if cached_folder(lm, samples) is None:
            stages.append({"stage": "fine-tuning on the scenario", "seconds": finetune_seconds(lm, samples),
                           "work": f"{len(samples)} samples"})
    if needs_format_adaptation(data):
        todo = unanswered(lm.model, samples)
        if todo:  # which facts it knows is not answered yet: adapting on all of them bounds the time
            stages.append({"stage": "adapting to the answer format", "work": f"at most {len(samples)} samples",
                           "seconds": finetune_seconds(lm, samples, FORMAT_ADAPTATION)})
        else:
            unknown = unknown_facts(lm, samples)
            if unknown and cached_folder(lm, unknown, FORMAT_ADAPTATION) is None:
                stages.append({"stage": "adapting to the answer format", "work": f"{len(unknown)} samples",
                               "seconds": finetune_seconds(lm, unknown, FORMAT_ADAPTATION)})
    if needs_knowledge_filter(data) and known_filter and not needs_finetuning(data):
        todo = unanswered(lm.model, forget + (retain if need_retain else []))
        if todo:
            t0 = time.perf_counter()
            known_facts(lm.model, lm.tokenizer, todo[:probe], batch_size=probe)
            rate = (time.perf_counter() - t0) / len(todo[:probe])
            stages.append({"stage": "keeping the facts the model knows", "seconds": rate * len(todo[probe:]),
                           "work": f"{len(todo)} questions without a cached answer (timed on {len(todo[:probe])})"})
    return {"stages": stages, "seconds": sum(x["seconds"] for x in stages)}


# preparation that takes longer than this is estimated for an "Estimate" instead of done
PREPARE_INLINE_S = 10.0


def scenario_for_estimate(ctx: RunContext, forget_fraction: float = DEFAULT.forget_fraction, seed: int = DEFAULT.seed,
                          forget_ids: list[str] | None = None, limit: int | None = None,
                          need_retain: bool = True) -> tuple[Scenario, dict]:
    """(the scenario a cost estimate is computed on, `estimate_preparation`'s result). When preparing
    takes under PREPARE_INLINE_S it is done (the estimate sees the exact forget and retain sets);
    otherwise the estimate sees the candidates before fine-tuning and the knowledge filter (at least as
    many samples as the real run: an upper bound) and the preparation is only counted."""
    samples, forget, retain = _candidates(ctx.dataset, forget_fraction, seed, forget_ids, limit)
    prep = estimate_preparation(ctx, forget_fraction, seed, forget_ids, samples=samples, need_retain=need_retain)
    if prep["seconds"] <= PREPARE_INLINE_S:
        return prepare_scenario(ctx, forget_fraction, seed, forget_ids, samples=samples, need_retain=need_retain), prep
    return Scenario(ctx.lm, samples, forget, retain if need_retain else []), {**prep, "upper_bound": True}


def _candidates(data: str, forget_fraction: float, seed: int, forget_ids: list[str] | None, limit: int | None,
                samples: list[Sample] | None = None) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(the dataset's first `limit` samples, the forget and retain candidates) before fine-tuning and the
    knowledge filter, as `prepare_scenario` splits them."""
    samples = load_data(data) if samples is None else samples
    samples = samples[:limit] if limit else samples
    return (samples, *split_forget_retain(samples, forget_fraction, seed, forget_ids))


def describe_preparation(e: dict) -> str:
    """One line: what runs before the first step and how long it should take."""
    if not e["stages"]:
        return f"{PREPARING}: nothing to prepare (fine-tuning and the knowledge filter cached or not needed)"
    return f"{PREPARING}: about {e['seconds'] / 60:.1f} min (" + "; ".join(
        f"{x['stage']}: {x['work']}, {x['seconds'] / 60:.1f} min" for x in e["stages"]) + ")" + (
        "; the estimates below count every candidate sample before it (an upper bound)" if e.get("upper_bound") else "")
