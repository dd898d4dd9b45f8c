"""The Streamlit app, page by page, through streamlit.testing.v1.AppTest on a tiny model."""
import pytest
from pagetest import PAGES, app, ready, shown

pytestmark = pytest.mark.usefixtures("allow_test_folders")  # see conftest.py


def test_home_opens_on_the_embedded_default(embedded, tmp_path):
    at = app(workspace=str(tmp_path)).run()
    assert not at.exception
    assert any("SmolLM2-135M-Instruct on cpu" in s for s in shown(at.success))
    assert any("builtin:world-facts: " in s for s in shown(at.success))
    assert any(f"Nothing computed yet in {tmp_path}." in i for i in shown(at.info))


def test_home_on_a_local_model_folder_and_a_bad_path(tiny_folder, tmp_path):
    at = app(model=str(tiny_folder), workspace=str(tmp_path)).run()
    assert not at.exception
    assert at.sidebar.radio[0].value == "local folder"
    assert any(f"{tiny_folder} on cpu" in s for s in shown(at.success))
    at.sidebar.text_input[0].set_value(str(tmp_path)).run()
    assert not at.exception
    assert any(f"{tmp_path} is a folder without config.json" in e for e in shown(at.error))


def test_the_entry_point_declares_every_page_with_home_first(tiny_folder, tmp_path):
    """app.py is st.navigation over every script in views/; the first, default one is called Home."""
    from pathlib import Path

    from pagetest import ROOT

    from views.ui.state import PAGE_FILES

    assert [p for p, *_ in PAGE_FILES] == PAGES
    assert sorted(PAGES) == sorted(str(p.relative_to(ROOT)) for p in (ROOT / "views").glob("*.py"))
    # no `pages/` folder: Streamlit would treat it as a v1 multipage app, and a first request to a
    # deep link (/Rankings?…) would run that page without app.py's navigation (an "app" entry, no icons)
    assert not list((ROOT / "pages").glob("**/*.py"))
    assert PAGE_FILES[0][1:] == ("Home", ":material/home:", "")  # the default page, at the root URL
    assert len({url for *_, url in PAGE_FILES}) == len(PAGE_FILES)
    at = app("app.py", model=str(tiny_folder), workspace=str(tmp_path)).run()  # opens on Home
    assert not at.exception and [t.value for t in at.title] == ["CUD Explorer"]
    at.switch_page("views/6_Validation.py").run()
    assert not at.exception and [t.value for t in at.title] == ["Validation"]
    assert Path(ROOT / "app.py").read_text().count("st.navigation(") == 1


@pytest.mark.parametrize("page", PAGES[1:])
def test_pages_explain_what_to_do_before_results_exist(page, tiny_folder, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q?", "answer": "a"}\n')
    at = app(page, model=str(tiny_folder), data=str(data), workspace=str(tmp_path / "ws")).run()
    assert not at.exception
    assert at.info or at.subheader  # a clear pointer to the compute step (annotations still work)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_computed_results(page, app_setup):
    at = ready(app_setup, page)
    assert not at.exception, at.exception
    assert not at.error, shown(at.error)


@pytest.mark.parametrize("status", ["running", "interrupted"])
@pytest.mark.parametrize("page", PAGES)
def test_pages_on_a_scoring_run_killed_before_its_first_batch(page, status, tiny_folder, tmp_path):
    """The run row and its samples exist, but no results and no tensors."""
    from cud_core.data.samples import load_samples
    from cud_core.store.workspace import Workspace

    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "s1", "question": "q1?", "answer": "a1"}\n'
                    '{"id": "s2", "question": "q2?", "answer": "a2"}\n')
    ws = Workspace(tmp_path / "ws")
    run = ws.create_run("score", str(tiny_folder), str(data), {"method": "eap-ig-inputs"})
    ws.save_samples(run, load_samples(data))
    if status == "interrupted":
        ws.set_status(run, "interrupted", "its process ended; rerun the same command to resume")
    at = app(page, model=str(tiny_folder), data=str(data), workspace=str(ws.root)).run()
    assert not at.exception, at.exception
    assert not at.error, shown(at.error)
    if page in PAGES[1:5]:
        [info] = shown(at.info)
        assert "No results yet" in info and run in info and status in info
        assert ("resume" in info) == (status == "interrupted")
    elif page == "views/0_Home.py":
        assert run in at.dataframe[-1].value["id"].tolist()


@pytest.mark.parametrize("page", PAGES)
def test_every_page_reports_a_workspace_that_is_a_file(page, tiny_folder, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q?", "answer": "a"}\n')
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("a file, not a workspace")
    at = app(page, model=str(tiny_folder), data=str(data), workspace=str(not_a_folder)).run()
    assert not at.exception, at.exception
    [error] = shown(at.error)
    assert "workspace" in error and "is a file" in error
    assert not_a_folder.read_text() == "a file, not a workspace"


def test_home_shows_the_validation_table(app_setup):
    at = ready(app_setup, "views/0_Home.py")
    tables = [d.value for d in at.dataframe]
    validation = next(t for t in tables if "predictor" in t.columns)
    assert list(validation["predictor"])[:4] == ["cud", "cud_per_method", "representation", "original_nll"]
    assert "ρ nll_after" in validation.columns
    assert any("distinguishable from chance" in m.value for m in at.markdown)  # the verdict


def test_rankings_filters_and_search(app_setup):
    at = ready(app_setup, "views/1_Rankings.py")
    table = at.dataframe[0].value
    assert sorted(table["id"]) == sorted(app_setup["forget"]) and table["cud"].between(0, 1).all()
    assert list(table["cud"]) == sorted(table["cud"], reverse=True)
    at.multiselect[0].set_value(["hard"]).run()
    hard = at.dataframe[0].value
    assert 0 < len(hard) < len(table) and set(hard["bucket"]) == {"hard"}
    at.multiselect[0].set_value(["easy", "medium", "hard"]).run()
    first = table.iloc[0]
    at.text_input[0].set_value(first["question"].split()[2]).run()  # the person's name
    assert list(at.dataframe[0].value["id"]) == [first["id"]]
    assert at.query_params["q"]  # the search lives in the URL


def test_circuit_page_widgets_change_the_view(app_setup):
    sample = app_setup["forget"][0]
    at = ready(app_setup, "views/2_Circuit.py", sample=sample)
    assert at.selectbox[0].value == sample

    def edges():
        stats = at.dataframe[0].value["value"]
        return int(stats["n_edges"])
    small = edges()
    at.slider[0].set_value(60).run()
    assert not at.exception and edges() >= small
    at.radio[0].set_value("hard anchor").run()
    assert not at.exception
    at.radio[0].set_value("sample").run()
    at.toggle[0].set_value(True).run()
    assert any("easy:" in c.value for c in at.caption)


def test_depth_page_groupings(app_setup):
    at = ready(app_setup, "views/3_Depth.py")
    assert at.radio[0].value == "CUD bucket"
    at.radio[0].set_value("ground-truth label (realised difficulty)").run()
    assert not at.exception


def test_unlearning_page_runs_a_job_and_shows_its_curves(app_setup):
    at = ready(app_setup, "views/4_Unlearning.py")
    options = at.selectbox[-1].options
    assert any("test run" in o for o in options) and sum("calibration run" in o for o in options) == 3
    at.selectbox[-1].select_index(len(options) - 1).run()  # a calibration method's stored curves
    assert not at.exception and any("evaluations" in m.value for m in at.markdown)
    at.selectbox[1].set_value("hardest").run()  # the subset reruns the page: k appears in the form
    at.number_input[0].set_value(2)          # steps
    at.number_input[2].set_value(1)          # evaluate every step
    at.number_input[3].set_value(2)          # k
    at.button[0].click().run()
    assert not at.exception
    from views.ui import state
    manager = state.jobs()
    job = manager.jobs()[0]
    assert manager.wait(job.id, timeout=120).status == "done", job.error or job.message
    from cud_core.store.workspace import Workspace
    ws = Workspace(app_setup["workspace"])
    run = ws.get_run(job.result)
    assert run["status"] == "done" and run["config"]["label"] == "CUD-hardest 2"
    assert [e["step"] for e in ws.load_artifact(run["id"], "curve")] == [0, 1, 2]
    at.run()  # the tab that started the run shows it, though a calibration's curves were selected before
    assert at.selectbox(key="unlearn_run").value == run["id"]
    assert any("3 evaluations" in m.value for m in at.markdown)
    at.selectbox(key="unlearn_run").select_index(len(options) - 1).run()  # the user's choice wins afterwards
    assert at.selectbox(key="unlearn_run").value != run["id"]


def test_annotations_persist_across_sessions(app_setup):
    at = ready(app_setup, "views/5_Annotations.py")
    sample = app_setup["forget"][1]
    at.text_input(key="author").set_value("tester")
    next(b for b in at.selectbox if b.label == "Sample").set_value(sample)
    next(b for b in at.selectbox if b.label == "Label").set_value("surprisingly hard")
    at.text_area[0].set_value("deep path despite a short answer")
    next(b for b in at.button if b.label == "Save annotation").click().run()
    assert not at.exception and any("Saved" in s.value for s in at.success)
    # the form stays on the saved sample and the author is kept (not the URL's sample, not cleared)
    assert next(b for b in at.selectbox if b.label == "Sample").value == sample
    assert at.text_input(key="author").value == "tester"
    fresh = ready(app_setup, "views/5_Annotations.py")  # a new session reads it back from SQLite
    table = fresh.dataframe[0].value
    row = table[table["sample_id"] == sample].iloc[0]
    assert row["label"] == "surprisingly hard" and row["note"] == "deep path despite a short answer"
    rankings = ready(app_setup, "views/1_Rankings.py").dataframe[0].value
    assert rankings.set_index("id").loc[sample, "annotations"] == "surprisingly hard"


def test_the_annotation_queue_saves_labels_in_order_and_shows_agreement(app_setup):
    """The queue opens on the most surprising sample (out-of-fold CUD rank vs realised hardness rank); a
    label button (keys 1–5 in a browser) saves it with the author and the note and moves on; progress
    counts the author's annotations; two authors on the same samples give Cohen's κ."""
    from cud_core.store.annotations import queue
    from cud_core.store.workspace import Workspace

    ws = Workspace(app_setup["workspace"])
    before = {a["id"] for a in ws.annotations()}
    results = ws.load_results(app_setup["calibration"])
    cud = {i: r["cud_oof"] for i, r in results.items()}
    hard = {i: -sum(d["nll_after"] for d in r["realised"].values()) / len(r["realised"]) for i, r in results.items()}
    expected = queue(sorted(results), "surprise", cud, hard)
    at = ready(app_setup, "views/5_Annotations.py")
    assert at.radio(key="queue_order").value == "surprise"
    for name, label in (("ann", "surprisingly easy"), ("bo", "surprisingly easy"), ("bo", "surprisingly hard")):
        at.text_input(key="author").set_value(name).run()
        at.session_state["queue_pos"] = 0
        at.run()
        for k in range(2):  # two samples in queue order, each saved by its label button
            assert expected[k] in at.markdown[0].value  # the card: id · position · order, question, answer
            at.text_input(key="queue_note").set_value(f"note {k}")
            next(b for b in at.button if b.label.startswith(label)).click().run()
            assert not at.exception
        assert at.text_input(key="author").value == name and at.text_input(key="queue_note").value == ""
    mine = [a for a in ws.annotations() if a["id"] not in before]
    assert [(a["author"], a["sample_id"], a["label"], a["note"]) for a in mine[:2]] == [
        ("ann", expected[0], "surprisingly easy", "note 0"), ("ann", expected[1], "surprisingly easy", "note 1")]
    [progress] = at.get("progress")
    anyone = len({a["sample_id"] for a in ws.annotations()} & set(expected))  # earlier tests' annotations too
    assert progress.proto.text == f"2 of {len(expected)} annotated by bo ({anyone} by anyone)"
    agreement = next(d.value for d in at.dataframe if "Cohen's κ" in d.value.columns)
    # bo's latest labels (surprisingly hard) disagree with ann's on both samples; one label each: κ undefined
    assert agreement.iloc[0]["samples both labelled"] == 2
    for a in mine:
        ws.delete_annotation(a["id"])


def test_home_fine_tunes_on_the_fictitious_scenario(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("CUD_CACHE_DIR", str(tmp_path / "cache"))
    at = app(model=str(tiny_folder), data="builtin:fictitious-authors:2", workspace=str(tmp_path / "ws")).run()
    assert not at.exception
    button = next(b for b in at.button if b.label.startswith("Fine-tune"))
    button.click().run()
    from views.ui import state
    job = state.jobs().jobs()[0]
    assert job.kind == "finetune"
    assert state.jobs().wait(job.id, 120).status == "done", job.error
    assert "+ft-" in job.result and (tmp_path / "cache" / "finetuned").is_dir()


def _finished_job(kind: str):
    from views.ui import state

    job = next(j for j in state.jobs().jobs() if j.kind == kind)
    assert state.jobs().wait(job.id, 300).status == "done", job.error
    return job


def test_home_estimates_time_and_memory_next_to_the_start_buttons(app_setup, tmp_path):
    at = app(model=app_setup["model"], data=app_setup["data"], workspace=str(tmp_path / "ws")).run()
    next(b for b in at.button if b.label == "Estimate time and memory").click().run()
    job = _finished_job("estimate")
    assert set(job.result) == {"Before the first step", "Score", "Calibrate"}
    assert job.result["Before the first step"].startswith("nothing to prepare")  # a file of facts: no filter
    at.run()
    captions = " ".join(shown(at.caption))
    assert "**Score** — estimate:" in captions and "**Calibrate** — estimate: about" in captions
    assert "unlearning" in job.result["Calibrate"] and "peak memory" in job.result["Score"]


def test_home_submits_a_score_to_a_ray_cluster(app_setup, tmp_path):
    """'Where jobs run' → Ray cluster (a private instance here): the job scores on the workers and the
    run lands in the workspace like a local one."""
    pytest.importorskip("ray")
    from cud_core.store.workspace import Workspace

    at = app(model=app_setup["model"], data=app_setup["data"], workspace=str(tmp_path / "ws")).run()
    next(r for r in at.radio if r.label == "Executor").set_value("Ray cluster").run()
    next(t for t in at.text_input if t.label == "Ray address").set_value("local-cluster").run()
    next(n for n in at.number_input if n.label.startswith("Workers")).set_value(2).run()
    next(b for b in at.button if b.label.startswith("Score the forget set")).click().run()
    _finished_job("score")
    runs = Workspace(tmp_path / "ws").list_runs("score")
    assert len(runs) == 1 and runs[0]["status"] == "done"
    import ray
    assert not ray.is_initialized()  # the job closed the instance it started


def test_unlearning_page_estimates_a_run_before_starting_it(app_setup):
    at = ready(app_setup, "views/4_Unlearning.py")
    at.number_input[0].set_value(6)  # steps
    next(b for b in at.button if b.label == "Estimate time").click().run()
    job = _finished_job("estimate")
    assert job.title == "Estimating an unlearning run" and "6 steps of npo" in job.result
    at.run()
    assert any("estimate: about" in c for c in shown(at.caption))


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_an_unpacked_calibration_without_edge_scores(page, app_setup, allow_test_folders,
                                                                        tmp_path_factory):
    """A bundle without edge scores (the default) opens on every page; views that need the scores say
    so instead of failing."""
    from cud_core.store.bundle import pack, unpack
    from cud_core.store.workspace import Workspace

    root = tmp_path_factory.getbasetemp() / "unpacked"
    if not root.exists():
        ws = Workspace(app_setup["workspace"])
        calibration = ws.list_runs("calibrate")[0]["id"]
        pack(ws, calibration, root.parent / "unpacked.cudpack")
        unpack(Workspace(root), root.parent / "unpacked.cudpack")
    at = ready({**app_setup, "workspace": str(root)}, page)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    if page == "views/2_Circuit.py":
        assert any("unpacked from a bundle without its edge scores" in m for m in shown(at.info))


def test_a_click_on_any_cell_of_a_ranking_row_opens_its_circuit(app_setup):
    """A cell click (what a click anywhere on the row sends) opens the Circuit page on that row's sample."""
    at = ready(app_setup, "app.py")
    at.switch_page("views/1_Rankings.py").run()
    table = at.dataframe[0].value
    at.session_state["ranking"] = {"selection": {"rows": [], "columns": [], "cells": [[2, "question"]]}}
    at.run()
    assert not at.exception
    assert at.query_params["sample"] == table.iloc[2]["id"]
    assert at.selectbox[0].label == "Sample" and at.selectbox[0].value == table.iloc[2]["id"]  # the Circuit page


def test_a_job_that_ended_before_this_browser_session_is_not_announced(app_setup):
    """A fresh browser does not inherit another session's 'stopped' or 'failed' banner; a session that saw
    the job running is told how it ended."""
    from cud_core.engine.stopping import Stopped
    from views.ui import state

    manager = state.jobs()  # the process-wide queue the pages share (st.cache_resource)

    def stops(progress, should_stop):
        raise Stopped("stopped by the test")

    job = manager.submit("unlearn", "Unlearning someone else's run", stops)
    assert manager.wait(job.id, 10).status == "stopped"
    at = ready(app_setup, "views/6_Validation.py")
    assert not at.exception
    assert not [w for w in shown(at.warning) if "someone else's run" in w]
    at.session_state["_jobs_seen_active"] = {job.id}  # as if this session had watched it run
    at.run()
    assert [w for w in shown(at.warning) if "someone else's run: stopped (stopped by the test)" in w]
