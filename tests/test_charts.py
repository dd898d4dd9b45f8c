"""Chart and form polish: one colour-blind-safe palette whose legends list only the
groups present, integer step axes, the y = x line on the before/after chart, and an Unlearning form
that a reload (the same URL) keeps."""
import json
import math

import pytest
from pagetest import app, ready
from streamlit.testing.v1 import AppTest

from views.ui import charts

pytestmark = pytest.mark.usefixtures("allow_test_folders")  # see conftest.py


def specs(at: AppTest) -> list[dict]:
    """The Vega-Lite specs of the page's Altair charts, in page order."""
    return [json.loads(e.proto.spec) for e in at.get("vega_lite_chart")]


def dataset(at: AppTest, name: str):
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    [data] = [d.data.data for e in at.get("vega_lite_chart") for d in e.proto.datasets if d.name == name]
    return convert_arrow_bytes_to_pandas_df(data)


def colours(spec: dict) -> tuple[list, list]:
    scale = spec["encoding"]["color"]["scale"]
    return scale["domain"], scale["range"]


def calibration_buckets(setup) -> dict[str, str]:
    from cud_core.store.workspace import Workspace

    return {sid: r["bucket"] for sid, r in Workspace(setup["workspace"]).load_results(setup["calibration"]).items()}


def test_the_palette_is_distinct_and_lists_only_present_groups():
    assert list(charts.PALETTE) == ["easy", "medium", "hard", "all", "retain"]
    assert len(set(charts.PALETTE.values())) == 5
    color = charts.group_color("bucket", ["hard", "retain", "easy", "hard"]).to_dict()
    assert color["scale"] == {"domain": ["easy", "hard", "retain"], "range": ["#0072B2", "#D55E00", "#999999"]}
    assert color["sort"] == ["easy", "hard", "retain"]


def test_depth_legends_list_the_groups_present(app_setup):
    at = ready(app_setup, "views/3_Depth.py")
    present = charts.groups(calibration_buckets(app_setup).values())
    *bars, scatter = specs(at)
    assert len(bars) == 3
    for spec in bars:
        assert colours(spec) == (present, [charts.PALETTE[g] for g in present])
        assert spec["encoding"]["xOffset"]["sort"] == present
    assert colours(scatter["layer"][0]) == (present, [charts.PALETTE[g] for g in present])
    at.radio[0].set_value("all samples").run()
    assert not at.exception
    for spec in specs(at)[:3]:
        assert colours(spec) == (["all"], [charts.PALETTE["all"]])


def test_unlearning_charts_palette_steps_and_diagonal(app_setup):
    at = ready(app_setup, "views/4_Unlearning.py")
    runs = at.selectbox[-1]
    runs.select_index(next(i for i, o in enumerate(runs.options) if "test run" in o)).run()  # 3 forget samples
    assert not at.exception
    run = {"id": at.selectbox(key="unlearn_run").value}  # the selected run's id
    from cud_core.store.workspace import Workspace
    ws = Workspace(app_setup["workspace"])
    by_id = calibration_buckets(app_setup)
    present = charts.groups(by_id[sid] for sid in ws.load_artifact(run["id"], "curve")[0]["forget_nll"])
    per_bucket, per_sample, regime, before_after = specs(at)
    lines, bounds = regime["layer"]  # efficacy and held-out utility per evaluation, the protocol's bounds
    assert lines["encoding"]["x"]["field"] == "step" and lines["encoding"]["color"]["field"] == "measure"
    assert sorted(dataset(at, bounds["data"]["name"])["value"]) == pytest.approx([math.log(1.25), 0.5])
    assert set(dataset(at, lines["data"]["name"])["measure"]) == {"share forgotten", "held-out NLL − step 0 (nats)"}
    assert colours(per_bucket) == (present + ["retain"], [charts.PALETTE[g] for g in present + ["retain"]])
    assert colours(per_sample) == (present, [charts.PALETTE[g] for g in present])
    for spec in (per_bucket, per_sample):
        assert spec["encoding"]["x"]["field"] == "step"
        assert spec["encoding"]["x"]["axis"] == {"format": "d", "tickMinStep": 1}

    diagonal, points = before_after["layer"]
    assert diagonal["mark"] == {"type": "line", "color": "grey", "strokeDash": [5, 5]}
    x, y = points["encoding"]["x"], points["encoding"]["y"]
    assert x["scale"] == y["scale"] and x["field"] == "answer_nll before" and y["field"] == "answer_nll after"
    assert (diagonal["encoding"]["x"]["field"], diagonal["encoding"]["y"]["field"]) == (x["field"], y["field"])
    nll = [s["answer_nll"] for key in ("before", "after") for s in ws.load_artifact(run["id"], key)["forget"].values()]
    line = dataset(at, diagonal["data"]["name"])
    assert line[x["field"]].tolist() == line[y["field"]].tolist() == pytest.approx([min(nll), max(nll)])
    low, high = x["scale"]["domain"]
    assert low < min(nll) and max(nll) < high
    assert any("dashed line y = x" in c.value for c in at.caption)


def test_unlearning_method_picker_shows_short_names_and_the_formula(app_setup):
    at = ready(app_setup, "views/4_Unlearning.py", method="simnpo")
    picker = at.selectbox[0]
    assert picker.options == ["GradAscent", "GradDiff", "NPO", "SimNPO", "RMU", "UNDIAL"]
    assert picker.value == "simnpo"
    from cud_core.unlearn import METHODS
    assert any(c.value.startswith("SimNPO\\:") for c in at.caption)  # the formula, escaped by md()
    picker.set_value("grad_diff").run()
    assert at.query_params["method"] == "grad_diff"
    assert any(c.value.startswith("GradDiff\\:") and "forget NLL" in c.value for c in at.caption)
    assert [n.label for n in at.number_input][-2:] == list(METHODS["grad_diff"].defaults)  # its hyper-parameters


def test_unlearning_k_only_for_the_k_subsets(app_setup):
    at = ready(app_setup, "views/4_Unlearning.py")
    assert at.selectbox[1].value == "all" and "k" not in [n.label for n in at.number_input]
    at.selectbox[1].set_value("easiest").run()
    assert "k" in [n.label for n in at.number_input] and at.query_params["subset"] == "easiest"


def test_unlearning_form_survives_a_reload(app_setup):
    at = ready(app_setup, "views/4_Unlearning.py")
    at.selectbox[0].set_value("grad_ascent").run()
    at.selectbox[1].set_value("hardest").run()
    fields = {n.label: n for n in at.number_input}
    for label, value in (("Steps", 1), ("Learning rate", 3e-5), ("Evaluate every", 1), ("k", 1), ("Batch size", 2)):
        fields[label].set_value(value)
    at.button[0].click().run()
    assert not at.exception
    from views.ui import state
    job = state.jobs().jobs()[0]
    assert state.jobs().wait(job.id, 120).status == "done", job.error or job.message
    url = dict(at.query_params)
    assert {k: url[k] for k in ("method", "subset", "steps", "lr", "eval_every", "k", "batch")} == {
        "method": "grad_ascent", "subset": "hardest", "steps": "1", "lr": "3e-05", "eval_every": "1", "k": "1",
        "batch": "2"}

    fresh = app("views/4_Unlearning.py", **url).run()  # a reload: a new session on the same URL
    assert not fresh.exception
    assert [s.value for s in fresh.selectbox[:2]] == ["grad_ascent", "hardest"]
    assert {n.label: n.value for n in fresh.number_input} == {
        "Steps": 1, "Learning rate": pytest.approx(3e-5), "Evaluate every": 1, "k": 1, "Batch size": 2}


def test_unlearning_form_ignores_bad_url_values(app_setup):
    at = ready(app_setup, "views/4_Unlearning.py", method="nope", subset="some", steps="many", lr="1", k="0",
               batch="nan")
    assert not at.exception
    assert [s.value for s in at.selectbox[:2]] == ["grad_ascent", "all"]
    assert {n.label: n.value for n in at.number_input if n.label in ("Steps", "Batch size")} == {
        "Steps": 30, "Batch size": 8}


def test_rankings_lists_present_buckets_and_keeps_another_pages_method(app_setup):
    at = ready(app_setup, "views/1_Rankings.py", method="rmu")  # rmu: chosen on the Unlearning page
    assert not at.exception
    present = charts.groups(calibration_buckets(app_setup).values())
    assert at.multiselect[0].options == present and at.multiselect[0].value == present
    assert at.selectbox[0].value == "grad_diff" and at.query_params["method"] == "rmu"
    at.selectbox[0].set_value("npo").run()
    assert at.query_params["method"] == "npo"
