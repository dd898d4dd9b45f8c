from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


def app(**params) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    for k, v in params.items():
        at.query_params[k] = v
    return at


def test_home_opens_on_the_embedded_default(embedded, tmp_path):
    at = app(workspace=str(tmp_path)).run()
    assert not at.exception
    assert any("SmolLM2-135M-Instruct" in s.value for s in at.success)
    assert any("world-facts" in s.value for s in at.success)
    assert any("Nothing computed yet" in i.value for i in at.info)


def test_home_on_a_local_model_folder_and_bad_path(tiny_folder, tmp_path):
    at = app(model=str(tiny_folder), workspace=str(tmp_path)).run()
    assert not at.exception
    assert at.sidebar.radio[0].value == "local folder"
    assert any("on cpu" in s.value for s in at.success)
    at.sidebar.text_input[0].set_value(str(tmp_path)).run()
    assert not at.exception
    assert any("without config.json" in e.value for e in at.error)
