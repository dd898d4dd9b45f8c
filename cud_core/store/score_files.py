"""A scoring run's batch files: one safetensors file of edge scores and one of circuits per batch,
written atomically before the batch's rows reach SQLite (`scoring`), and read back by sample id.
"""
from __future__ import annotations

import hashlib
import json

import torch

from cud_core.engine.circuits import from_vector
from cud_core.engine.graph import Graph
from cud_core.store.workspace import Workspace, older_version_error


def write_batch(workspace: Workspace, run_id: str, batch: dict) -> None:
    """Store a computed batch: tensors first (atomic files), then its rows (a sample counts as done
    once its row exists)."""
    ids = batch["ids"]
    name = _batch_name(ids)
    workspace.save_tensors(run_id, f"scores-{name}", batch["scores"], {"store": batch["store"],
                                                                      "n_edges": batch["n_edges"],
                                                                      **batch_metadata(ids)})
    workspace.save_tensors(run_id, f"circuits-{name}", batch["circuits"], batch_metadata(ids))
    workspace.save_results(run_id, batch["results"])


# Batch files key their tensors by position ("e0", "e0.idx", ...) and list the batch's sample ids, in
# order, as JSON in the file's metadata: an id is never parsed out of a key, so any id round-trips.
FORMAT = "2"


def batch_metadata(ids: list[str]) -> dict:
    return {"format": FORMAT, "ids": json.dumps(ids)}


def compact(i: int, vec: torch.Tensor, store: str) -> dict[str, torch.Tensor]:
    if store == "float16":
        return {f"e{i}": vec.to(torch.float16)}
    k = min(int(store[5:]), len(vec))
    idx = vec.abs().topk(k).indices.sort().values
    return {f"e{i}.idx": idx.to(torch.int32), f"e{i}.val": vec[idx].to(torch.float16)}


def _header(path) -> list[str]:
    """The sample ids a batch file holds, in order (reads the header only)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise older_version_error(f"score file {path} (format {meta.get('format', '1')})", path.parents[2])
    return json.loads(meta["ids"])


def _read_batch(workspace: Workspace, run_id: str, name: str) -> tuple[list[str], dict[str, torch.Tensor]]:
    """A batch file's sample ids and its tensors."""
    return _header(workspace.tensor_path(run_id, name)), workspace.load_tensors(run_id, name)


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


def drop_orphan_batches(workspace: Workspace, run_id: str, done: set[str]) -> set[str]:
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


def stored_ids(workspace: Workspace, run_id: str) -> set[str]:
    """Read-only: the ids whose rows and both tensor files are stored (what `drop_orphan_batches` keeps;
    a run unpacked without its edge scores has none, so rerunning its calibration scores it again)."""
    done = workspace.done_sample_ids(run_id)
    return {i for name, ids in _file_ids(workspace, run_id).items()
            if workspace.tensor_path(run_id, f"circuits-{name}").is_file() for i in ids if i in done}


def _files(workspace: Workspace, run_id: str, prefix: str) -> list:
    """The run's batch files of `prefix` ("scores" or "circuits"), in name order."""
    folder = workspace.root / "tensors" / run_id
    return sorted(folder.glob(f"{prefix}-*.safetensors")) if folder.is_dir() else []


def _file_ids(workspace: Workspace, run_id: str) -> dict[str, list[str]]:
    return {path.stem[len("scores-"):]: _header(path) for path in _files(workspace, run_id, "scores")}


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
        raise ValueError(f"scoring run {run_id} has no stored graph layout: an older CUD Explorer wrote it; "
                         "score its samples again with this version")
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
