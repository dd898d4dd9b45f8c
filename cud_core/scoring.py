"""A scoring run: per-sample metrics, edge attribution, circuit and its statistics, into the workspace.

Resumable: each batch's tensors are written atomically first, then its rows in SQLite; a sample
counts as done once its row exists, so an interrupted run redoes at most one batch.
"""
from __future__ import annotations

import hashlib
import json
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch

from .attribution import attribute_metrics, check_arguments, mean_outputs
from .circuits import BINARISE, as_vector, binarise, circuit_statistics, faithfulness
from .data import Sample
from .graph import Graph
from .memory import scoring_batch
from .metrics import chunks, compute_metrics
from .models import model_fingerprint
from .stopping import Interrupted, interruptible
from .store import Workspace

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
    return hashlib.sha256(json.dumps([[s.id, s.question, s.answer] for s in samples]).encode()).hexdigest()[:16]


def score_run(lm, samples: list[Sample], settings: ScoreSettings, workspace: Workspace, dataset: str,
              progress: Callable[[float, str], None] | None = None,
              should_stop: Callable[[], bool] | None = None, extra_config: dict | None = None,
              reference: list[Sample] | None = None, executor=None) -> str:
    """Score `samples` into a (new or resumed) run of `workspace`; returns the run id.

    A run is resumed (or reused when done) exactly when the settings, the samples' content and the model
    weights are the same, whoever started it.
    `reference`: the dataset the `mean` baseline averages over (default: `samples`).
    `executor`: where batches are computed (`cud_core.executor`; default here, in this process); results
    are identical either way and only this process writes the workspace."""
    return score_runs(lm, samples, [settings], workspace, dataset, progress, should_stop, extra_config,
                      reference, executor)[0]


def score_runs(lm, samples: list[Sample], settings: list[ScoreSettings], workspace: Workspace, dataset: str,
               progress: Callable[[float, str], None] | None = None,
               should_stop: Callable[[], bool] | None = None, extra_config: dict | None = None,
               reference: list[Sample] | None = None, executor=None) -> list[str | None]:
    """`score_run` for settings that differ only in the metric, from the same attribution passes
    (`attribution.attribute_metrics`): one run each, the first run's scores exactly what `score_run`
    gives, the others equal to float rounding. Runs that stand at different points (one resumed, one
    new) are scored one after the other instead. Returns the run ids (None for a run not started
    because a Stop came while another job held it)."""
    for s in settings:
        s.validate()
    if any(replace(s, metric="") != replace(settings[0], metric="") for s in settings) or \
            len({s.metric for s in settings}) != len(settings):
        raise ValueError("runs scored together must differ in the metric only")
    report = progress or (lambda f, m: None)
    reference = reference or samples
    # what the results depend on, and nothing else: an identical run from the app, the command line or
    # a calibration is found and reused; `extra_config` (how the samples were chosen) is only recorded
    configs = [run_config(lm, samples, s, reference) for s in settings]
    first = settings[0]
    batch, note = scoring_batch(lm, samples, first.batch_size, first.method, first.steps, len(settings))
    if note:
        report(0.0, f"memory: {note}")
    with ExitStack() as locks:
        run_ids = []
        for config in configs:
            acquired = locks.enter_context(workspace.run_lock(RUN_KIND, lm.name, dataset, config,
                                                              on_wait=lambda m: report(0.0, m), should_stop=should_stop))
            if not acquired:  # stopped while another job computed the same run
                return [workspace.find_run(RUN_KIND, lm.name, dataset, c) for c in configs]
            run_id = workspace.find_run(RUN_KIND, lm.name, dataset, config)
            if run_id is None:
                run_id = workspace.create_run(RUN_KIND, lm.name, dataset, config)
                workspace.save_samples(run_id, samples)
                workspace.save_artifact(run_id, "context", extra_config or {})
            run_ids.append(run_id)
        # a lower batch gives the same scores: the run keeps the requested size in its settings
        lowered = [replace(s, batch_size=batch) for s in settings]
        done = [_drop_orphan_batches(workspace, r, workspace.done_sample_ids(r)) for r in run_ids]
        together = [list(range(len(run_ids)))] if all(d == done[0] for d in done) else [[i] for i in range(len(run_ids))]
        for part in together:
            runs = [run_ids[i] for i in part]
            try:
                _score_all(lm, samples, [lowered[i] for i in part], workspace, runs, done[part[0]], reference,
                           report, should_stop, executor)
            except Exception as exc:
                for r in runs:
                    workspace.set_status(r, "failed", f"{type(exc).__name__}: {exc}"[:500])
                raise
    return run_ids


def run_config(lm, samples: list[Sample], settings: ScoreSettings, reference: list[Sample]) -> dict:
    """What a scoring run's results depend on: the key it is found (and resumed, or reused) by."""
    config = {**settings.config(), "samples_hash": content_hash(samples), "model_fingerprint": model_fingerprint(lm.model)}
    if settings.baseline == "mean":
        config["reference_hash"] = content_hash(reference)
    return config


def _score_all(lm, samples, settings, workspace, run_ids, done, reference, report, should_stop,
               executor=None) -> None:
    """Score the samples not in `done` into `run_ids` (one per settings; all have `done` stored)."""
    todo = [s for s in samples if s.id not in done]
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

    unit_settings = settings if len(settings) > 1 else first
    if executor is not None and executor.remote:  # batches on the cluster; this process is the one writer
        units = [(group, unit_settings, graph, means) for group in chunks(todo, first.batch_size)]
        for out in executor.map(compute_batch, units, should_stop=should_stop,
                                progress=lambda m: report(n_done / len(samples), m)):
            out = out if isinstance(out, list) else [out]
            for run_id, b in zip(run_ids, out):
                write_batch(workspace, run_id, b)
            written(len(out[0]["ids"]), f"; {executor.status()}")
        status("stopped" if n_done < len(samples) else "done")
        return
    for group in chunks(todo, first.batch_size):
        if should_stop and should_stop():
            status("stopped")
            return
        try:
            with interruptible(lm.model, should_stop):  # a Stop takes effect inside the batch
                _score_batch(lm, group, unit_settings, workspace, run_ids, graph, means)
        except Interrupted:
            status("stopped")
            return
        written(len(group))
    status("done")


def _score_batch(lm, group, settings, workspace, run_ids, graph, means) -> None:
    out = compute_batch(lm, (group, settings, graph, means))
    for run_id, b in zip(run_ids, out if isinstance(out, list) else [out]):
        write_batch(workspace, run_id, b)


def compute_batch(lm, unit) -> dict | list[dict]:
    """One batch's metrics, edge scores and circuits, ready to write (what an executor's worker returns:
    compact tensors and plain rows; nothing touches the workspace). `unit` = (samples, settings, graph,
    means); `settings` a list (differing in the metric only, `score_runs`): one batch per settings."""
    group, settings, graph, means = unit
    many = isinstance(settings, list)
    settings = settings if many else [settings]
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
    return out if many else out[0]


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
        edge_tensors.update(_compact(i, vec, settings.store))
        circuit_tensors[f"e{i}.idx"] = as_vector(circuit, graph).nonzero().flatten().to(torch.int32)
        results[sample.id] = {**{k: v for k, v in row.items() if k != "id"}, "circuit": stats,
                              "score_norm": float(vec.abs().sum())}
    return {"ids": [s.id for s in group], "store": settings.store, "n_edges": graph.n_edges,
            "scores": edge_tensors, "circuits": circuit_tensors, "results": results}


def write_batch(workspace: Workspace, run_id: str, batch: dict) -> None:
    """Store a computed batch: tensors first (atomic files), then its rows (a sample counts as done
    once its row exists)."""
    ids = batch["ids"]
    name = _batch_name(ids)
    workspace.save_tensors(run_id, f"scores-{name}", batch["scores"], {"store": batch["store"],
                                                                      "n_edges": batch["n_edges"],
                                                                      **_batch_metadata(ids)})
    workspace.save_tensors(run_id, f"circuits-{name}", batch["circuits"], _batch_metadata(ids))
    workspace.save_results(run_id, batch["results"])


# Batch files key their tensors by position ("e0", "e0.idx", ...) and list the batch's sample ids, in
# order, as JSON in the file's metadata: an id is never parsed out of a key, so any id round-trips.
FORMAT = "2"


def _batch_metadata(ids: list[str]) -> dict:
    return {"format": FORMAT, "ids": json.dumps(ids)}


def _compact(i: int, vec: torch.Tensor, store: str) -> dict[str, torch.Tensor]:
    if store == "float16":
        return {f"e{i}": vec.to(torch.float16)}
    k = min(int(store[5:]), len(vec))
    idx = vec.abs().topk(k).indices.sort().values
    return {f"e{i}.idx": idx.to(torch.int32), f"e{i}.val": vec[idx].to(torch.float16)}


def _header(path) -> tuple[list[str], bool]:
    """The sample ids a batch file holds, in order, and whether it predates format 2 (header only)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") == FORMAT:
            return json.loads(meta["ids"]), False
        # format 1 keyed tensors by `id`, `id::idx`, `id::val`
        return list(dict.fromkeys(k[:-5] if k.endswith(("::idx", "::val")) else k for k in f.keys())), True


def _read_batch(workspace: Workspace, run_id: str, name: str) -> tuple[list[str], dict[str, torch.Tensor]]:
    """A batch file's sample ids and its tensors under format-2 keys (older files are renamed)."""
    ids, legacy = _header(workspace.tensor_path(run_id, name))
    tensors = workspace.load_tensors(run_id, name)
    if not legacy:
        return ids, tensors
    dense = "" if name.startswith("scores") else ".idx"  # format 1 stored a circuit as {id: edge indices}
    renamed = {}
    for i, sid in enumerate(ids):
        for old, new in ((sid, f"e{i}{dense}"), (f"{sid}::idx", f"e{i}.idx"), (f"{sid}::val", f"e{i}.val")):
            if old in tensors:
                renamed[new] = tensors[old]
    return ids, renamed


def _unpack(tensors: dict[str, torch.Tensor], ids: list[str], n_edges: int, dtype=torch.float32) -> dict:
    """sample id → dense vector over real edges (float scores, or a bool circuit from edge indices)."""
    out = {}
    for i, sid in enumerate(ids):
        if f"e{i}" in tensors:
            out[sid] = tensors[f"e{i}"].to(dtype)
            continue
        vec = torch.zeros(n_edges, dtype=dtype)
        vec[tensors[f"e{i}.idx"].long()] = tensors[f"e{i}.val"].to(dtype) if f"e{i}.val" in tensors else True
        out[sid] = vec
    return out


def _drop_orphan_batches(workspace: Workspace, run_id: str, done: set[str]) -> set[str]:
    """Tensor files of a batch whose rows never reached SQLite (a crash in between) are removed (that
    batch is scored again), so are temp files a kill left inside a write. Returns the ids whose rows
    and tensors are both stored: the samples that are really done."""
    workspace.remove_temp_files(run_id)
    files = _file_ids(workspace, run_id)
    for path in _files(workspace, run_id, "circuits"):
        if path.stem[len("circuits-"):] not in files:  # its scores file is gone: the batch is redone
            path.unlink()
    stored = set()
    for name, ids in files.items():
        circuits = workspace.tensor_path(run_id, f"circuits-{name}")
        if any(i not in done for i in ids) or not circuits.is_file():
            for prefix in ("scores", "circuits"):
                path = workspace.tensor_path(run_id, f"{prefix}-{name}")
                if path.is_file():
                    path.unlink()
        else:
            stored.update(ids)
    return done & stored


def _files(workspace: Workspace, run_id: str, prefix: str) -> list:
    """The run's batch files of `prefix` ("scores" or "circuits"), in name order."""
    folder = workspace.root / "tensors" / run_id
    return sorted(folder.glob(f"{prefix}-*.safetensors")) if folder.is_dir() else []


def _file_ids(workspace: Workspace, run_id: str) -> dict[str, list[str]]:
    return {path.stem[len("scores-"):]: _header(path)[0] for path in _files(workspace, run_id, "scores")}


def _batch_name(ids: list[str]) -> str:
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:12]


def _batches(workspace: Workspace, run_id: str, prefix: str):
    """(ids, tensors) of every batch file of `prefix` ("scores" or "circuits")."""
    for path in _files(workspace, run_id, prefix):
        yield _read_batch(workspace, run_id, path.stem)


def load_edge_scores(workspace: Workspace, run_id: str, n_edges: int) -> dict[str, torch.Tensor]:
    """sample id → float32 score vector over real edges (zeros where top-k storage dropped them)."""
    out: dict[str, torch.Tensor] = {}
    for ids, tensors in _batches(workspace, run_id, "scores"):
        out.update(_unpack(tensors, ids, n_edges))
    return out


def graph_of(workspace: Workspace, run_id: str) -> Graph:
    """The graph layout a scoring run used (no model needed)."""
    g = workspace.load_artifact(run_id, "graph")
    if g is None:
        raise ValueError(f"run {run_id} has no stored graph layout")
    return Graph(g["n_layers"], g["n_heads"], g["parallel"])


def has_edge_scores(workspace: Workspace, run_id: str) -> bool:
    """Whether the run holds edge-score files (a run unpacked from a bundle may not: `bundle`)."""
    return bool(_files(workspace, run_id, "scores"))


def sample_index(workspace: Workspace, run_id: str) -> dict[str, str]:
    """sample id -> the scores file holding it (reads only file headers)."""
    return {sid: f"scores-{name}" for name, ids in _file_ids(workspace, run_id).items() for sid in ids}


def load_sample_scores(workspace: Workspace, run_id: str, sample_id: str, graph: Graph,
                       index: dict[str, str] | None = None) -> torch.Tensor:
    """One sample's dense edge scores [n_forward, n_backward] (float32)."""
    from .circuits import from_vector

    index = index if index is not None else sample_index(workspace, run_id)
    if sample_id not in index:
        raise KeyError(f"sample {sample_id!r} has no stored edge scores in run {run_id}")
    ids, tensors = _read_batch(workspace, run_id, index[sample_id])
    return from_vector(_unpack(tensors, ids, graph.n_edges)[sample_id], graph)


def load_circuits(workspace: Workspace, run_id: str, n_edges: int) -> dict[str, torch.Tensor]:
    """sample id → bool circuit vector over real edges."""
    out = {}
    for ids, tensors in _batches(workspace, run_id, "circuits"):
        out.update(_unpack(tensors, ids, n_edges, torch.bool))
    return out
