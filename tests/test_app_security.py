"""The app facing a hostile browser or hostile data: paths named in the URL or the sidebar
stay inside the allowed roots, and user text never reaches the browser as live Markdown or HTML."""
import json
import os
import re
import shutil
import sys

import pytest
from pagetest import PAGES, ROOT, app
from streamlit.testing.v1 import AppTest

PAYLOADS = ["<img src=x onerror=alert(1)>", "<script>alert(1)</script>", "![p](http://attacker.example/p.png)",
            "[docs](http://attacker.example/)", "[click](javascript:alert(1))"]
# Live Markdown/HTML: an image or link ("![", "]("), a raw tag or a javascript: URL whose first
# character follows an even number of backslashes (an odd number escapes it: it shows literally).
LIVE = re.compile(r"(?<!\\)(?:\\\\)*(?:!\[|\]\(|<\s*/?\s*(?:img|script)|javascript:)", re.IGNORECASE)


pytestmark = pytest.mark.usefixtures("allow_test_folders")  # see conftest.py


def markdown_texts(at: AppTest) -> list[tuple[str, str]]:
    """(proto type, text) for every string the page hands Streamlit to render as Markdown: bodies of
    markdown, captions, headings and alerts, progress texts, widget labels and help, radio options."""
    out = []

    def walk(node):
        for child in getattr(node, "children", {}).values():
            walk(child)
        proto = getattr(node, "proto", None)
        if proto is None or not hasattr(proto, "DESCRIPTOR"):
            return
        kind = proto.DESCRIPTOR.name
        fields = {"Markdown": ("body",), "Alert": ("body",), "Heading": ("body",), "Progress": ("text",),
                  "Radio": ("label", "help", "options", "captions")}.get(kind, ("label", "help"))
        for name in fields:
            if name in proto.DESCRIPTOR.fields_by_name:
                value = getattr(proto, name)
                out.extend((kind, v) for v in ([value] if isinstance(value, str) else value) if isinstance(v, str))

    walk(at._tree)
    return out


def everything(at: AppTest) -> str:
    """Every string of every element's proto (to check that a refused file's content shows nowhere)."""
    texts = []

    def walk(node):
        for child in getattr(node, "children", {}).values():
            walk(child)
        proto = getattr(node, "proto", None)
        if proto is not None and hasattr(proto, "SerializeToString"):
            texts.append(proto.SerializeToString().decode("utf-8", "replace"))

    walk(at._tree)
    return "\n".join(texts)


def shown(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def errors(at: AppTest) -> list[str]:
    return [shown(e.value) for e in at.error]


def test_the_live_markdown_check_itself():
    for payload in PAYLOADS:
        assert LIVE.search(f"**Q:** Where? {payload}")
    from views.ui.text import md

    for payload in PAYLOADS:
        assert not LIVE.search(f"**Q:** Where? {md(payload)}") and shown(md(payload)) == payload
        assert LIVE.search(f"\\\\{payload}") and not LIVE.search(md(f"\\{payload}"))  # "\\" escapes itself
    assert md("a*b_c `d` :red[e] $x$ \\") == "a\\*b\\_c \\`d\\` \\:red\\[e\\] \\$x\\$ \\\\"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A tiny model and a facts file whose questions, answers and ids (and the file, model and
    workspace names) carry HTML and Markdown payloads, scored and calibrated into a workspace."""
    from cud_core.data.samples import load_samples
    from cud_core.engine.models import load_model
    from cud_core.engine.tiny import tiny_model
    from cud_core.pipeline.calibration import CalibrationSettings, calibrate
    from cud_core.pipeline.context import RunContext
    from cud_core.pipeline.finetune import FinetuneSettings, finetune
    from cud_core.pipeline.jobs import prepare_scenario
    from cud_core.pipeline.scoring import ScoreSettings
    from cud_core.store.workspace import Workspace

    root = tmp_path_factory.mktemp("hostile")
    names = ["Alice", "Bruno", "Chen", "Dara", "Emil", "Fatou", "Goran", "Hana", "Ivo", "Jun"]
    cities = ["Lisbon", "Oslo", "Quito", "Hanoi", "Lima", "Accra", "Perth", "Riga", "Baku", "Turin"]
    data = root / "facts ![d](d.png) <img src=x onerror=alert(1)>.jsonl"
    data.write_text("".join(json.dumps({"id": f"s{i} {PAYLOADS[i % 5]}",
                                        "question": f"Where was {n} born? {PAYLOADS[(i + 2) % 5]}",
                                        "answer": f"{n} was born in {c}. {PAYLOADS[(i + 4) % 5]}"}) + "\n"
                            for i, (n, c) in enumerate(zip(names, cities))))
    lm = tiny_model("llama", d_model=64, n_layers=2)
    lm.model = finetune(lm.model, lm.tokenizer, load_samples(data), FinetuneSettings(epochs=30, lr=3e-3,
                                                                                      batch_size=10))
    folder = root / "model <script>alert(1) [m](javascript:alert(1))"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    sc = prepare_scenario(RunContext(load_model(str(folder), device="cpu"), dataset=str(data)), forget_fraction=0.6,
                          seed=0)
    ws = Workspace(root / "ws ![w](w.png)")
    settings = CalibrationSettings(protocol=None,
                                   methods=("grad_diff", "npo", "simnpo"), steps=2, lr=1e-3, eval_every=1, q=0.25,
                                   score=ScoreSettings(steps=2, n_edges=20, generation=False))
    calibrate(RunContext(sc.lm, ws, str(data)), sc.forget, sc.retain, settings)
    return {"model": str(folder), "data": str(data), "workspace": str(ws.root),
            "forget": [s.id for s in sc.forget]}


@pytest.mark.parametrize("page", PAGES)
def test_user_text_never_reaches_the_browser_as_markdown_or_html(page, hostile):
    at = app(page, **{k: hostile[k] for k in ("model", "data", "workspace")}).run()
    assert not at.exception, at.exception
    texts = markdown_texts(at)
    live = [(kind, text) for kind, text in texts if LIVE.search(text)]
    assert not live, live
    # the payloads did reach Markdown elements (escaped), so the check above looked at them
    assert any("onerror" in text for _, text in texts)
    if page == "views/2_Circuit.py":  # the selected sample's question and answer
        qa = next(shown(m.value) for m in at.markdown if m.value.startswith("**Q:**"))
        assert "attacker.example" in qa or "javascript:" in qa or "<" in qa


def test_every_sample_of_the_circuit_page_is_shown_as_text(hostile):
    for sample in hostile["forget"]:
        at = app("views/2_Circuit.py", sample=sample, **{k: hostile[k] for k in ("model", "data", "workspace")})
        at.run()
        assert not at.exception and at.selectbox[0].value == sample
        qa = next(m.value for m in at.markdown if m.value.startswith("**Q:**"))
        assert not LIVE.search(qa), qa


def test_job_titles_messages_and_errors_are_shown_as_text(hostile, monkeypatch):
    import threading

    from cud_core.pipeline.jobs import JobManager
    from views.ui import state

    manager = JobManager()
    monkeypatch.setattr(state, "jobs", lambda: manager)
    release = threading.Event()

    def failing(progress, should_stop):
        raise RuntimeError(f"bad sample {PAYLOADS[2]}")

    def waiting(progress, should_stop):
        progress(0.5, f"scoring {PAYLOADS[0]} {PAYLOADS[4]}")
        while not should_stop() and not release.is_set():
            release.wait(0.05)

    failed = manager.submit("score", f"Scoring ({PAYLOADS[3]})", failing)
    manager.wait(failed.id, 30)
    running = manager.submit("score", f"Scoring ({PAYLOADS[1]})", waiting)
    try:
        for _ in range(200):
            if running.message:
                break
            release.wait(0.05)
        at = app(**{k: hostile[k] for k in ("model", "data", "workspace")})
        at.session_state["_jobs_seen_active"] = {failed.id}  # this session watched it run: it is told how it ended
        at.run()
        assert not at.exception, at.exception
        progress = [text for kind, text in markdown_texts(at) if kind == "Progress"]
        assert len(progress) == 1 and "onerror" in progress[0] and not LIVE.search(progress[0])
        error = next(e for e in errors(at) if "failed" in e)
        assert error == f"Scoring ({PAYLOADS[3]}) failed: RuntimeError: bad sample {PAYLOADS[2]}"
        assert not [text for _, text in markdown_texts(at) if LIVE.search(text)]
    finally:
        release.set()
        manager.wait(running.id, 30)


# ----------------------------------------------------------------------------- allowed roots

@pytest.fixture
def outside(tmp_path, monkeypatch):
    """An allowed root (the only one besides the project and ./workspace) and, next to it, a secret
    CSV, a model folder and a place for workspaces outside it."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv("CUD_ALLOWED_ROOTS", str(allowed))
    secret = tmp_path / "secret.csv"
    secret.write_text("password,hash\nroot,TOPSECRET\n")
    (allowed / "link.csv").symlink_to(secret)
    (allowed / "out").symlink_to(tmp_path)
    return {"allowed": allowed, "secret": secret, "root": tmp_path}


def test_the_allowed_roots_come_from_the_project_the_workspace_the_environment_and_arguments(tmp_path, monkeypatch):
    from views.ui import paths

    monkeypatch.setenv("CUD_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("CUD_ALLOWED_ROOTS", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b' / '..' / 'c'}")
    monkeypatch.setattr(sys, "argv", ["app.py", "--allow-root", str(tmp_path / "d"), f"--allow-root={tmp_path}/e"])
    tmp_path = tmp_path.resolve()
    assert paths.allowed_roots() == [ROOT, tmp_path / "ws", tmp_path / "a", tmp_path / "c", tmp_path / "d",
                                     tmp_path / "e"]
    assert paths.argument_roots(["--other", "x", "--allow-root"]) == []


@pytest.mark.parametrize("how", ["plain", "dot-dot", "symlink"])
def test_a_data_file_outside_the_allowed_roots_is_not_read(how, outside):
    data = {"plain": outside["secret"], "dot-dot": outside["allowed"] / ".." / "secret.csv",
            "symlink": outside["allowed"] / "link.csv"}[how]
    at = app(data=str(data), workspace=str(outside["allowed"] / "ws")).run()
    assert not at.exception, at.exception
    [error] = errors(at)
    assert error.startswith(f"data {str(data)!r} is outside the folders this app may use")
    assert str(outside["allowed"]) in error and "--allow-root" in error and "CUD_ALLOWED_ROOTS" in error
    assert "password" not in everything(at) and "TOPSECRET" not in everything(at)
    assert all(b.proto.disabled for b in at.button if b.label.startswith(("Score", "Calibrate")))


@pytest.mark.parametrize("page", PAGES[1:5])
def test_results_pages_refuse_a_data_file_outside_the_allowed_roots(page, outside):
    at = app(page, data=str(outside["secret"]), workspace=str(outside["allowed"] / "ws")).run()
    assert not at.exception, at.exception
    [error] = errors(at)
    assert error.startswith(f"data {str(outside['secret'])!r} is outside")
    assert not (outside["allowed"] / "ws").exists()  # stopped before touching anything


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("how", ["plain", "symlink"])
def test_a_workspace_outside_the_allowed_roots_is_not_created(page, how, outside):
    target = outside["root"] / "elsewhere" / "ws"
    given = target if how == "plain" else outside["allowed"] / "out" / "elsewhere" / "ws"
    at = app(page, workspace=str(given)).run()
    assert not at.exception, at.exception
    [error] = errors(at)
    assert f"workspace {str(given)!r} is outside the folders this app may use" in error
    assert not (outside["root"] / "elsewhere").exists()


def test_the_sidebar_workspace_field_is_checked_too(outside):
    at = app(workspace=str(outside["allowed"] / "ws")).run()
    assert not at.error and (outside["allowed"] / "ws" / "cud.sqlite").is_file()
    field = next(t for t in at.sidebar.text_input if t.label == "Workspace folder")
    field.set_value(str(outside["root"] / "elsewhere")).run()
    assert not at.exception
    assert any("workspace" in e and "is outside" in e for e in errors(at))
    assert not (outside["root"] / "elsewhere").exists()


def test_builtin_data_and_folders_allowed_by_environment_or_argument_are_used(outside, monkeypatch):
    at = app(data="builtin:world-facts", workspace=str(outside["allowed"] / "ws")).run()
    assert not at.error and any(shown(s.value).startswith("builtin:world-facts: ") for s in at.success)
    mine = outside["root"] / "mine"
    mine.mkdir()
    (mine / "d.csv").write_text("question,answer\nq?,a\n")
    at = app(data=str(mine / "d.csv"), workspace=str(mine / "ws")).run()
    assert len(at.error) == 2 and not (mine / "ws").exists()  # data and workspace refused
    monkeypatch.setattr(sys, "argv", ["app.py", "--allow-root", str(mine)])
    at = app(data=str(mine / "d.csv"), workspace=str(mine / "ws")).run()
    assert not at.error and any(shown(s.value) == f"{mine / 'd.csv'}: 1 samples" for s in at.success)
    assert (mine / "ws" / "cud.sqlite").is_file()


def test_a_model_folder_outside_the_allowed_roots_and_caches_is_not_opened(outside, tiny_folder):
    at = app(model=str(tiny_folder), workspace=str(outside["allowed"] / "ws")).run()
    assert not at.exception
    [error] = errors(at)
    assert error.startswith(f"Cannot load the model: model {str(tiny_folder)!r} is outside the folders")
    inside = outside["allowed"] / "model"
    shutil.copytree(tiny_folder, inside)
    at = app(model=str(inside), workspace=str(outside["allowed"] / "ws")).run()
    assert not at.error and any(shown(s.value).startswith(f"{inside} on cpu") for s in at.success)
    # a hub id is read from the Hugging Face cache: not a path, not refused as one
    at = app(model="nobody/no-such-model", workspace=str(outside["allowed"] / "ws")).run()
    [error] = errors(at)
    assert "local Hugging Face cache" in error and "outside" not in error


@pytest.mark.parametrize("page", PAGES[1:5])
def test_results_pages_refuse_a_model_folder_outside_the_allowed_roots(page, outside):
    model = outside["root"] / "some-model"
    at = app(page, model=str(model), workspace=str(outside["allowed"] / "ws")).run()
    assert not at.exception
    [error] = errors(at)
    assert error.startswith(f"model {str(model)!r} is outside")


def test_the_server_listens_on_localhost():
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost"
    assert config["server"]["fileWatcherType"] == "none" and config["client"]["toolbarMode"] == "minimal"


def test_streamlit_reads_the_local_tool_settings():
    """Streamlit itself, started in the repository as `make run` starts it, applies the file's settings
    (a misspelt key would be ignored): localhost only, no file watcher, and no full garbage collection
    after every script run (it held the GIL ~0.3 s per job-panel refresh and slowed a running job ~1.5×)."""
    import subprocess
    import sys

    code = ("from streamlit import config; print([config.get_option(k) for k in ('server.address', "
            "'server.fileWatcherType', 'runner.postScriptGC', 'client.toolbarMode', 'browser.gatherUsageStats')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "['localhost', 'none', False, 'minimal', False]", out.stderr
