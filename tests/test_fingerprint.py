"""A model's identity is its weights and the config fields that change its computation; runs, checkpoints
and caches stored under the whole-config definition (`legacy_fingerprints`) are adopted once."""
import hashlib
import json

import torch
import transformers
from test_scoring import SAMPLES, scored_from_now_on

from cud_core.engine.models import (
    EMBEDDED_FINGERPRINT,
    EMBEDDED_LEGACY_FINGERPRINTS,
    adopt_legacy_runs,
    legacy_fingerprints,
    load_model,
    model_fingerprint,
)
from cud_core.engine.tiny import tiny_model
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.scoring import ScoreSettings, score_run
from cud_core.store.workspace import Workspace


def former_fingerprint(model) -> str:
    """The whole-config definition, pinned here independently of `legacy_fingerprints`."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for _, p in sorted(model.state_dict().items())[:: max(1, len(model.state_dict()) // 16)]:
        h.update(p.detach().float().flatten()[:4096].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def test_the_fingerprint_is_the_weights_and_computation_not_bookkeeping(tmp_path):
    lm = tiny_model("llama")
    model = lm.model
    fp = model_fingerprint(model)
    model.config.transformers_version = "4.0.0"              # the library that wrote it
    model.config._name_or_path = str(tmp_path / "elsewhere")  # where it was loaded from
    model.config.use_cache = not model.config.use_cache       # generation bookkeeping
    model.config.output_hidden_states = True
    assert model_fingerprint(model) == fp
    model.save_pretrained(tmp_path / "saved")                 # written and read back: the same model
    lm.tokenizer.save_pretrained(tmp_path / "saved")
    assert model_fingerprint(load_model(str(tmp_path / "saved"), device="cpu").model) == fp

    weight = model.model.layers[1].mlp.down_proj.weight
    with torch.no_grad():
        weight[3, 5] += 1e-3                                  # one weight of one matrix
    moved = model_fingerprint(model)
    assert moved != fp
    with torch.no_grad():
        weight[3, 5] -= 1e-3
    assert torch.equal(weight, tiny_model("llama").model.model.layers[1].mlp.down_proj.weight)
    assert model_fingerprint(model) == fp
    model.config.rms_norm_eps *= 10                           # a field the forward pass reads
    assert model_fingerprint(model) not in (fp, moved)


def test_former_fingerprints_of_this_and_of_the_writing_library_version_are_known(tiny_folder, monkeypatch, tmp_path):
    import shutil

    folder = tmp_path / "older"
    shutil.copytree(tiny_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "transformers_version": "5.0.0"}))
    model = load_model(str(folder), device="cpu").model
    now = former_fingerprint(model)
    # the runs were stored before an upgrade (to_dict writes the library's version)
    monkeypatch.setattr(transformers.configuration_utils, "__version__", "5.0.0")
    before_upgrade = former_fingerprint(model)
    monkeypatch.undo()
    assert before_upgrade != now and {now, before_upgrade} <= legacy_fingerprints(model)
    assert model_fingerprint(model) not in legacy_fingerprints(model)


def test_the_embedded_models_fingerprint_and_its_former_ones(embedded):
    assert model_fingerprint(embedded.model) == EMBEDDED_FINGERPRINT
    known = set(EMBEDDED_LEGACY_FINGERPRINTS) | {former_fingerprint(embedded.model)}
    assert known <= legacy_fingerprints(embedded.model)


def test_a_run_stopped_under_the_former_fingerprint_resumes(tiny_llama, tmp_path, monkeypatch):
    ws = Workspace(tmp_path)
    settings = ScoreSettings(batch_size=2, steps=2, generation=False)
    said = []
    run = score_run(RunContext(tiny_llama, ws, "d", progress=lambda f, m: said.append(m),
                               should_stop=lambda: any(m.startswith("2/5 samples") for m in said)), SAMPLES, settings)
    assert ws.get_run(run)["status"] == "stopped"
    old = former_fingerprint(tiny_llama.model)
    # as stored under the whole-config definition
    assert ws.adopt_fingerprint(old, [model_fingerprint(tiny_llama.model)]) == [run]
    assert ws.get_run(run)["config"]["model_fingerprint"] == old

    seen = scored_from_now_on(monkeypatch)
    assert score_run(RunContext(tiny_llama, ws, "d"), SAMPLES, settings) == run
    assert seen == ["s2", "s3", "s4"] and len(ws.list_runs()) == 1
    assert ws.get_run(run)["config"]["model_fingerprint"] == model_fingerprint(tiny_llama.model)
    assert adopt_legacy_runs(ws, tiny_llama.model) == []  # once


def test_a_checkpoint_written_under_the_former_fingerprint_is_restored(tmp_path, monkeypatch):
    import cud_core.engine.models as models
    from cud_core.unlearn.checkpoint import Checkpoint
    from cud_core.unlearn.runner import UnlearnResult

    model = tiny_model("llama").model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    result = UnlearnResult('npo', {})
    result.losses = [0.5]
    old = former_fingerprint(model)
    monkeypatch.setattr(models, "model_fingerprint", lambda m: old)  # written under the whole-config fingerprint
    Checkpoint(tmp_path / "ck.safetensors", model, {"lr": 1e-3}, SAMPLES[:2], SAMPLES[2:]).save(model, opt, result, 3)
    monkeypatch.undo()
    fresh = UnlearnResult('npo', {})
    assert Checkpoint(tmp_path / "ck.safetensors", model, {"lr": 1e-3}, SAMPLES[:2], SAMPLES[2:]).restore(
        model, opt, fresh) == 3 and fresh.losses == [0.5]
    other = Checkpoint(tmp_path / "ck.safetensors", model, {"lr": 2e-3}, SAMPLES[:2], SAMPLES[2:])
    assert other.restore(model, opt, UnlearnResult('npo', {})) == 0  # other settings: not this run's
