import json

import pytest
import torch

import cud_core.engine.models as models
from cud_core.data.samples import Sample
from cud_core.engine.metrics import generate_answers
from cud_core.engine.models import ModelLoadError, load_model
from cud_core.engine.tiny import FAMILIES, tiny_model


def test_embedded_model_loads_offline_and_knows_paris(embedded, monkeypatch):
    assert embedded.name == "SmolLM2-135M-Instruct"
    info = embedded.info
    assert (info["model_type"], info["n_layers"], info["n_heads"], info["n_kv_heads"], info["d_model"]) == \
        ("llama", 30, 9, 3, 576)
    assert "quantization_config" not in json.loads((models.embedded_model_dir() / "config.json").read_text())
    [answer] = generate_answers(embedded.model, embedded.tokenizer,
                                [Sample("What is the capital of France?", "Paris")], max_new_tokens=16)
    assert "Paris" in answer


def test_second_embedded_load_reuses_the_converted_folder(embedded, monkeypatch):
    def no_conversion(*a, **k):
        raise AssertionError("the embedded model was converted twice")
    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    again = load_model("embedded", device="cpu")
    a = dict(embedded.model.named_parameters())["model.layers.0.self_attn.q_proj.weight"]
    b = dict(again.model.named_parameters())["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(a, b)


def test_local_folder_loads_the_same_model(tiny_folder, tiny_llama):
    lm = load_model(str(tiny_folder), device="cpu")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(lm.model(ids).logits, tiny_llama.model(ids).logits, atol=1e-6)
    assert load_model(str(tiny_folder), dtype="bfloat16", device="cpu").model.dtype == torch.bfloat16


def test_a_cached_fine_tune_loaded_by_its_path_keeps_its_name(tiny_folder, tmp_path):
    """A folder `pipeline.finetune` wrote (with its cud_finetune.json) is named as the calibration that made it
    named it, base + "+ft-" + the key's first 8 characters; any other folder by its path."""
    import json
    import shutil

    folder = tmp_path / "0d34d6e87900dd4a"
    shutil.copytree(tiny_folder, folder)
    assert load_model(str(folder), device="cpu").name == str(folder)
    (folder / "cud_finetune.json").write_text(json.dumps({"base": "SmolLM2-135M-Instruct", "samples": 3}))
    lm = load_model(str(folder), device="cpu")
    assert lm.name == lm.info["name"] == "SmolLM2-135M-Instruct+ft-0d34d6e8"
    (folder / "cud_finetune.json").write_text("[1, 2]")  # a record that is not ours: the path again
    assert load_model(str(folder), device="cpu").name == str(folder)


def test_upgrade_renames_runs_stored_under_a_fine_tune_s_path(tiny_folder, tmp_path):
    """Runs made with --model <a cached fine-tune's folder> before it had a name move to that name, so a rerun
    of their command finds them; other models' runs stay."""
    import json
    import shutil

    from cud_core.pipeline.upgrade import upgrade
    from cud_core.store.workspace import Workspace

    folder = tmp_path / "0d34d6e87900dd4a"
    shutil.copytree(tiny_folder, folder)
    (folder / "cud_finetune.json").write_text(json.dumps({"base": "SmolLM2-135M-Instruct"}))
    ws = Workspace(tmp_path / "ws")
    made = ws.create_run("calibrate", str(folder), "d", {})
    other = ws.create_run("calibrate", str(tiny_folder), "d", {})
    ws.add_annotation(str(folder), "d", "s1", "surprising")
    assert upgrade(ws.root) == [f"1 runs of model {folder} → SmolLM2-135M-Instruct+ft-0d34d6e8"]
    assert ws.get_run(made)["model"] == load_model(str(folder), device="cpu").name
    assert ws.get_run(other)["model"] == str(tiny_folder)
    assert [a["model"] for a in ws.annotations()] == ["SmolLM2-135M-Instruct+ft-0d34d6e8"]
    assert upgrade(ws.root) == []  # once


def test_bad_model_paths_give_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="without config.json"):
        load_model(str(tmp_path))
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelLoadError, match="downloading is off by default"):
        load_model("no-such-org/no-such-model-xyz")
    with pytest.raises(ModelLoadError, match="unknown dtype 'float8'"):
        load_model("embedded", dtype="float8")


def test_non_causal_and_unsupported_architectures_are_named(tmp_path):
    from transformers import BertConfig, T5Config

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "bert")
    with pytest.raises(ModelLoadError, match="'bert' causal LM; circuit extraction supports llama"):
        load_model(str(tmp_path / "bert"))
    T5Config(d_model=32, num_layers=1, num_heads=2).save_pretrained(tmp_path / "t5")
    with pytest.raises(ModelLoadError, match="'t5' model, which is not a causal language model"):
        load_model(str(tmp_path / "t5"))


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_models_of_every_family(family):
    lm = tiny_model(family)
    assert lm.info["model_type"] == family and lm.info["n_layers"] == 2
    ids = lm.tokenizer("The capital of France is Paris.", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = lm.model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(lm.tokenizer)) and torch.isfinite(logits).all()
    # same seed, same weights
    assert torch.equal(next(tiny_model(family).model.parameters()), next(lm.model.parameters()))
