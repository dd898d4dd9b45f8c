import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUD_NO_PROGRESS", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes minutes; left out of `make test` (run with `make test-all`)")


@pytest.fixture
def allow_test_folders(tmp_path_factory, monkeypatch):
    """The tests' models, data files and workspaces live in pytest's temporary folder: allow the app
    to use it (paths named in the browser must lie inside the allowed roots; views/ui/paths.py)."""
    monkeypatch.setenv("CUD_ALLOWED_ROOTS", str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="session")
def embedded():
    from cud_core.engine.models import load_model

    return load_model("embedded", device="cpu")


@pytest.fixture(scope="session")
def tiny_llama():
    from cud_core.engine.tiny import tiny_model

    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_chat():
    from cud_core.engine.tiny import tiny_model

    return tiny_model("llama", chat=True, seed=1)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tiny_llama):
    """The tiny Llama saved as a Hugging Face model folder (config + safetensors + tokenizer)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama.model.save_pretrained(path)
    tiny_llama.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def app_setup(tmp_path_factory):
    """A tiny memorised model saved as a folder, a facts file, and a workspace with a finished
    calibration and an unlearning run for them: what the app pages read."""
    import json

    from cud_core.engine.models import load_model
    from cud_core.engine.tiny import tiny_model
    from cud_core.pipeline.calibration import CalibrationSettings, calibrate
    from cud_core.pipeline.context import RunContext
    from cud_core.pipeline.finetune import FinetuneSettings, finetune
    from cud_core.pipeline.jobs import prepare_scenario
    from cud_core.pipeline.scoring import ScoreSettings
    from cud_core.pipeline.unlearning import UnlearnSettings, unlearn
    from cud_core.store.workspace import Workspace

    root = tmp_path_factory.mktemp("app")
    names = ["Alice", "Bruno", "Chen", "Dara", "Emil", "Fatou", "Goran", "Hana", "Ivo", "Jun", "Kofi", "Lena"]
    cities = ["Lisbon", "Oslo", "Quito", "Hanoi", "Lima", "Accra", "Perth", "Riga", "Baku", "Turin", "Cairo", "Dakar"]
    data = root / "facts.jsonl"
    data.write_text("".join(json.dumps({"id": f"f{i}", "question": f"Where was {n} born?",
                                        "answer": f"{n} was born in {c}."}) + "\n"
                            for i, (n, c) in enumerate(zip(names, cities))))
    lm = tiny_model("llama", d_model=64, n_layers=2)
    from cud_core.data.samples import load_samples
    lm.model = finetune(lm.model, lm.tokenizer, load_samples(data), FinetuneSettings(epochs=60, lr=3e-3,
                                                                                      batch_size=12))
    folder = root / "model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    loaded = load_model(str(folder), device="cpu")
    sc = prepare_scenario(RunContext(loaded, dataset=str(data)), forget_fraction=0.5, seed=0)
    ws = Workspace(root / "ws")
    settings = CalibrationSettings(protocol=None,
                                   methods=("grad_diff", "npo", "simnpo"), steps=8, lr=1e-3, eval_every=2, q=0.25,
                                   score=ScoreSettings(steps=2, n_edges=20, generation=False))
    cal = calibrate(RunContext(sc.lm, ws, str(data)), sc.forget, sc.retain, settings)
    unl = unlearn(RunContext(sc.lm, ws, str(data)), sc.forget[:3], sc.retain,
                  UnlearnSettings("npo", steps=4, lr=1e-3, eval_every=2), label="test run")
    return {"model": str(folder), "data": str(data), "workspace": str(ws.root), "calibration": cal,
            "unlearn": unl, "forget": [s.id for s in sc.forget]}
