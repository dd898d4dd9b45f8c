"""A scoring run: per-sample metrics, edge attribution, circuit and its statistics, into the workspace.

Resumable: each batch's tensors are written atomically first, then its rows in SQLite; a sample
counts as done once its row exists, so an interrupted run redoes at most one batch.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .attribution import attribute, check_arguments, mean_outputs
from .circuits import BINARISE, as_vector, binarise, circuit_statistics, faithfulness
from .data import Sample
from .graph import Graph
from .metrics import chunks, compute_metrics
from .models import model_fingerprint
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


def content_hash(samples: list[Sample]) -> str:
    return hashlib.sha256(json.dumps([[s.id, s.question, s.answer] for s in samples]).encode()).hexdigest()[:16]


def score_run(lm, samples: list[Sample], settings: ScoreSettings, workspace: Workspace, dataset: str,
              progress: Callable[[float, str], None] | None = None,
              should_stop: Callable[[], bool] | None = None, extra_config: dict | None = None,
              reference: list[Sample] | None = None) -> str:
    """Score `samples` into a (new or resumed) run of `workspace`; returns the run id.

    A run is resumed only when the settings, the samples' content and the model weights are the same.
    `reference`: the dataset the `mean` baseline averages over (default: `samples`)."""
    settings.validate()
    report = progress or (lambda f, m: None)
    reference = reference or samples
    config = {**settings.config(), **(extra_config or {}), "samples_hash": content_hash(samples),
              "model_fingerprint": model_fingerprint(lm.model)}
    if settings.baseline == "mean":
        config["reference_hash"] = content_hash(reference)
    run_id = workspace.find_run(RUN_KIND, lm.name, dataset, config)
    if run_id is None:
        run_id = workspace.create_run(RUN_KIND, lm.name, dataset, config)
        workspace.save_samples(run_id, samples)
    done = workspace.done_sample_ids(run_id)
    _drop_orphan_batches(workspace, run_id, done)
    todo = [s for s in samples if s.id not in done]
    if done:
        report(len(done) / len(samples), f"resuming run {run_id}: {len(done)} samples already scored")
    workspace.set_status(run_id, "running", f"{len(done)}/{len(samples)} samples")
    graph = Graph.from_model(lm.model)
    workspace.save_artifact(run_id, "graph", {"n_layers": graph.n_layers, "n_heads": graph.n_heads,
                                              "parallel": graph.parallel})
    means = None
    if settings.baseline == "mean" and todo:
        report(len(done) / len(samples), "averaging node outputs over the dataset (mean baseline)")
        means = mean_outputs(lm.model, lm.tokenizer, reference, graph, settings.batch_size)
    t0, n_done = time.time(), len(done)
    for group in chunks(todo, settings.batch_size):
        if should_stop and should_stop():
            workspace.set_status(run_id, "stopped", f"{n_done}/{len(samples)} samples")
            return run_id
        _score_batch(lm, group, settings, workspace, run_id, graph, means)
        n_done += len(group)
        rate = (n_done - len(done)) / (time.time() - t0)
        report(n_done / len(samples), f"{n_done}/{len(samples)} samples, {rate:.2f} samples/s")
    workspace.set_status(run_id, "done", f"{len(samples)} samples")
    return run_id


def _score_batch(lm, group, settings, workspace, run_id, graph, means) -> None:
    rows = compute_metrics(lm.model, lm.tokenizer, group, batch_size=settings.batch_size,
                           generate=settings.generation)
    scores = attribute(lm.model, lm.tokenizer, group, method=settings.method, steps=settings.steps,
                       baseline=settings.baseline, metric=settings.metric, batch_size=settings.batch_size,
                       graph=graph, means=means)
    edge_tensors, circuit_tensors, results = {}, {}, {}
    for sample, row, s in zip(group, rows, scores):
        circuit = binarise(s, graph, settings.binarise, settings.n_edges)
        stats = circuit_statistics(circuit, graph, s)
        if settings.faithfulness:
            stats["faithfulness"] = faithfulness(lm.model, lm.tokenizer, sample, circuit, graph, settings.baseline,
                                                 means)["faithfulness"]
        vec = as_vector(s, graph)
        edge_tensors.update(_compact(sample.id, vec, settings.store))
        circuit_tensors[sample.id] = as_vector(circuit, graph).nonzero().flatten().to(torch.int32)
        row.pop("id")
        results[sample.id] = {**row, "circuit": stats, "score_norm": float(vec.abs().sum())}
    name = _batch_name([s.id for s in group])
    workspace.save_tensors(run_id, f"scores-{name}", edge_tensors, {"store": settings.store,
                                                                    "n_edges": graph.n_edges})
    workspace.save_tensors(run_id, f"circuits-{name}", circuit_tensors)
    workspace.save_results(run_id, results)


def _compact(sample_id: str, vec: torch.Tensor, store: str) -> dict[str, torch.Tensor]:
    if store == "float16":
        return {sample_id: vec.to(torch.float16)}
    k = min(int(store[5:]), len(vec))
    idx = vec.abs().topk(k).indices.sort().values
    return {f"{sample_id}::idx": idx.to(torch.int32), f"{sample_id}::val": vec[idx].to(torch.float16)}


def _drop_orphan_batches(workspace: Workspace, run_id: str, done: set[str]) -> None:
    """Tensor files of a batch whose rows never reached SQLite (a crash in between) are removed;
    that batch is scored again."""
    for name, ids in _file_ids(workspace, run_id).items():
        if any(i not in done for i in ids):
            for prefix in ("scores", "circuits"):
                path = workspace.tensor_path(run_id, f"{prefix}-{name}")
                if path.is_file():
                    path.unlink()


def _file_ids(workspace: Workspace, run_id: str) -> dict[str, set[str]]:
    from safetensors import safe_open

    folder = workspace.root / "tensors" / run_id
    out = {}
    for path in sorted(folder.glob("scores-*.safetensors")) if folder.is_dir() else []:
        with safe_open(str(path), "pt") as f:
            out[path.stem[len("scores-"):]] = {k.split("::")[0] for k in f.keys()}
    return out


def _batch_name(ids: list[str]) -> str:
    return hashlib.sha1("\x00".join(ids).encode()).hexdigest()[:12]


def _tensor_files(workspace: Workspace, run_id: str, prefix: str):
    folder = workspace.root / "tensors" / run_id
    names = sorted(p.stem for p in folder.glob(f"{prefix}-*.safetensors")) if folder.is_dir() else []
    for name in names:
        yield workspace.load_tensors(run_id, name)


def load_edge_scores(workspace: Workspace, run_id: str, n_edges: int) -> dict[str, torch.Tensor]:
    """sample id → float32 score vector over real edges (zeros where top-k storage dropped them)."""
    out: dict[str, torch.Tensor] = {}
    for tensors in _tensor_files(workspace, run_id, "scores"):
        for key, value in tensors.items():
            if "::" not in key:
                out[key] = value.float()
            elif key.endswith("::idx"):
                sid = key[:-5]
                vec = torch.zeros(n_edges)
                vec[value.long()] = tensors[f"{sid}::val"].float()
                out[sid] = vec
    return out


def graph_of(workspace: Workspace, run_id: str) -> Graph:
    """The graph layout a scoring run used (no model needed)."""
    g = workspace.load_artifact(run_id, "graph")
    if g is None:
        raise ValueError(f"run {run_id} has no stored graph layout")
    return Graph(g["n_layers"], g["n_heads"], g["parallel"])


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
    tensors = workspace.load_tensors(run_id, index[sample_id])
    if sample_id in tensors:
        vec = tensors[sample_id].float()
    else:
        vec = torch.zeros(graph.n_edges)
        vec[tensors[f"{sample_id}::idx"].long()] = tensors[f"{sample_id}::val"].float()
    return from_vector(vec, graph)


def load_circuits(workspace: Workspace, run_id: str, n_edges: int) -> dict[str, torch.Tensor]:
    """sample id → bool circuit vector over real edges."""
    out = {}
    for tensors in _tensor_files(workspace, run_id, "circuits"):
        for sid, idx in tensors.items():
            vec = torch.zeros(n_edges, dtype=torch.bool)
            vec[idx.long()] = True
            out[sid] = vec
    return out
