import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cud_core.cli import main
from cud_core.store.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUD_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", "cud_core", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)


def facts_file(tmp_path, n=5):
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps({"id": f"f{i}", "question": f"What is fact {i}?",
                                        "answer": f"Fact {i} is Paris."}) + "\n" for i in range(n)))
    return path


def test_info_json_last_line_is_one_object(tiny_folder):
    out = run_cli("info", "--model", str(tiny_folder), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert (info["architecture"], info["n_layers"], info["n_heads"], info["n_kv_heads"], info["d_model"]) == \
        ("LlamaForCausalLM", 2, 4, 2, 32)


def test_bad_data_exits_nonzero_with_one_line_naming_the_row(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nWhat?,Yes\nWhy?,\n")
    out = run_cli("score", "--model", "embedded", "--data", str(bad))
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {bad} row 2: empty answer"
    assert "Traceback" not in out.stderr


def test_bad_model_exits_nonzero_with_one_line(tmp_path):
    out = run_cli("info", "--model", str(tmp_path))
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"error: {tmp_path} is a folder without config.json: not a Hugging Face model folder"]


def test_score_writes_metrics_and_resumes(tmp_path, tiny_folder, capsys):
    data, ws_dir = facts_file(tmp_path), tmp_path / "ws"
    args = ["score", "--model", str(tiny_folder), "--data", str(data), "--workspace", str(ws_dir),
            "--batch-size", "2", "--no-generation"]
    assert main(args + ["--limit", "3"]) == 0
    ws = Workspace(ws_dir)
    [run] = ws.list_runs("score")
    results = ws.load_results(run["id"])
    assert sorted(results) == ["f0", "f1", "f2"] and run["status"] == "done"
    assert all(r["answer_nll"] > 0 and 0 <= r["extraction_strength"] <= 1 for r in results.values())

    # simulate an interrupted run: drop one finished sample, mark it running, run again
    full = args
    assert main(full) == 0
    [run_full] = [r for r in ws.list_runs("score") if ws.load_artifact(r["id"], "context")["limit"] is None]
    with __import__("sqlite3").connect(ws.db_path) as db:
        db.execute("DELETE FROM results WHERE run_id=? AND sample_id='f4'", (run_full["id"],))
    before = ws.load_results(run_full["id"])
    assert main(full) == 0
    assert "resuming run" in capsys.readouterr().err
    after = ws.load_results(run_full["id"])
    assert sorted(after) == ["f0", "f1", "f2", "f3", "f4"]
    assert all(after[k] == before[k] for k in before)  # finished samples were not redone


def test_score_rejects_too_long_samples(tmp_path, tiny_folder, capsys):
    data = tmp_path / "long.json"
    data.write_text(json.dumps([{"question": "word " * 300, "answer": "x"}]))
    assert main(["score", "--model", str(tiny_folder), "--data", str(data), "--workspace", str(tmp_path)]) == 2
    assert "row 1: sample 'row-1' is" in capsys.readouterr().err


def test_help_for_every_command():
    for cmd in ("info", "score"):
        with pytest.raises(SystemExit) as exit_:
            main([cmd, "--help"])
        assert exit_.value.code == 0
