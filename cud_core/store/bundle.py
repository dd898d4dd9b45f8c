"""A finished calibration as one portable file: `pack` on one machine, `unpack` into another workspace.

A calibration's evidence — its run record and settings, forget samples, per-sample results (folds,
CUD, predictors), unlearning curves, labels, anchors and validation — is small; the edge scores of
its scoring run are not (about 0.25 MB per sample on SmolLM2-135M, float16). So a bundle holds the
calibration and its scoring run with every artifact and tensor except the scoring run's `scores-*` (kept with
`with_scores=True`). Everything that does not need those scores works on the unpacked copy as on the
original: the report, export, the ablation grid (which re-scores what it needs) and the app's pages
except the per-edge score views. Moving a calibration to a GPU machine for the ablation grid, or
sharing it with a collaborator, costs one file.

The file is a zip of JSON and safetensors only (nothing executable, no pickles): `manifest.json`,
and per run `runs/<id>/run.json`, `samples.json`, `results.json`, `artifacts.json` and
`tensors/<name>.safetensors`. Unpacking refuses a run id the workspace already has (unless it holds
the same run — same kind, model, dataset, settings and creation time — which it skips).

A bundle from someone else is untrusted input, so unpacking
- streams every member with a cap on its size and on the whole bundle's (`Limits`, `--max-size`) and,
  past 16 MiB, on its compression ratio (`--max-ratio`), whatever the zip headers claim, and checks
  the free disk space against the declared sizes first;
- refuses links, special files, members it does not expect and duplicate run ids, checks every JSON
  member's shape and every tensor (a readable safetensors file, known dtypes, finite values, anchors
  of one length) before anything is written, and imports only finished (`done`) runs;
- imports the whole bundle or nothing: under the workspace's unpack lock (a second unpack waits), every
  run is written with status "importing" and all of them turn "done" in one transaction at the end;
  runs a killed unpack left "importing" are removed by the next one.
Each unpacked run gets an artifact "unpacked" (bundle file name, time, whether edge scores came along).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import time
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from cud_core.data.samples import Sample
from cud_core.store.atomic import atomic_file
from cud_core.store.workspace import Workspace

FORMAT = "cud-explorer-bundle"
VERSION = 1
RUN_FIELDS = ("id", "kind", "model", "dataset", "config", "status", "created", "updated", "message")
SAME_RUN = ("id", "kind", "model", "dataset", "config", "created")  # what later work on a run does not change
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # no separators, no "..": a run's tensor folder is its id
TENSOR_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors")
IMPORTING = "importing"  # a run's status while unpack writes it
KINDS = ("calibrate", "score", "calibrate-part")  # the last: a calibration's forget sets (`pipeline.forget_sets`)
RUN_FILES = ("run.json", "samples.json", "results.json", "artifacts.json")
TENSOR_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"}
CHUNK = 1 << 20
RATIO_FROM = 16 << 20  # the ratio cap applies past this many bytes of a member (small members compress freely)


@dataclass(frozen=True)
class Limits:
    """What an unpack accepts (the `unpack` flags override them). A real bundle is far below: the
    world-facts calibration is 8 MB unpacked, its largest member 1.8 MB, compressed at most 7×."""
    max_bytes: int = 4 << 30        # the whole bundle unpacked; one member at most as much
    max_ratio: float = 200.0        # unpacked / packed size of one member past RATIO_FROM bytes
    max_json_bytes: int = 256 << 20  # one JSON member (parsed in memory)


def parse_size(text: str) -> int:
    """'4G', '500M', '1048576' -> bytes; ValueError naming the value otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"--max-size: {text!r} is not a size (e.g. 4G, 500M, 1048576)")
    value = float(match[1]) * 1024 ** " KMGT".index((match[2] or " ").upper())
    if value < 1:
        raise ValueError(f"--max-size must be at least one byte, got {text!r}")
    return int(value)


class BundleError(ValueError):
    """The file is not a bundle this version can read, or it does not fit the workspace."""


def pack(workspace: Workspace, run_id: str, path: str | Path, with_scores: bool = False) -> dict:
    """Write finished calibration `run_id` and its scoring run to the bundle `path` (atomically);
    returns the manifest."""
    run = workspace.get_run(run_id)
    if run is None or run["kind"] != "calibrate":
        raise BundleError(f"no calibration run {run_id!r} in {workspace.root}")
    if run["status"] != "done":
        raise BundleError(f"calibration {run_id} is {run['status']}, not done; finish it before packing")
    score_id = workspace.load_artifact(run_id, "score_run")
    runs = [run_id] + ([score_id] if score_id and workspace.get_run(score_id) else [])
    # a calibration of several forget sets keeps each set's unlearning in a run of its own (`outcomes.parts`)
    runs += [p["run"] for p in workspace.load_artifact(run_id, "forget_sets", []) if p.get("run")]
    manifest = {"format": FORMAT, "version": VERSION, "calibration": run_id, "runs": runs,
                "model": run["model"], "dataset": run["dataset"]}
    with atomic_file(path) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
        scores = [_pack_run(workspace, rid, z, keep_scores=with_scores or rid == run_id) for rid in runs]
        manifest["with_scores"] = any(scores[1:])  # edge scores of the scoring run(s) included
        z.writestr("manifest.json", json.dumps(manifest, indent=1))
    return manifest


def _pack_run(workspace: Workspace, run_id: str, z: zipfile.ZipFile, keep_scores: bool) -> bool:
    """Write one run's members; True when edge scores (`scores-*` tensors) were among them."""
    run = workspace.get_run(run_id)
    base = f"runs/{run_id}/"
    z.writestr(base + "run.json", json.dumps({k: run[k] for k in RUN_FIELDS}))
    z.writestr(base + "samples.json", json.dumps([[s.id, s.question, s.answer, s.meta or {}]
                                                  for s in workspace.load_samples(run_id)], default=str))
    z.writestr(base + "results.json", json.dumps(workspace.load_results(run_id), default=float))
    z.writestr(base + "artifacts.json", json.dumps({n: workspace.load_artifact(run_id, n)
                                                    for n in workspace.artifact_names(run_id)}, default=float))
    folder, scores = workspace.root / "tensors" / run_id, False
    for file in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        if keep_scores or not file.name.startswith("scores-"):
            z.write(file, base + "tensors/" + file.name)
            scores |= file.name.startswith("scores-")
    return scores


def read_manifest(path: str | Path) -> dict:
    """The bundle's manifest, after checking that `path` is a bundle this version reads."""
    if not Path(path).is_file():
        raise BundleError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as z:
            manifest = _Reader(z, path, Limits(max_json_bytes=1 << 20)).json("manifest.json", dict)
    except BundleError as exc:
        raise BundleError(f"{path}: not a CUD Explorer bundle (made by `python -m cud_core pack`): "
                          f"{str(exc).removeprefix(f'{path}: ')}") from None
    except (zipfile.BadZipFile, zlib.error, KeyError, json.JSONDecodeError, UnicodeDecodeError, EOFError) as exc:
        raise BundleError(f"{path}: not a CUD Explorer bundle (made by `python -m cud_core pack`): {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a CUD Explorer bundle (its manifest.json has no format {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise BundleError(f"{path}: bundle version {manifest.get('version')!r}; this CUD Explorer reads version "
                          f"{VERSION}")
    if not all(isinstance(manifest.get(k), str) and len(manifest[k]) <= 4096 for k in ("model", "dataset")):
        raise BundleError(f"{path}: manifest.json: model and dataset must be texts of at most 4096 characters")
    runs = manifest.get("runs")
    if not isinstance(runs, list) or not runs or not all(isinstance(r, str) and RUN_ID.fullmatch(r) for r in runs) \
            or manifest.get("calibration") not in runs:
        raise BundleError(f"{path}: manifest.json lists no valid run ids (letters, digits, '.', '_', '-'; the "
                          f"calibration among them)")
    return manifest


def unpack(workspace: Workspace, path: str | Path, limits: Limits = Limits(), on_wait=None) -> dict:
    """Add the bundle's runs to `workspace`, all or none; returns the manifest with "added" and
    "skipped" (already there; any tensor file they lack is added, e.g. edge scores) run ids.
    `on_wait(message)`: called once when another unpack into this workspace holds the lock."""
    if not (limits.max_ratio > 1 and math.isfinite(limits.max_ratio)):
        raise ValueError(f"--max-ratio must be a number above 1, got {limits.max_ratio}")
    manifest = read_manifest(path)
    try:
        with zipfile.ZipFile(path) as z:
            members = _check_members(z, path, manifest, limits, workspace.root)
            reader = _Reader(z, path, limits)
            runs = {rid: _read_run(reader, path, rid) for rid in manifest["runs"]}
            with workspace.lock("unpack", f"another unpack into {workspace.root} is running; waiting for it", on_wait):
                _remove_leftovers(workspace)
                staging = workspace.root / "tensors" / f".unpack-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                try:
                    anchor_shapes: dict[str, tuple] = {}
                    tensors = {rid: _stage_tensors(reader, path, members[rid], staging / rid, anchor_shapes)
                               for rid in runs}
                    _check_anchor_lengths(path, anchor_shapes)
                    return {**manifest, **_import(workspace, path, runs, tensors)}
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise BundleError(f"{path}: the file is damaged ({exc})") from exc


def _check_members(z: zipfile.ZipFile, path, manifest: dict, limits: Limits, root: Path) -> dict[str, list]:
    """Each run's tensor members, after refusing links, special files, unexpected or repeated
    members, declared sizes past the limits and a disk too small for them."""
    runs = manifest["runs"]
    if len(set(runs)) != len(runs):
        raise BundleError(f"{path}: manifest.json lists a run id twice")
    names = [i.filename for i in z.infolist()]
    if len(set(names)) != len(names):
        raise BundleError(f"{path}: a member name appears twice")
    tensors: dict[str, list] = {rid: [] for rid in runs}
    for info in z.infolist():
        mode = info.external_attr >> 16  # unix mode, when the zip records one (its type bits may be 0)
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG) or info.is_dir():
            kind = "a link" if stat.S_ISLNK(mode) else "not a regular file"
            raise BundleError(f"{path}: member {info.filename!r} is {kind}; a bundle holds only files")
        parts = info.filename.split("/")
        if info.filename == "manifest.json":
            continue
        if len(parts) == 3 and parts[0] == "runs" and parts[1] in tensors and parts[2] in RUN_FILES:
            continue
        if len(parts) == 4 and parts[0] == "runs" and parts[1] in tensors and parts[2] == "tensors" \
                and TENSOR_FILE.fullmatch(parts[3]):
            tensors[parts[1]].append(info)
            continue
        raise BundleError(f"{path}: unexpected member {info.filename!r}")
    declared = sum(i.file_size for i in z.infolist())
    if declared > limits.max_bytes:
        raise BundleError(f"{path}: unpacks to {declared / 2 ** 20:.0f} MB, over the limit of "
                          f"{limits.max_bytes / 2 ** 20:.0f} MB (raise it with --max-size if you trust the file)")
    free = shutil.disk_usage(root).free
    if declared + (64 << 20) > free:
        raise BundleError(f"{path}: unpacks to {declared / 2 ** 20:.0f} MB; {root} has {free / 2 ** 20:.0f} MB free")
    return tensors


class _Reader:
    """Members read in chunks with the limits enforced on the bytes actually inflated."""

    def __init__(self, z: zipfile.ZipFile, path, limits: Limits):
        self.z, self.path, self.limits, self.total = z, path, limits, 0

    def chunks(self, info: zipfile.ZipInfo, cap: int):
        done = 0
        with self.z.open(info) as f:
            while block := f.read(CHUNK):
                done += len(block)
                self.total += len(block)
                if done > cap:
                    raise BundleError(f"{self.path}: member {info.filename} unpacks to more than "
                                      f"{cap / 2 ** 20:.0f} MB (raise --max-size if you trust the file)")
                if self.total > self.limits.max_bytes:
                    raise BundleError(f"{self.path}: unpacks to more than {self.limits.max_bytes / 2 ** 20:.0f} MB "
                                      "(raise --max-size if you trust the file)")
                if done > RATIO_FROM and done > self.limits.max_ratio * max(1, info.compress_size):
                    raise BundleError(f"{self.path}: member {info.filename} inflates more than "
                                      f"{self.limits.max_ratio:g}× (a zip bomb?; "
                                      "raise --max-ratio if you trust the file)")
                yield block

    def json(self, member: str, kind: type):
        try:
            info = self.z.getinfo(member)
        except KeyError:
            raise BundleError(f"{self.path}: {member} is missing") from None
        raw = b"".join(self.chunks(info, min(self.limits.max_json_bytes, self.limits.max_bytes)))
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise BundleError(f"{self.path}: {member} is not valid JSON: {str(exc)[:200]}") from None
        if not isinstance(data, kind):
            raise BundleError(f"{self.path}: {member} should hold a JSON {'object' if kind is dict else 'array'}")
        return data


def _read_run(reader: _Reader, path, rid: str) -> dict:
    """One run's JSON members, their shapes checked: {"run", "samples", "results", "artifacts"}."""
    base = f"runs/{rid}/"
    run = reader.json(base + "run.json", dict)

    def bad(why):
        return BundleError(f"{path}: {base}run.json: {why}")
    if run.get("id") != rid or any(k not in run for k in RUN_FIELDS):
        raise bad(f"does not describe run {rid!r} (fields {', '.join(RUN_FIELDS)})")
    if run["kind"] not in KINDS:
        raise bad(f"kind {str(run['kind'])[:40]!r} is not one of {', '.join(KINDS)}")
    for key in ("model", "dataset", "message"):
        if not isinstance(run[key], str) or len(run[key]) > 4096:
            raise bad(f"{key} must be a text of at most 4096 characters")
    if not isinstance(run["config"], dict):
        raise bad("config must be an object")
    if not all(isinstance(run[k], (int, float)) and not isinstance(run[k], bool) and math.isfinite(run[k])
               for k in ("created", "updated")):
        raise bad("created and updated must be times (numbers)")
    if run["status"] != "done":
        raise bad(f"the run is {str(run['status'])[:40]!r}; only finished (done) runs can be unpacked")
    samples = reader.json(base + "samples.json", list)
    if not all(isinstance(row, list) and len(row) == 4 and all(isinstance(v, str) for v in row[:3])
               and isinstance(row[3], dict) for row in samples):
        raise BundleError(f"{path}: {base}samples.json: each sample must be [id, question, answer, meta]")
    if len({row[0] for row in samples}) != len(samples):
        raise BundleError(f"{path}: {base}samples.json: a sample id appears twice")
    results = reader.json(base + "results.json", dict)
    if not all(isinstance(v, dict) for v in results.values()):
        raise BundleError(f"{path}: {base}results.json: each sample's results must be an object")
    return {"run": run, "samples": samples, "results": results, "artifacts": reader.json(base + "artifacts.json", dict)}


def _stage_tensors(reader: _Reader, path, members: list, folder: Path, anchor_shapes: dict) -> dict[str, Path]:
    """Each tensor member streamed into `folder` and checked; {file name: staged path}. The shapes of
    anchor tensors are added to `anchor_shapes` ("member:key" -> shape)."""
    from safetensors import SafetensorError, safe_open

    out = {}
    for info in members:
        name = info.filename.rsplit("/", 1)[1]
        target = folder / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            for block in reader.chunks(info, reader.limits.max_bytes):
                f.write(block)
        try:
            with safe_open(str(target), "pt") as t:
                for key in t.keys():
                    sliced = t.get_slice(key)
                    if sliced.get_dtype() not in TENSOR_DTYPES:
                        raise BundleError(f"{path}: {info.filename}: tensor {key!r} has dtype {sliced.get_dtype()}")
                    tensor = t.get_tensor(key)
                    if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
                        raise BundleError(f"{path}: {info.filename}: tensor {key!r} holds NaN or infinite values")
                    if name.startswith("anchors"):
                        anchor_shapes[f"{info.filename}:{key}"] = tuple(tensor.shape)
        except BundleError:
            raise
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise BundleError(f"{path}: {info.filename} is not a valid safetensors file: {str(exc)[:200]}") from None
        out[name] = target
    return out


def _check_anchor_lengths(path, shapes: dict[str, tuple]) -> None:
    """Anchor vectors (easy, hard and their scores) are one per graph edge: one length in a bundle."""
    if len(set(shapes.values())) > 1 or any(len(shape) != 1 for shape in shapes.values()):
        raise BundleError(f"{path}: the anchors do not share one edge count: " + ", ".join(
            f"{k} {list(v)}" for k, v in list(shapes.items())[:4]))


def _remove_leftovers(workspace: Workspace) -> None:
    """What a killed unpack left: its runs still "importing" and its staging folder (we hold the lock)."""
    for run in workspace.list_runs():
        if run["status"] == IMPORTING:
            workspace.delete_run(run["id"])
    for folder in (workspace.root / "tensors").glob(".unpack-*"):
        shutil.rmtree(folder, ignore_errors=True)


def _import(workspace: Workspace, path, runs: dict[str, dict], tensors: dict[str, dict[str, Path]]) -> dict:
    """Write the checked runs; all turn "done" in one transaction at the end, or none stays."""
    added, skipped = [], []
    todo = []
    for rid, parts in runs.items():  # every clash is found before anything is written
        have = workspace.get_run(rid)
        if have is None:
            todo.append(rid)
        elif any(have[k] != parts["run"][k] for k in SAME_RUN):
            raise BundleError(f"run {rid} already exists in {workspace.root} with other contents; unpack "
                              f"into another workspace")
        else:
            skipped.append(rid)
    with_scores = {rid: any(n.startswith("scores-") for n in tensors[rid]) for rid in runs}
    try:
        for rid in todo:
            parts = runs[rid]
            workspace.restore_run({**parts["run"], "status": IMPORTING})
            added.append(rid)
            workspace.save_samples(rid, [Sample(q, a, i, meta) for i, q, a, meta in parts["samples"]])
            workspace.save_results(rid, parts["results"])
            for name, data in parts["artifacts"].items():
                workspace.save_artifact(rid, name, data)
            workspace.save_artifact(rid, "unpacked", {"bundle": Path(path).name, "at": time.time(),
                                                      "with_scores": with_scores[rid]})
            _place_tensors(workspace, rid, tensors[rid], overwrite=True)
        with workspace.transaction() as db:  # the whole bundle appears at once
            db.executemany("UPDATE runs SET status='done', message=? WHERE id=?",
                           [(runs[rid]["run"]["message"], rid) for rid in added])
    except BaseException:
        for rid in added:
            workspace.delete_run(rid)
        raise
    for rid in skipped:  # e.g. edge scores a first unpack without them lacked
        _place_tensors(workspace, rid, tensors[rid], overwrite=False)
    return {"added": added, "skipped": skipped}


def _place_tensors(workspace: Workspace, rid: str, staged: dict[str, Path], overwrite: bool) -> None:
    for name, file in staged.items():
        target = workspace.tensor_path(rid, name[:-len(".safetensors")])
        if overwrite or not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
