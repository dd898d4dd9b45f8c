import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUD_NO_PROGRESS", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes minutes; left out of `make test` (run with `make test-all`)")


@pytest.fixture(scope="session")
def embedded():
    from cud_core.models import load_model

    return load_model("embedded", device="cpu")


@pytest.fixture(scope="session")
def tiny_llama():
    from cud_core.tiny import tiny_model

    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_chat():
    from cud_core.tiny import tiny_model

    return tiny_model("llama", chat=True, seed=1)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tiny_llama):
    """The tiny Llama saved as a Hugging Face model folder (config + safetensors + tokenizer)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama.model.save_pretrained(path)
    tiny_llama.tokenizer.save_pretrained(path)
    return path
