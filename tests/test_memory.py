"""Memory estimates and the batch-size guard (cud_core/memory.py)."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cud_core.engine import memory, sysmem
from cud_core.engine.memory import (
    NotEnoughMemory,
    estimate_scoring_peak,
    estimate_unlearning_peak,
    fit_batch_size,
    longest_sequence,
)
from cud_core.engine.sysmem import available_memory, parse_memory
from cud_core.pipeline.context import RunContext

ROOT = Path(__file__).resolve().parents[1]
GB = 10 ** 9


@pytest.fixture(scope="module")
def tinies():
    from cud_core.engine.tiny import FAMILIES, tiny_model

    return {f: tiny_model(f) for f in FAMILIES}


# ----------------------------------------------------------------------------- estimates

def test_scoring_estimate_grows_with_batch_and_length(tinies):
    for family, lm in tinies.items():
        by_batch = [estimate_scoring_peak(lm.model, 40, b) for b in (1, 2, 4, 8, 64)]
        by_length = [estimate_scoring_peak(lm.model, t, 4) for t in (8, 16, 64, 128)]
        assert by_batch == sorted(set(by_batch)), family
        assert by_length == sorted(set(by_length)), family
        weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
        assert by_batch[0] > weights + memory.RUNTIME_BYTES  # CPU: the runtime is counted


def test_scoring_estimate_is_dominated_by_the_node_buffers():
    """Per token: three float32 vectors per node (baseline, Δ, summed gradients), the bulk of it."""
    from cud_core.engine.graph import Graph
    from cud_core.engine.tiny import tiny_model

    model = tiny_model("llama", d_model=256, n_layers=4, n_heads=8, n_kv_heads=2).model
    g, d = Graph.from_model(model), model.config.hidden_size
    per_token = (estimate_scoring_peak(model, 100, 40) - estimate_scoring_peak(model, 100, 20)) / (20 * 100)
    buffers = 4 * d * (2 * g.n_forward + g.n_backward)
    assert buffers * memory.ALLOCATOR_FACTOR < per_token < 2 * buffers * memory.ALLOCATOR_FACTOR


def test_scoring_estimate_accepts_a_loaded_model_and_checks_its_arguments(tinies):
    lm = tinies["gpt2"]
    assert estimate_scoring_peak(lm, 30, 4) == estimate_scoring_peak(lm.model, 30, 4)
    # the interpolation passes reuse the same buffers: neither steps nor the method move the peak
    assert estimate_scoring_peak(lm.model, 30, 4, "eap", 1) == estimate_scoring_peak(lm.model, 30, 4,
                                                                                      "eap-ig-activations", 20)
    for bad in ({"method": "eap-ig"}, {"steps": 0}, {"batch_size": 0}, {"seq_len": 0}):
        args = {"seq_len": 30, "batch_size": 4, **bad}
        with pytest.raises(ValueError, match=next(iter(bad))):
            estimate_scoring_peak(lm.model, **args)


def test_unlearning_estimate(tinies):
    lm = tinies["llama"]
    model = lm.model
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    n = sum(p.numel() for p in model.parameters())
    full = estimate_unlearning_peak(model, 40, 4)
    # original + copy + gradients + two AdamW moments
    assert full >= memory.RUNTIME_BYTES + 5 * weights
    assert estimate_unlearning_peak(model, 40, 8) > full
    assert estimate_unlearning_peak(model, 80, 4) > full
    assert estimate_unlearning_peak(model, 40, 4, trainable_params=n // 10) < full
    with pytest.raises(ValueError, match="trainable_params"):
        estimate_unlearning_peak(model, 40, 4, trainable_params=-1)


def test_longest_sequence(tinies):
    from cud_core.data.samples import Sample, encode

    lm = tinies["llama"]
    samples = [Sample("a", "Where?", "Paris."), Sample("b", "What is the capital of France?", "Paris is.")]
    assert longest_sequence(lm.tokenizer, samples) == max(len(encode(lm.tokenizer, s)[0]) for s in samples)


# ----------------------------------------------------------------------------- the guard (pure)

def linear(fixed, per_sample):
    calls = []

    def estimate(b):
        calls.append(b)
        return fixed + per_sample * b
    estimate.calls = calls
    return estimate


def test_fit_batch_size_keeps_a_batch_that_fits():
    assert fit_batch_size(linear(GB, GB // 2), 8, 6 * GB) == (8, None)  # 5.0 GB ≤ 0.9 · 6 GB


def test_fit_batch_size_lowers_to_the_largest_that_fits():
    est = linear(GB, 250 * 10 ** 6)  # 1 GB + 0.25 GB per sample; budget 0.9 · 6 GB = 5.4 GB → 17
    assert fit_batch_size(est, 32, 6 * GB) == (
        17, "batch size 32 would need about 9.0 GB but 6.0 GB is available; using 17 (about 5.2 GB)")
    assert len(est.calls) <= 8  # a bisection, not a scan
    # exactly at the budget still fits
    assert fit_batch_size(lambda b: b * GB // 2, 10, 5 * GB, headroom=0.5) == (
        5, "batch size 10 would need about 5.0 GB, more than 50% of the 5.0 GB available; using 5 (about 2.5 GB)")


def test_fit_batch_size_says_when_only_the_headroom_is_missing():
    batch, note = fit_batch_size(linear(GB, GB // 2), 10, 6 * GB)  # 6.0 GB needed, 6.0 GB there
    assert batch == 8
    assert note == ("batch size 10 would need about 6.0 GB, more than 90% of the 6.0 GB available; "
                    "using 8 (about 5.0 GB)")


def test_fit_batch_size_refuses_when_nothing_fits():
    with pytest.raises(NotEnoughMemory) as info:
        fit_batch_size(linear(5 * GB, GB), 4, 6 * GB)
    assert isinstance(info.value, ValueError)
    assert "even batch size 1 would need about 6.0 GB but 6.0 GB is available" in str(info.value)
    assert "CUD_MEMORY_LIMIT" in str(info.value)
    assert (info.value.needed, info.value.available) == (6 * GB, 6 * GB)


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"batch_size": 2.5}, {"headroom": 0}, {"headroom": 1.5}])
def test_fit_batch_size_checks_its_arguments(bad):
    args = {"batch_size": 4, "headroom": 0.9, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        fit_batch_size(lambda b: b, available=100, **args)


# ----------------------------------------------------------------------------- available memory

@pytest.mark.parametrize("text, expected", [
    ("123456", 123456), ("4G", 4 * 2 ** 30), ("4g", 4 * 2 ** 30), ("512M", 512 * 2 ** 20), ("512MB", 512 * 2 ** 20),
    ("1.5GiB", 3 * 2 ** 29), (" 2 T ", 2 * 2 ** 40), ("64k", 65536), ("8000000000", 8 * 10 ** 9)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "4X", "-1G", "0", "0M", "1e9", "G"])
def test_parse_memory_refuses(text):
    with pytest.raises(ValueError, match="memory size"):
        parse_memory(text)


def test_memory_limit_variable_replaces_the_detection(monkeypatch):
    monkeypatch.setenv("CUD_MEMORY_LIMIT", "3G")
    assert available_memory("cpu") == 3 * 2 ** 30
    assert available_memory("cuda") == 3 * 2 ** 30  # no CUDA query at all
    monkeypatch.setenv("CUD_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match="CUD_MEMORY_LIMIT"):
        available_memory("cpu")


def test_available_memory_on_this_machine(monkeypatch):
    monkeypatch.delenv("CUD_MEMORY_LIMIT", raising=False)
    got = available_memory("cpu")
    assert isinstance(got, int) and got > 100 * 2 ** 20
    if Path("/proc/self/status").is_file():
        assert got >= sysmem._own_resident()


def test_proc_files_are_read(tmp_path):
    (tmp_path / "status").write_text("Name:\tpython\nVmRSS:\t  900 kB\nRssAnon:\t  600 kB\nRssFile:\t 300 kB\n"
                                     "RssShmem:\t  4 kB\n")
    (tmp_path / "meminfo").write_text("MemTotal: 8000 kB\nMemFree: 1000 kB\nMemAvailable: 5000 kB\n")
    assert sysmem._own_resident(tmp_path / "status") == 604 * 1024  # anonymous + shmem, not file pages
    assert sysmem._meminfo_available(tmp_path / "meminfo") == 5000 * 1024
    assert sysmem._meminfo_available(tmp_path / "missing") is None


def fake_cgroups(tmp_path, v2_files=None, v1_files=None):
    """A /proc/self/cgroup, a mountinfo and cgroup folders under tmp_path."""
    unified, v1 = tmp_path / "unified", tmp_path / "memory"
    for base, files in ((unified, v2_files or {}), (v1, v1_files or {})):
        for rel, content in files.items():
            path = base / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    (tmp_path / "cgroup").write_text("4:memory:/jobs/a\n1:cpu:/\n0::/user/session\n")
    (tmp_path / "mountinfo").write_text(
        f"30 20 0:26 / {unified} rw,nosuid - cgroup2 cgroup2 rw\n"
        f"31 20 0:27 / {v1} rw,relatime shared:9 - cgroup cgroup rw,memory\n"
        f"32 20 0:28 / {tmp_path / 'cpu'} rw - cgroup cgroup rw,cpu\n")
    return tmp_path / "cgroup", tmp_path / "mountinfo"


def test_cgroup_v2_limit_minus_usage_without_page_cache(tmp_path):
    files = fake_cgroups(tmp_path, v2_files={
        "user/session/memory.max": "1000000\n", "user/session/memory.current": "700000\n",
        "user/session/memory.stat": "anon 500000\nactive_file 100000\ninactive_file 100000\n",
        "user/memory.max": "max\n", "user/memory.current": "900000\n"})
    assert sysmem._cgroup_room(*files) == 1000000 - 500000


def test_cgroup_ancestor_and_v1_limits_count(tmp_path):
    files = fake_cgroups(tmp_path, v2_files={
        "user/session/memory.max": "max\n", "user/session/memory.current": "100\n",
        "user/memory.max": "5000000\n", "user/memory.high": "4000000\n", "user/memory.current": "1000000\n"},
        v1_files={"jobs/a/memory.limit_in_bytes": "9223372036854771712\n", "jobs/a/memory.usage_in_bytes": "10\n",
                  "jobs/memory.limit_in_bytes": "2500000\n", "jobs/memory.usage_in_bytes": "1000000\n",
                  "jobs/memory.stat": "total_inactive_file 200000\ntotal_active_file 0\n"})
    # v2 ancestor: high 4.0 MB − 1.0 MB; v1 ancestor: 2.5 MB − (1.0 − 0.2) MB = 1.7 MB
    assert sysmem._cgroup_room(*files) == 1700000


def test_no_cgroup_limit(tmp_path):
    files = fake_cgroups(tmp_path, v2_files={"user/session/memory.max": "max\n",
                                             "user/session/memory.current": "100\n"})
    assert sysmem._cgroup_room(*files) is None
    assert sysmem._cgroup_room(tmp_path / "missing", tmp_path / "missing") is None


# ----------------------------------------------------------------------------- against a measurement

MEASURE = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)
    from cud_core.engine.attribution import attribute
    from cud_core.data.samples import load_builtin
    from cud_core.engine.memory import estimate_scoring_peak, longest_sequence
    from cud_core.engine.tiny import tiny_model

    lm = tiny_model("llama", d_model=256, n_layers=4, n_heads=8, n_kv_heads=2, context=512)
    samples = load_builtin("world-facts")
    attribute(lm.model, lm.tokenizer, samples[:1], steps=2, batch_size=1)  # warm-up
    out = []
    for b in (4, 16):
        group = samples[:b]
        attribute(lm.model, lm.tokenizer, group, steps=2, batch_size=b)
        # VmHWM, not ru_maxrss: ru_maxrss keeps the (large) pytest parent's peak across fork + exec
        peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) * 1024
        out.append([peak, estimate_scoring_peak(lm.model, longest_sequence(lm.tokenizer, group), b, steps=2)])
    print(json.dumps(out))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_estimate_follows_a_measured_peak():
    """A real attribution batch in a fresh process: what a larger batch adds to the peak resident memory
    is within a factor of two of what the estimate adds, and the totals are within a factor of two."""
    out = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    (peak4, est4), (peak16, est16) = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.5 < est16 / peak16 < 2
    assert peak16 > peak4
    assert 0.5 < (est16 - est4) / (peak16 - peak4) < 2


# ----------------------------------------------------------------------------- the guard in real runs

def test_scoring_lowers_a_batch_that_would_not_fit_and_scores_the_same(tiny_llama, tmp_path, monkeypatch):
    import torch

    from cud_core.data.samples import Sample
    from cud_core.engine.graph import Graph
    from cud_core.pipeline.scoring import ScoreSettings, score_run
    from cud_core.store.score_files import load_edge_scores
    from cud_core.store.workspace import Workspace

    samples = [Sample(f"What is fact number {i}?", f"Fact {i} is about Paris.", f"s{i}") for i in range(6)]
    settings = ScoreSettings(batch_size=6, steps=1, generation=False)
    reference = score_run(RunContext(tiny_llama, Workspace(tmp_path / "a"), "d"), samples, settings)
    longest = memory.longest_sequence(tiny_llama.tokenizer, samples)
    limit = int(estimate_scoring_peak(tiny_llama.model, longest, 2) / 0.9) + 1  # batch 2 fits, 3 does not
    monkeypatch.setenv("CUD_MEMORY_LIMIT", str(limit))
    messages = []
    ws = Workspace(tmp_path / "b")
    run = score_run(RunContext(tiny_llama, ws, "d", progress=lambda f, m: messages.append(m)), samples, settings)
    assert any(m.startswith("memory: batch size 6 would need about") and m.endswith(")") and "using 2" in m
               for m in messages), messages
    assert ws.get_run(run)["config"]["batch_size"] == 6  # the requested size: a rerun resumes this run
    assert len(list((tmp_path / "b" / "tensors" / run).glob("scores-*"))) == 3  # scored two at a time
    n = Graph.from_model(tiny_llama.model).n_edges
    got, want = load_edge_scores(ws, run, n), load_edge_scores(Workspace(tmp_path / "a"), reference, n)
    for sid in want:
        assert torch.allclose(got[sid], want[sid], atol=1e-3 * want[sid].abs().max())


def test_cli_refuses_runs_that_cannot_fit(tiny_folder, tmp_path, monkeypatch, capsys):
    from cud_core.cli import main

    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"id": f"f{i}", "question": f"Fact {i}?", "answer": f"Fact {i} is Oslo."})
                            + "\n" for i in range(6)))
    common = ["--model", str(tiny_folder), "--data", str(data), "--workspace", str(tmp_path / "ws")]
    monkeypatch.setenv("CUD_MEMORY_LIMIT", "100M")  # not even the runtime fits
    assert main(["score", *common]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the model loader's progress bar
    assert err.startswith("error: not enough memory: even batch size 1 would need about")

    from cud_core.engine.models import load_model
    lm = load_model(str(tiny_folder), device="cpu")
    est = estimate_unlearning_peak(lm.model, 20, 2)
    monkeypatch.setenv("CUD_MEMORY_LIMIT", str(int(est / 0.9) + 1))
    assert main(["unlearn", *common, "--batch-size", "64", "--forget-fraction", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "unlearning batch size 64 would need about" in err and "use --batch-size" in err
