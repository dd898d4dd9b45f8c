"""A bundle from a stranger is untrusted input: bounded, validated, all-or-nothing unpacks, and a
corpus of hostile bundles and flags that each end in one clear error line (never a traceback)."""
import json
import os
import random
import re
import signal
import stat
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from cud_core.cli import main
from cud_core.store.bundle import pack, unpack
from cud_core.store.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def good(app_setup, tmp_path_factory):
    """A real bundle of the conftest calibration: (path, calibration id, scoring run id, member → bytes)."""
    ws = Workspace(app_setup["workspace"])
    cal = app_setup["calibration"]
    path = tmp_path_factory.mktemp("bundles") / "good.cudpack"
    manifest = pack(ws, cal, path, with_scores=True)
    with zipfile.ZipFile(path) as z:
        members = {m: z.read(m) for m in z.namelist()}
    return path, cal, manifest["runs"][1], members


def write_zip(path: Path, members: dict, infos: dict | None = None) -> Path:
    """`members` (name → bytes or str) as a zip; `infos` name → ZipInfo for members with special headers."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(infos[name] if infos and name in infos else name, data)
    return path


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _json(members, name):
    return json.loads(members[name])


def hostile_bundles(good) -> dict[str, tuple]:
    """name → (how to build it from the good members, words the error must contain)."""
    path, cal, score, base = good
    man, run_json = "manifest.json", f"runs/{cal}/run.json"
    anchors = next(m for m in base if m.startswith(f"runs/{cal}/tensors/anchors"))
    tensor = next(m for m in base if "/tensors/" in m and m.startswith(f"runs/{score}/"))

    def with_manifest(**changes):
        return lambda ms: {**ms, man: json.dumps({**_json(ms, man), **changes})}

    def with_run(**changes):
        return lambda ms: {**ms, run_json: json.dumps({**_json(ms, run_json), **changes})}

    def member(name, data):
        return lambda ms: {**ms, name: data}

    def without(name):
        return lambda ms: {k: v for k, v in ms.items() if k != name}

    nan_tensor = safetensors_bytes({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                                   struct.pack("<2f", 1.0, float("nan")))
    short_tensor = safetensors_bytes({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)
    odd_dtype = safetensors_bytes({"x": {"dtype": "X99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    short_anchor = safetensors_bytes({"easy": {"dtype": "U8", "shape": [10], "data_offsets": [0, 10]}}, b"\1" * 10)
    flat_anchor = safetensors_bytes({"easy": {"dtype": "U8", "shape": [2, 5], "data_offsets": [0, 10]}}, b"\1" * 10)
    return {
        "no manifest": (without(man), "not a CUD Explorer bundle"),
        "manifest not JSON": (member(man, "{nope"), "not a CUD Explorer bundle"),
        "manifest an array": (member(man, "[]"), "not a CUD Explorer bundle"),
        "other format": (with_manifest(format="zip"), "no format"),
        "version 2": (with_manifest(version=2), "bundle version 2"),
        "runs not a list": (with_manifest(runs="x"), "no valid run ids"),
        "run id escapes": (with_manifest(runs=[cal, "../../x"]), "no valid run ids"),
        "calibration not among runs": (with_manifest(calibration="other"), "no valid run ids"),
        "run id twice": (with_manifest(runs=[cal, score, score]), "lists a run id twice"),
        "model not text": (with_manifest(model=123), "model and dataset must be texts"),
        "dataset too long": (with_manifest(dataset="d" * 5000), "model and dataset must be texts"),
        "manifest bomb": (member(man, " " * (2 << 20) + "{}"), "more than 1 MB"),
        "run.json missing": (without(run_json), "run.json is missing"),
        "run.json of another run": (with_run(id=score), "does not describe run"),
        "unknown kind": (with_run(kind="evil"), "kind 'evil'"),
        "status running": (with_run(status="running"), "only finished (done) runs"),
        "status importing": (with_run(status="importing"), "only finished (done) runs"),
        "config a list": (with_run(config=[1]), "config must be an object"),
        "created text": (with_run(created="yesterday"), "created and updated must be times"),
        "created NaN": (lambda ms: {**ms, run_json: ms[run_json].decode().replace(
            f'"created": {_json(ms, run_json)["created"]}', '"created": NaN')}, "created and updated must be times"),
        "model name too long": (with_run(model="m" * 5000), "model must be a text"),
        "samples an object": (member(f"runs/{cal}/samples.json", "{}"), "should hold a JSON array"),
        "sample row short": (member(f"runs/{cal}/samples.json", '[["a", "q"]]'), "each sample must be"),
        "sample id twice": (member(f"runs/{cal}/samples.json", '[["a","q","x",{}],["a","q","y",{}]]'),
                            "a sample id appears twice"),
        "results an array": (member(f"runs/{cal}/results.json", "[]"), "should hold a JSON object"),
        "result not an object": (member(f"runs/{cal}/results.json", '{"a": 1}'), "must be an object"),
        "artifacts an array": (member(f"runs/{score}/artifacts.json", "[1]"), "should hold a JSON object"),
        "artifacts not JSON": (member(f"runs/{score}/artifacts.json", "{'a'"), "is not valid JSON"),
        "results nested too deep": (member(f"runs/{cal}/results.json", "[" * 100000 + "]" * 100000),
                                    "is not valid JSON"),
        "tensor garbage": (member(tensor, os.urandom(300)), "not a valid safetensors file"),
        "tensor shorter than its header": (member(tensor, short_tensor), "not a valid safetensors file"),
        "tensor with NaN": (member(tensor, nan_tensor), "NaN or infinite"),
        "tensor of unknown dtype": (member(tensor, odd_dtype), "not a valid safetensors file"),
        "anchor of another length": (member(f"runs/{cal}/tensors/anchors-extra.safetensors", short_anchor),
                                     "do not share one edge count"),
        "anchor of two dimensions": (member(anchors, flat_anchor), "do not share one edge count"),
        "tensor name escapes": (member(f"runs/{cal}/tensors/../../x.safetensors", nan_tensor), "unexpected member"),
        "unexpected file": (member("evil.sh", "rm -rf /"), "unexpected member"),
        "member of an unlisted run": (member("runs/other/run.json", "{}"), "unexpected member"),
        "results bomb": (member(f"runs/{cal}/results.json", " " * (40 << 20) + "{}"), "inflates more than 200"),
        "tensor bomb": (member(tensor, b"\0" * (40 << 20)), "inflates more than 200"),
    }


def special_member_bundles(good, tmp_path) -> dict[str, tuple]:
    """Links, device files, directories and repeated names need hand-made zip headers."""
    path, cal, score, base = good
    out = {}
    for name, mode in (("symlink member", stat.S_IFLNK | 0o777), ("device member", stat.S_IFCHR | 0o644)):
        info = zipfile.ZipInfo(f"runs/{score}/tensors/link.safetensors")
        info.external_attr = mode << 16
        out[name] = (write_zip(tmp_path / f"{name}.cudpack", {**base, info.filename: "/etc/passwd"},
                               {info.filename: info}), "a bundle holds only files" if "device" not in name
                     else "not a regular file")
        if name == "symlink member":
            out[name] = (out[name][0], "is a link")
    out["directory member"] = (write_zip(tmp_path / "dir.cudpack", {**base, f"runs/{cal}/tensors/": ""}),
                               "not a regular file")
    dup = tmp_path / "dup.cudpack"
    write_zip(dup, base)
    with pytest.warns(UserWarning), zipfile.ZipFile(dup, "a") as z:
        z.writestr(f"runs/{cal}/run.json", "{}")
    out["member twice"] = (dup, "appears twice")
    truncated = tmp_path / "truncated.cudpack"
    truncated.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    out["truncated file"] = (truncated, "not a CUD Explorer bundle")
    (tmp_path / "empty.cudpack").write_bytes(b"")
    out["empty file"] = (tmp_path / "empty.cudpack", "not a CUD Explorer bundle")
    out["no such file"] = (tmp_path / "missing.cudpack", "no such file")
    return out


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def test_a_corpus_of_hostile_bundles_each_ends_in_one_clear_line(good, tmp_path, capsys):
    corpus = {name: (write_zip(tmp_path / f"{i}.cudpack", build(dict(good[3]))), words)
              for i, (name, (build, words)) in enumerate(hostile_bundles(good).items())}
    corpus.update(special_member_bundles(good, tmp_path))
    assert len(corpus) >= 40
    ws = tmp_path / "ws"
    for name, (file, words) in corpus.items():
        code, err = run_cli(["unpack", str(file), "--workspace", str(ws)], capsys)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (name, err)
        assert "Traceback" not in err and words in err, (name, err)
        assert Workspace(ws).list_runs() == [], name  # nothing imported, not even half
        assert not list((ws / "tensors").glob("*")) if (ws / "tensors").exists() else True, name
    # the good bundle still unpacks into that workspace afterwards
    assert run_cli(["unpack", str(good[0]), "--workspace", str(ws)], capsys)[0] == 0


@pytest.mark.parametrize("argv,words", [
    (["unpack", "X", "--max-size", "abc"], "--max-size: 'abc' is not a size"),
    (["unpack", "X", "--max-size", "0"], "--max-size must be at least one byte"),
    (["unpack", "X", "--max-ratio", "nan"], "--max-ratio must be a number above 1"),
    (["unpack", "X", "--max-ratio", "0.5"], "--max-ratio must be a number above 1"),
    (["unpack", "GOOD", "--max-size", "1K"], "over the limit of"),
    (["score", "--model", "TINY", "--data", "DATA", "--workers", "0"], "--workers must be at least 1"),
    (["score", "--model", "TINY", "--data", "DATA", "--workers", "2"], "--workers needs --executor ray"),
    (["score", "--model", "TINY", "--data", "DATA", "--executor", "ray", "--num-cpus", "nan"],
     "--num-cpus must be a number above 0"),
    (["score", "--model", "TINY", "--data", "DATA", "--executor", "ray", "--num-gpus", "-1"],
     "--num-gpus must be a number of at least 0"),
    (["score", "--model", "TINY", "--data", "DATA", "--executor", "ray", "--ray-address", "no port"],
     "expected auto, local-cluster or HOST:PORT"),
    (["score", "--model", "TINY", "--data", "DATA", "--executor", "ray", "--ray-address", "127.0.0.1:1"],
     "no Ray cluster answers there"),
    (["calibrate", "--model", "TINY", "--data", "DATA", "--executor", "ray", "--ray-address", "127.0.0.1:1",
      "--workers", "999"], "no Ray cluster answers there"),
    (["ablate", "--attribution="], "--attribution is empty"),
])
def test_hostile_flags_are_named_before_any_work(argv, words, good, tiny_folder, app_setup, tmp_path, capsys):
    fill = {"X": str(good[0]), "GOOD": str(good[0]), "TINY": str(tiny_folder), "DATA": app_setup["data"]}
    argv = [fill.get(a, a) for a in argv] + ["--workspace", str(tmp_path / "ws")]
    code, err = run_cli(argv, capsys)  # (an unreachable address: refused, not retried for minutes)
    assert code == 2 and err.startswith("error: ") and words in err and "Traceback" not in err, err


MEASURE_BOMB = """
import re, sys
from cud_core.cli import main
code = main(["unpack", sys.argv[1], "--workspace", sys.argv[2]])
# this process's peak resident memory (ru_maxrss would include the forking pytest process's)
print(code, re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1])
"""


def test_a_zip_bomb_is_refused_in_bounded_memory(good, tmp_path):
    """400 MB of zeros in a ~0.4 MB member: refused while inflating, the process stays small."""
    bomb = tmp_path / "bomb.cudpack"
    _, cal, score, base = good
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in base.items():
            if not name.startswith(f"runs/{score}/tensors/"):
                z.writestr(name, data)
        with z.open(f"runs/{score}/tensors/big.safetensors", "w", force_zip64=True) as f:
            for _ in range(400):
                f.write(b"\0" * (1 << 20))
    assert bomb.stat().st_size < 2 << 20
    out = subprocess.run([sys.executable, "-c", MEASURE_BOMB, str(bomb), str(tmp_path / "ws")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    code, max_rss_kb = map(int, out.stdout.split())
    assert code == 2 and "inflates more than 200" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert max_rss_kb < 500 * 1024
    assert not any((tmp_path / "ws" / "tensors").rglob("*.safetensors"))
    # the same bomb with the ratio cap lifted stops at the size cap instead
    code = main(["unpack", str(bomb), "--workspace", str(tmp_path / "ws"), "--max-ratio", "1e9", "--max-size",
                 "100M"])
    assert code == 2


def test_two_concurrent_unpacks_end_with_one_complete_import(good, tmp_path):
    path, cal, score, _ = good
    ws_root, results, errors = tmp_path / "ws", [], []

    def one():
        try:
            results.append(unpack(Workspace(ws_root), path))
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)
    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and len(results) == 2
    assert sorted(len(r["added"]) for r in results) == [0, 2] and sorted(len(r["skipped"]) for r in results) == [0, 2]
    ws = Workspace(ws_root)
    assert {r["id"]: r["status"] for r in ws.list_runs()} == {cal: "done", score: "done"}


KILLABLE = """
import sys, time
import cud_core.store.bundle as bundle
original = bundle._place_tensors
def announced(workspace, rid, staged, overwrite):  # say where the import stands, one tensor file at a time
    for name, file in staged.items():
        print("placing", rid, name, flush=True)
        time.sleep(0.2)
        original(workspace, rid, {name: file}, overwrite)
bundle._place_tensors = announced
from cud_core.store.workspace import Workspace
bundle.unpack(Workspace(sys.argv[2]), sys.argv[1])
print("done", flush=True)
"""


def test_kill_9_during_unpack_leaves_all_or_nothing(good, tmp_path):
    """Five kills at random points of the import (after the k-th tensor file of the bundle is placed):
    never a finished run beside an unfinished one; the next unpack removes the remains and imports all."""
    path, cal, score, members = good
    n_files = sum("/tensors/" in m for m in members)
    ws_root = tmp_path / "ws"
    rng = random.Random(0)
    for attempt in range(5):
        k = rng.randint(1, n_files)
        proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(path), str(ws_root)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        seen = 0
        for line in proc.stdout:
            seen += line.startswith("placing")
            if seen == k:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert seen == k, f"attempt {attempt}: the unpack ended before its {k}th tensor file"
        statuses = {r["id"]: r["status"] for r in Workspace(ws_root).list_runs()}
        assert set(statuses.values()) <= {"importing"} and statuses, statuses  # nothing finished, half hidden
    result = unpack(Workspace(ws_root), path)  # the next unpack clears what the kills left and imports it all
    assert sorted(result["added"]) == sorted([cal, score])
    ws = Workspace(ws_root)
    assert {r["id"]: r["status"] for r in ws.list_runs()} == {cal: "done", score: "done"}
    assert not list((ws_root / "tensors").glob(".unpack-*"))
    assert sorted(p.name for p in (ws_root / "tensors").rglob("*.safetensors")) == \
        sorted(m.rsplit("/", 1)[1] for m in members if "/tensors/" in m)


def test_formula_cells_are_escaped_in_both_csv_exports(app_setup, capsys, monkeypatch):
    import io

    import pandas as pd

    import cud_core.cli.report_commands as report_commands
    from cud_core.store.escaping import csv_cell, csv_unescape
    from views.ui.text import csv_download

    hostile = ["=cmd|' /C calc'!A0", "+1+1", "-2", "@SUM(A1)", "\tx", "=HYPERLINK(\"http://x\")", "'=quoted"]
    for text in hostile:
        assert csv_cell(text).startswith("'") and csv_unescape(csv_cell(text)) == text
    assert csv_cell("plain") == "plain" and csv_cell(-2.5) == -2.5  # numbers stay numbers
    monkeypatch.setattr(report_commands, "export_rows", lambda ws, run: [{"id": t, "cud": 0.5} for t in hostile])
    assert main(["export", "--workspace", str(app_setup["workspace"])]) == 0
    exported = pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False)
    assert all(cell.startswith("'") for cell in exported["id"])
    page = pd.read_csv(io.StringIO(csv_download(pd.DataFrame({"question": hostile, "cud": 0.5}))),
                       keep_default_na=False)
    assert all(cell.startswith("'") for cell in page["question"]) and list(page["cud"]) == [0.5] * len(hostile)


def test_crafted_names_render_inert_in_markdown_reports(app_setup):
    from cud_core.report import validation as report

    ws = Workspace(app_setup["workspace"])
    run = ws.get_run(app_setup["calibration"])
    r = ws.load_artifact(run["id"], "validation_report")
    crafted = {**run, "model": "<img src=x onerror=alert(1)>", "dataset": "![x](http://evil.example/p.png) <script>"}
    text = report.markdown(r, crafted) + report.readme_section([(r, crafted)], "cmd")
    for raw in ("<img", "<script", "![x](", "](http"):  # none of them unescaped
        assert not re.search(r"(?<!\\)" + re.escape(raw), text), raw
    assert "\\<img src=x onerror=alert\\(1\\)\\>" in text
