"""A scoring run: per-sample metrics, edge attribution, circuit and its statistics, into the workspace
(its batch files: `score_files`, whose readers are re-exported here).

Resumable: each batch's tensors are written atomically first, then its rows in SQLite; a sample
counts as done once its row exists, so an interrupted run redoes at most one batch.
"""
from __future__ import annotations

import hashlib
import json
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace

import torch

from cud_core.data.samples import Sample, sample_key
from cud_core.engine.attribution import attribute_metrics, check_arguments, mean_outputs
from cud_core.engine.circuits import BINARISE, as_vector, binarise, circuit_statistics, faithfulness
from cud_core.engine.graph import Graph
from cud_core.engine.memory import scoring_batch, token_lengths
from cud_core.engine.metrics import chunks, compute_metrics
from cud_core.engine.models import adopt_legacy_runs, model_fingerprint
from cud_core.engine.stopping import Interrupted, interruptible
from cud_core.pipeline.context import RunContext
from cud_core.store.score_files import (
    compact,
    drop_orphan_batches,
    write_batch,
)
from cud_core.store.workspace import Workspace

RUN_KIND = "score"


@dataclass
class ScoreSettings:
    method: str = "eap-ig-inputs"
    steps: int = 5
    baseline: str = "zero"
    metric: str = "logprob"
    batch_size: int = 8
    binarise: str = "greedy"
    n_edges: int = 75
    store: str = "float16"          # or "topk:K" (sparse: the K largest |scores| per sample)
    faithfulness: bool = False
    generation: bool = True

    def validate(self) -> None:
        check_arguments(self.method, self.steps, self.baseline, self.metric, self.batch_size)
        if self.binarise not in BINARISE:
            raise ValueError(f"unknown binarise {self.binarise!r}; choose one of {', '.join(BINARISE)}")
        if self.n_edges < 1:
            raise ValueError(f"the circuit size must be at least 1 (got {self.n_edges})")
        if self.store != "float16" and not (self.store.startswith("topk:") and self.store[5:].isdigit()):
            raise ValueError(f"unknown score storage {self.store!r}; use float16 or topk:K (e.g. topk:5000)")

    def config(self) -> dict:
        return asdict(self)

    @classmethod
    def of_run(cls, run: dict) -> "ScoreSettings":
        """The settings a score run, or a calibration's scoring, used (keys it does not know are left out)."""
        config = run["config"]["score"] if run["kind"] == "calibrate" else run["config"]
        return cls(**{k: config[k] for k in cls.__dataclass_fields__ if k in config})


def content_hash(samples: list[Sample]) -> str:
    return hashlib.sha256(json.dumps([sample_key(s) for s in samples]).encode()).hexdigest()[:16]


def score_run(ctx: RunContext, samples: list[Sample], settings: ScoreSettings, extra_config: dict | None = None,
              reference: list[Sample] | None = None) -> str:
    """Score `samples` with `ctx.lm` into a (new or resumed) run of `ctx.workspace`; returns the run id.

    A run is resumed (or reused when done) exactly when the settings, the samples' content and the model
    weights are the same, whoever started it.
    `reference`: the dataset the `mean` baseline averages over (default: `samples`).
    `ctx.executor`: where batches are computed (`cud_core.pipeline.executor`; default here, in this process);
    results are identical either way and only this process writes the workspace."""
    return score_runs(ctx, samples, [settings], extra_config, reference)[0][0]


def score_runs(ctx: RunContext, samples: list[Sample], settings: list[ScoreSettings], extra_config: dict | None = None,
               reference: list[Sample] | None = None) -> tuple[list[str | None], bool]:
    """`score_run` for settings that differ only in the metric, from the same attribution passes
    (`attribution.attribute_metrics`): one run each, written together; `logprob`'s scores are those of
    its own run, `kl`'s equal to float rounding. Runs that stand at different points (one resumed, one
    new) are scored one after the other instead. Returns (the run ids, whether they shared their
    passes); an id is None for a run not started because a Stop came while another job held it."""
    for s in settings:
        s.validate()
    if any(replace(s, metric="") != replace(settings[0], metric="") for s in settings) or \
            len({s.metric for s in settings}) != len(settings):
        raise ValueError("runs scored together must differ in the metric only")
    lm, workspace, dataset = ctx.lm, ctx.workspace, ctx.dataset
    reference = reference or samples
    # what the results depend on, and nothing else: an identical run from the app, the command line or
    # a calibration is found and reused; `extra_config` (how the samples were chosen) is only recorded
    adopt_legacy_runs(workspace, lm.model)
    configs = [run_config(lm, samples, s, reference) for s in settings]
    first = settings[0]
    batch, note = scoring_batch(lm, samples, first.batch_size, first.method, first.steps, len(settings))
    if note:
        ctx.report(0.0, f"memory: {note}")
    with ExitStack() as locks:
        # every lock before any run is made (in one order, so two jobs cannot each hold one and wait)
        for config in sorted(configs, key=lambda c: json.dumps(c, sort_keys=True, default=str)):
            acquired = locks.enter_context(workspace.run_lock(RUN_KIND, lm.name, dataset, config,
                                                              on_wait=lambda m: ctx.report(0.0, m),
                                                              should_stop=ctx.should_stop))
            if not acquired:  # stopped while another job computed the same run
                return [workspace.find_run(RUN_KIND, lm.name, dataset, c) for c in configs], False
        run_ids = []
        for config in configs:
            run_id = workspace.find_run(RUN_KIND, lm.name, dataset, config)
            if run_id is None:
                run_id = workspace.create_run(RUN_KIND, lm.name, dataset, config)
                workspace.save_samples(run_id, samples)
                workspace.save_artifact(run_id, "context", extra_config or {})
            run_ids.append(run_id)
        # a lower batch gives the same scores: the run keeps the requested size in its settings
        lowered = [replace(s, batch_size=batch) for s in settings]
        try:
            done = [drop_orphan_batches(workspace, r, workspace.done_sample_ids(r)) for r in run_ids]
            together = all(d == done[0] for d in done)
            for part in [list(range(len(run_ids)))] if together else [[i] for i in range(len(run_ids))]:
                if part[0] > 0 and ctx.stop_requested():
                    for i in part:
                        workspace.set_status(run_ids[i], "stopped", f"{len(done[i])}/{len(samples)} samples")
                    continue
                _score_all(ctx, samples, [lowered[i] for i in part], [run_ids[i] for i in part], done[part[0]],
                           reference)
        except Exception as exc:
            for r in run_ids:
                if workspace.get_run(r)["status"] != "done":
                    workspace.set_status(r, "failed", f"{type(exc).__name__}: {exc}"[:500])
            raise
    return run_ids, together


def run_config(lm, samples: list[Sample], settings: ScoreSettings, reference: list[Sample]) -> dict:
    """What a scoring run's results depend on: the key it is found (and resumed, or reused) by."""
    config = {**settings.config(), "samples_hash": content_hash(samples),
              "model_fingerprint": model_fingerprint(lm.model)}
    if settings.baseline == "mean":
        config["reference_hash"] = content_hash(reference)
    return config


def _score_all(ctx: RunContext, samples, settings, run_ids, done, reference) -> None:
    """Score the samples not in `done` into `run_ids` (one per settings; all have `done` stored)."""
    lm, workspace, report, executor = ctx.lm, ctx.workspace, ctx.report, ctx.executor
    # batches of samples of similar length pad less (the world-facts forget set in batches of 8: 16% pad
    # tokens in sample order, 2% sorted); a sample's scores do not depend on its batch (to float rounding)
    pending = [s for s in samples if s.id not in done]
    todo = [s for _, s in sorted(zip(token_lengths(lm.tokenizer, pending), pending), key=lambda x: x[0])]
    if done:
        report(len(done) / len(samples), f"resuming run {', '.join(run_ids)}: {len(done)} samples already scored")
    graph = Graph.from_model(lm.model)
    for run_id in run_ids:
        workspace.set_status(run_id, "running", f"{len(done)}/{len(samples)} samples")
        workspace.save_artifact(run_id, "graph", {"n_layers": graph.n_layers, "n_heads": graph.n_heads,
                                                  "parallel": graph.parallel})
    first = settings[0]
    means = None
    if first.baseline == "mean" and todo:
        report(len(done) / len(samples), "averaging node outputs over the dataset (mean baseline)")
        means = mean_outputs(lm.model, lm.tokenizer, reference, graph, first.batch_size)
    t0, n_done = time.time(), len(done)
    if todo:
        report(n_done / len(samples), f"{n_done}/{len(samples)} samples; scoring in batches of "
                                      f"{first.batch_size} (progress after each batch)")

    def status(state):
        message = f"{len(samples)} samples" if state == "done" else f"{n_done}/{len(samples)} samples"
        for run_id in run_ids:
            workspace.set_status(run_id, state, message)

    def written(n, extra=""):
        nonlocal n_done
        n_done += n
        rate = (n_done - len(done)) / (time.time() - t0)
        report(n_done / len(samples), f"{n_done}/{len(samples)} samples, {rate:.2f} samples/s, about "
                                      f"{(len(samples) - n_done) / rate:.0f} s left{extra}")

    if executor is not None and executor.remote:  # batches on the cluster; this process is the one writer
        units = [(group, settings, graph, means) for group in chunks(todo, first.batch_size)]
        for batches in executor.map(compute_batch, units, should_stop=ctx.should_stop,
                                    progress=lambda m: report(n_done / len(samples), m)):
            _write_batches(workspace, run_ids, batches)
            written(len(batches[0]["ids"]), f"; {executor.status()}")
        status("stopped" if n_done < len(samples) else "done")
        return
    for group in chunks(todo, first.batch_size):
        if ctx.stop_requested():
            status("stopped")
            return
        try:
            with interruptible(lm.model, ctx.should_stop):  # a Stop takes effect inside the batch
                _score_batch(lm, group, settings, workspace, run_ids, graph, means)
        except Interrupted:
            status("stopped")
            return
        written(len(group))
    status("done")


def _score_batch(lm, group, settings, workspace, run_ids, graph, means) -> None:
    _write_batches(workspace, run_ids, compute_batch(lm, (group, settings, graph, means)))


def _write_batches(workspace: Workspace, run_ids: list[str], batches: list[dict]) -> None:
    for run_id, batch in zip(run_ids, batches):
        write_batch(workspace, run_id, batch)


def compute_batch(lm, unit) -> list[dict]:
    """One batch's metrics, edge scores and circuits, ready to write (what an executor's worker returns:
    compact tensors and plain rows; nothing touches the workspace). `unit` = (samples, settings, graph,
    means), `settings` a list differing in the metric only (`score_runs`): one batch per settings."""
    group, settings, graph, means = unit
    first = settings[0]
    t0 = time.perf_counter()
    rows = compute_metrics(lm.model, lm.tokenizer, group, batch_size=first.batch_size,
                           generate=first.generation)
    scores = attribute_metrics(lm.model, lm.tokenizer, group, method=first.method, steps=first.steps,
                               baseline=first.baseline, metrics=tuple(s.metric for s in settings),
                               batch_size=first.batch_size, graph=graph, means=means)
    out = [_batch_of(lm, group, s, graph, means, rows, scores[s.metric]) for s in settings]
    for b in out:
        b["compute_s"] = time.perf_counter() - t0
    return out


def _batch_of(lm, group, settings, graph, means, rows, scores) -> dict:
    """One settings' batch from the shared per-sample rows and its edge scores."""
    edge_tensors, circuit_tensors, results = {}, {}, {}
    for i, (sample, row, s) in enumerate(zip(group, rows, scores)):
        circuit = binarise(s, graph, settings.binarise, settings.n_edges)
        stats = circuit_statistics(circuit, graph, s)
        if settings.faithfulness:
            stats["faithfulness"] = faithfulness(lm.model, lm.tokenizer, sample, circuit, graph, settings.baseline,
                                                 means)["faithfulness"]
        vec = as_vector(s, graph)
        edge_tensors.update(compact(i, vec, settings.store))
        circuit_tensors[f"e{i}.idx"] = as_vector(circuit, graph).nonzero().flatten().to(torch.int32)
        results[sample.id] = {**{k: v for k, v in row.items() if k != "id"}, "circuit": stats,
                              "score_norm": float(vec.abs().sum())}
    return {"ids": [s.id for s in group], "store": settings.store, "n_edges": graph.n_edges,
            "scores": edge_tensors, "circuits": circuit_tensors, "results": results}
