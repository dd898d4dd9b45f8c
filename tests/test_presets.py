"""The demo preset: its settings on the command line and the home page, and the pages' demo banner."""
import json
from functools import reduce

import pytest
from pagetest import app, ready

from cud_core.cli import parse
from cud_core.pipeline.presets import PRESETS, calibration_settings

pytestmark = pytest.mark.usefixtures("allow_test_folders")


def test_the_demo_preset_sets_defaults_that_explicit_flags_override():
    demo = PRESETS["demo"]
    args = parse(["calibrate", "--preset", "demo"])
    assert (args.limit, args.forget_fraction, args.steps, args.q, args.ig_steps) == (
        demo.limit, demo.forget_fraction, demo.calibration.steps, demo.calibration.q, demo.calibration.score.steps)
    assert args.methods.split(",") == list(demo.calibration.methods)
    assert parse(["calibrate", "--preset", "demo", "--steps", "3", "--limit", "40"]).steps == 3
    plain = parse(["calibrate"])
    assert (plain.limit, plain.steps, plain.ig_steps) == (None, 30, 5)
    settings = calibration_settings("demo")
    assert settings.preset == "demo" and settings.score.steps == demo.calibration.score.steps and \
        settings.config()["preset"]


def test_plain_calibrate_uses_the_spelled_out_defaults_and_paper_sets_the_published_pipeline():
    from cud_core.pipeline.presets import DEFAULT, FLAGS, cli_defaults

    plain = vars(parse(["calibrate"]))
    for key, value in cli_defaults("paper").items():  # every flag a preset sets has the DEFAULT value plainly
        if key == "fixed_steps":  # not a field: the protocol off
            assert plain[key] is (DEFAULT.calibration.protocol is None) is value is False
            continue
        default = reduce(getattr, FLAGS[key].split("."), DEFAULT)
        expected = ",".join(map(str, default)) if isinstance(default, tuple) else default
        assert plain[key] == expected, key
    paper = parse(["calibrate", "--preset", "paper"])
    assert (paper.attribution_method, paper.ig_steps, paper.baseline, paper.metric, paper.edges, paper.similarity,
            paper.q, paper.anchors) == ("eap-ig-activations", 5, "zero", "kl", 75, "cosine", 0.125, "per-method")
    settings = calibration_settings("paper")
    config = settings.config()
    assert config["preset"] == "paper" and config["anchors"] == "per-method" and config["q"] == 0.125
    assert config["score"]["method"] == "eap-ig-activations" and config["score"]["metric"] == "kl"
    assert len(settings.methods) == 5  # labels need ≥ 3 of 5 methods



def test_the_command_line_the_home_form_and_the_default_preset_have_the_same_defaults(tiny_folder, tmp_path):
    """One source: `DEFAULT` is the dataclasses' own defaults; calibrate's flags, the home page's form, the
    validation analysis and the other commands take theirs from the same dataclasses."""
    from cud_core.difficulty.analysis import Settings
    from cud_core.pipeline import jobs
    from cud_core.pipeline.calibration import CalibrationSettings
    from cud_core.pipeline.presets import DEFAULT, UNLEARN_FORGET_FRACTION
    from cud_core.pipeline.scoring import ScoreSettings
    from cud_core.pipeline.unlearning import UnlearnSettings
    from cud_core.unlearn.runner import DEFAULT_LR

    c, s = DEFAULT.calibration, DEFAULT.calibration.score
    assert c == CalibrationSettings() and s == ScoreSettings(generation=False)
    assert (DEFAULT.limit, DEFAULT.forget_fraction, DEFAULT.seed) == (None, 0.2, 0)
    assert (c.q, c.steps, c.eval_every, c.seeds, s.method, s.metric, s.steps, s.n_edges) == (
        0.25, 30, 10, (0, 1), "eap-ig-inputs", "logprob", 5, 75)  # pinned: stored runs are found by their values

    cli = parse(["calibrate"])
    assert (cli.limit, cli.forget_fraction, cli.seed) == (DEFAULT.limit, DEFAULT.forget_fraction, DEFAULT.seed)
    assert (cli.methods, cli.steps, cli.lr, cli.eval_every, cli.batch_size, cli.checkpoint_every) == (
        ",".join(c.methods), c.steps, c.lr, c.eval_every, c.batch_size, c.checkpoint_every)
    assert (cli.q, cli.seeds, cli.folds, cli.bootstrap, cli.permutations, cli.similarity, cli.anchors) == (
        c.q, ",".join(map(str, c.seeds)), c.folds, c.n_boot, c.n_permutations, c.similarity, c.anchors)
    assert (cli.attribution_method, cli.metric, cli.baseline, cli.edges, cli.ig_steps) == (
        s.method, s.metric, s.baseline, s.n_edges, s.steps)

    home = app(model=str(tiny_folder), workspace=str(tmp_path)).run()
    assert not home.exception

    def value(kind, label):
        return next(w for w in getattr(home, kind) if w.label.startswith(label)).value
    assert (value("slider", "Forget fraction"), value("number_input", "Seed")) == (
        DEFAULT.forget_fraction, DEFAULT.seed)
    assert (value("selectbox", "Method"), value("number_input", "IG steps"), value("selectbox", "Baseline"),
            value("selectbox", "Metric"), value("number_input", "Batch size"),
            value("number_input", "Circuit size")) == (s.method, s.steps, s.baseline, s.metric, c.batch_size, s.n_edges)
    assert (value("multiselect", "Unlearning methods"), value("number_input", "Unlearning steps"),
            value("slider", "q "), value("multiselect", "Unlearning seeds"), value("number_input", "Cross-fitting"),
            value("radio", "Headline CUD")) == (list(c.methods), c.steps, c.q, list(c.seeds), c.folds, c.anchors)
    assert value("number_input", "Learning rate") == DEFAULT_LR  # a number on the form; None (by model) elsewhere

    validation = Settings()  # the analysis's defaults: the calibration's
    assert (validation.q, validation.folds, validation.seed, validation.n_boot, validation.n_permutations,
            validation.similarity, validation.anchors, validation.binarise, validation.n_edges) == (
        c.q, c.folds, c.seed, c.n_boot, c.n_permutations, c.similarity, c.anchors, s.binarise, s.n_edges)
    assert jobs.prepare_scenario.__defaults__[:2] == (DEFAULT.forget_fraction, DEFAULT.seed)

    unlearn, u = parse(["unlearn"]), UnlearnSettings()  # one run of one method: its own dataclass
    assert (unlearn.method, unlearn.steps, unlearn.lr, unlearn.eval_every, unlearn.batch_size, unlearn.seed,
            unlearn.checkpoint_every, unlearn.forget_fraction) == (
        u.method, u.steps, u.lr, u.eval_every, u.batch_size, u.seed, u.checkpoint_every, UNLEARN_FORGET_FRACTION)
    score, plain = parse(["score"]), ScoreSettings()
    assert (score.method, score.steps, score.baseline, score.metric, score.batch_size, score.binarise, score.edges,
            score.store) == (plain.method, plain.steps, plain.baseline, plain.metric, plain.batch_size,
                             plain.binarise, plain.n_edges, plain.store)

def test_demo_button_runs_a_marked_calibration_and_the_pages_say_so(app_setup, tmp_path):
    data = tmp_path / "facts20.jsonl"  # 20 facts: the demo forgets a quarter (5) of them
    data.write_text("".join(json.dumps({"id": f"d{i}", "question": f"What is fact {i}?",
                                        "answer": f"Fact {i} is Oslo."}) + "\n" for i in range(20)))
    params = dict(model=app_setup["model"], data=str(data), workspace=str(tmp_path / "ws"))
    at = app("views/0_Home.py", **params).run()
    button = next(b for b in at.button if b.label.startswith("Demo"))
    button.click().run()
    from views.ui import state
    manager = state.jobs()
    job = manager.jobs()[0]
    assert job.title.startswith("Demo:")
    assert manager.wait(job.id, timeout=300).status == "done", job.error or job.message
    from cud_core.store.workspace import Workspace
    run = Workspace(tmp_path / "ws").get_run(job.result)
    assert run["status"] == "done" and run["config"]["preset"] == "demo"
    assert len(Workspace(tmp_path / "ws").load_samples(run["id"])) == 5
    page = app("views/1_Rankings.py", **params).run()
    assert not page.exception and any("Demo calibration" in w.value for w in page.warning)
    plain = ready(app_setup, "views/1_Rankings.py")
    assert not any("Demo calibration" in w.value for w in plain.warning)  # a full calibration: no banner


def test_the_selection_follows_the_user_through_the_sidebar(app_setup):
    """Sidebar links open a page without query parameters: the session brings the selection back."""
    at = ready(app_setup, "app.py")  # the entry point: Home, with every page in st.navigation
    assert not at.exception
    for key in ("model", "data", "workspace"):
        at.query_params.pop(key, None)  # what a click on "Rankings" in the sidebar sends
    at.switch_page("views/1_Rankings.py").run()
    assert not at.exception
    assert at.query_params["data"] == app_setup["data"] and at.query_params["model"] == app_setup["model"]
    assert sorted(at.dataframe[0].value["id"]) == sorted(app_setup["forget"])  # the selected run's samples


def test_calibrate_preset_paper_runs_end_to_end_and_stores_the_published_settings(app_setup, tmp_path, capsys):
    """The paper's pipeline on the tiny model (only the run length shortened by explicit flags)."""
    from cud_core.cli import main
    from cud_core.store.workspace import Workspace
    from cud_core.unlearn import METHODS

    data = tmp_path / "facts40.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "question": f"Where was person {i} born?",
                                        "answer": f"Person {i} was born in city {i % 7}."}) + "\n"
                            for i in range(40)))
    ws = tmp_path / "ws"
    assert main(["calibrate", "--preset", "paper", "--model", app_setup["model"], "--data", str(data),
                 "--workspace", str(ws), "--forget-fraction", "0.6", "--steps", "4", "--eval-every", "2",
                 "--lr", "1e-3", "--bootstrap", "200", "--permutations", "5", "--fixed-steps"]) == 0, \
        capsys.readouterr().err
    w = Workspace(ws)
    [run] = w.list_runs("calibrate")
    c = run["config"]
    assert run["status"] == "done" and c["preset"] == "paper"
    assert {k: c["score"][k] for k in ("method", "steps", "baseline", "metric", "n_edges", "binarise")} == {
        "method": "eap-ig-activations", "steps": 5, "baseline": "zero", "metric": "kl", "n_edges": 75,
        "binarise": "greedy"}
    assert (c["similarity"], c["q"], c["anchors"]) == ("cosine", 0.125, "per-method")
    assert c["methods"] == ["grad_diff", "npo", "simnpo", "rmu", "undial"]  # labels: ≥ 3 of 5 agree
    assert c["hyper"] == {m: METHODS[m].resolve({}) for m in c["methods"]}  # open-unlearning's defaults
    report = w.load_artifact(run["id"], "validation_report")
    assert report["headline"] == "cud_per_method" and "cud" in report["predictors"]  # both kinds of anchors
