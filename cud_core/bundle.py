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
the same run — same kind, model, dataset, settings and creation time — which it skips) and removes a
half-imported run on any error. Each unpacked run gets an artifact "unpacked" (bundle file name,
time, whether edge scores came along).
"""
from __future__ import annotations

import json
import re
import time
import zipfile
import zlib
from pathlib import Path

from .atomic import atomic_file, atomic_write_bytes
from .store import Workspace

FORMAT = "cud-explorer-bundle"
VERSION = 1
RUN_FIELDS = ("id", "kind", "model", "dataset", "config", "status", "created", "updated", "message")
SAME_RUN = ("id", "kind", "model", "dataset", "config", "created")  # what later work on a run does not change
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # no separators, no "..": a run's tensor folder is its id
TENSOR_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors")
IMPORTING = "importing"  # a run's status while unpack writes it


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
            manifest = json.loads(z.read("manifest.json"))
    except (zipfile.BadZipFile, zlib.error, KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not a CUD Explorer bundle (made by `python -m cud_core pack`): {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a CUD Explorer bundle (its manifest.json has no format {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise BundleError(f"{path}: bundle version {manifest.get('version')!r}; this CUD Explorer reads version "
                          f"{VERSION}")
    runs = manifest.get("runs")
    if not isinstance(runs, list) or not runs or not all(isinstance(r, str) and RUN_ID.fullmatch(r) for r in runs) \
            or manifest.get("calibration") not in runs:
        raise BundleError(f"{path}: manifest.json lists no valid run ids (letters, digits, '.', '_', '-'; the "
                          f"calibration among them)")
    return manifest


def unpack(workspace: Workspace, path: str | Path) -> dict:
    """Add the bundle's runs to `workspace`, all or none; returns the manifest with "added" and
    "skipped" (already there; any tensor file they lack is added, e.g. edge scores) run ids. A run a
    killed unpack left half-imported is replaced."""
    manifest = read_manifest(path)
    added, skipped, todo = [], [], []
    try:
        with zipfile.ZipFile(path) as z:
            for rid in manifest["runs"]:  # every clash is found before anything is written
                run = _member_json(z, path, f"runs/{rid}/run.json", dict)
                if run.get("id") != rid or any(k not in run for k in RUN_FIELDS):
                    raise BundleError(f"{path}: runs/{rid}/run.json does not describe run {rid!r}")
                have = workspace.get_run(rid)
                if have is not None and have["status"] == IMPORTING:
                    workspace.delete_run(rid)
                    have = None
                if have is None:
                    todo.append(run)
                elif any(have[k] != run[k] for k in SAME_RUN):
                    raise BundleError(f"run {rid} already exists in {workspace.root} with other contents; unpack "
                                      f"into another workspace")
                else:
                    skipped.append(rid)
            try:
                for run in todo:
                    _unpack_run(workspace, z, path, run)
                    added.append(run["id"])
            except BaseException:
                for rid in added:
                    workspace.delete_run(rid)
                raise
            for rid in skipped:
                _unpack_tensors(workspace, z, path, rid, overwrite=False)
    except (zipfile.BadZipFile, zlib.error) as exc:
        raise BundleError(f"{path}: the file is damaged ({exc})") from exc
    return {**manifest, "added": added, "skipped": skipped}


def _unpack_run(workspace: Workspace, z: zipfile.ZipFile, path, run: dict) -> None:
    """One run, whole or (on any error) removed again."""
    from .data import Sample

    rid, base = run["id"], f"runs/{run['id']}/"
    samples = _member_json(z, path, base + "samples.json", list)
    if not all(isinstance(row, list) and len(row) == 4 and all(isinstance(v, str) for v in row[:3])
               and isinstance(row[3], dict) for row in samples):
        raise BundleError(f"{path}: {base}samples.json: each sample must be [id, question, answer, meta]")
    results = _member_json(z, path, base + "results.json", dict)
    if not all(isinstance(v, dict) for v in results.values()):
        raise BundleError(f"{path}: {base}results.json: each sample's results must be an object")
    artifacts = _member_json(z, path, base + "artifacts.json", dict)
    workspace.restore_run({**run, "status": IMPORTING})  # fails on a run id another unpack just added
    try:
        workspace.save_samples(rid, [Sample(q, a, i, meta) for i, q, a, meta in samples])
        workspace.save_results(rid, results)
        for name, data in artifacts.items():
            workspace.save_artifact(rid, name, data)
        _unpack_tensors(workspace, z, path, rid, overwrite=True)
        with_scores = any(n.startswith(f"{base}tensors/scores-") for n in z.namelist())
        workspace.save_artifact(rid, "unpacked", {"bundle": Path(path).name, "at": time.time(),
                                                  "with_scores": with_scores})
        workspace.set_status(rid, run["status"], run["message"])
    except BaseException:
        workspace.delete_run(rid)
        raise


def _unpack_tensors(workspace: Workspace, z: zipfile.ZipFile, path, rid: str, overwrite: bool) -> None:
    prefix = f"runs/{rid}/tensors/"
    for member in z.namelist():
        if not member.startswith(prefix):
            continue
        name = member[len(prefix):]
        if not TENSOR_FILE.fullmatch(name):
            raise BundleError(f"{path}: unexpected member {member!r}")
        target = workspace.tensor_path(rid, name[:-len(".safetensors")])
        if overwrite or not target.exists():
            atomic_write_bytes(target, z.read(member))


def _member_json(z: zipfile.ZipFile, path, member: str, kind: type):
    try:
        data = json.loads(z.read(member))
    except KeyError:
        raise BundleError(f"{path}: {member} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: {member} is not valid JSON: {exc}") from exc
    if not isinstance(data, kind):
        raise BundleError(f"{path}: {member} should hold a JSON {'object' if kind is dict else 'array'}")
    return data
