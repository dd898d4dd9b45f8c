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


def test_unlearning_pair_starts_easiest_and_hardest_with_identical_settings(app_setup):
    """k serves the subsets and the pair; the pair button starts the CUD-easiest k and CUD-hardest k with the
    same settings, and the side-by-side view then holds both runs."""
    from cud_core.pipeline.unlearning import cud_subset
    from cud_core.store.workspace import Workspace
    from views.ui import state

    at = ready(app_setup, "views/4_Unlearning.py")
    assert at.selectbox[1].value == "all" and "k" in [n.label for n in at.number_input]
    fields = {n.label: n for n in at.number_input}
    for label, value in (("Steps", 1), ("Evaluate every", 1), ("k", 2), ("Batch size", 2)):
        fields[label].set_value(value)
    before = {j.id for j in state.jobs().jobs()}
    next(b for b in at.button if b.label == "Start easiest + hardest pair").click().run()
    assert not at.exception
    new = [j for j in state.jobs().jobs() if j.id not in before]
    assert sorted(j.title for j in new) == ["Unlearning CUD-easiest 2 with NPO", "Unlearning CUD-hardest 2 with NPO"]
    for j in new:
        assert state.jobs().wait(j.id, 120).status == "done", j.error or j.message
    at.run()
    ws = Workspace(app_setup["workspace"])
    pair = [ws.get_run(i) for i in at.multiselect(key="unlearn_compare").value]
    assert [r["config"]["label"] for r in pair] == ["CUD-easiest 2", "CUD-hardest 2"]
    same = {k: pair[0]["config"][k] for k in ("method", "steps", "lr", "eval_every", "batch_size", "hyper")}
    assert same == {k: pair[1]["config"][k] for k in same}
    cud = {i: r["cud"] for i, r in ws.load_results(app_setup["calibration"]).items()}
    assert [r["config"]["forget"] for r in pair] == [cud_subset(cud, "easiest", 2), cud_subset(cud, "hardest", 2)]
    for r in pair:  # leave the shared workspace's run list as the other tests expect it
        ws.delete_run(r["id"])


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


def test_run_comparison_rows_and_their_difference_by_hand():
    from cud_core.report.comparison import difference_rows, run_rows

    easy = [{"step": 0, "forget_nll": {"a": 1.0, "b": 2.0}}, {"step": 5, "forget_nll": {"a": 3.0, "b": 6.0}}]
    hard = [{"step": 0, "forget_nll": {"c": 0.5, "d": 0.5, "e": 0.5}},
            {"step": 5, "forget_nll": {"c": 1.5, "d": 0.5, "e": 1.0}},
            {"step": 10, "forget_nll": {"c": 2, "d": 2, "e": 2}}]
    e = run_rows("easy", easy)
    # step 5: changes 2 and 4 → mean 3, SD √2, SE 1 → 3 ± 1.96
    assert e[1]["mean"] == pytest.approx(3.0) and (e[1]["low"], e[1]["high"]) == pytest.approx((1.04, 4.96))
    assert run_rows("easy", easy, "nll")[1]["mean"] == pytest.approx(4.5)
    h = run_rows("hard", hard)
    # step 5: changes 1, 0, 0.5 → mean 0.5, SD 0.5, SE 0.5/√3
    assert h[1]["mean"] == pytest.approx(0.5) and h[1]["se"] == pytest.approx(0.5 / math.sqrt(3))
    d = difference_rows(e, h)
    assert [r["step"] for r in d] == [0, 5]  # step 10 only in one run
    assert d[1]["difference"] == pytest.approx(-2.5)
    half = 1.96 * math.sqrt(1 + 0.25 / 3)
    assert (d[1]["low"], d[1]["high"]) == pytest.approx((-2.5 - half, -2.5 + half))
    with pytest.raises(ValueError, match="unknown measure"):
        run_rows("x", easy, "prob")


def test_unlearning_runs_side_by_side_from_a_shared_link(app_setup):
    """A link with `compare` puts the calibration's NPO and the single NPO run on one axis (mean ± band each),
    their difference and each run's efficacy and utility; `unlearn_run` reopens the run that was shown."""
    from cud_core.report.comparison import difference_rows, run_rows
    from cud_core.store.workspace import Workspace

    ws = Workspace(app_setup["workspace"])
    cal_key = f"{app_setup['calibration']} (curve-npo)"
    keys = [cal_key, app_setup["unlearn"]]
    at = ready(app_setup, "views/4_Unlearning.py", compare=",".join(keys), unlearn_run=cal_key)
    assert not at.exception
    assert at.selectbox(key="unlearn_run").value == cal_key  # the run the link was copied on
    assert at.multiselect(key="unlearn_compare").value == keys
    together = next(s for s in specs(at) if "mean ± 95% band" in str(s.get("title", "")))
    area, line = together["layer"]
    assert area["mark"]["type"] == "area" and line["encoding"]["y"]["field"] == "mean"
    frame = dataset(at, together["data"]["name"] if "data" in together else area["data"]["name"])
    assert frame["run"].nunique() == 2
    # the shown difference is the helper's on the stored curves (second − first, at their last common step)
    single = ws.load_artifact(app_setup["unlearn"], "curve")
    cal = ws.load_artifact(app_setup["calibration"], "curve-npo")
    cal_curve = [{"step": s, "forget_nll": c} for s, c in zip(cal["steps"], cal["curve"])]
    diff = difference_rows(run_rows("a", cal_curve), run_rows("b", single))
    [metric] = [m for m in at.metric if " − " in m.label]
    assert metric.value == f"{diff[-1]['difference']:+.3f}"
    assert any("held-out NLL (step 0 → here)" in d.value.columns for d in at.dataframe)
    assert at.query_params["compare"] == ",".join(keys)


def test_exported_charts_carry_title_settings_and_the_demo_mark():
    import altair as alt
    import pandas as pd

    from cud_core.report.charts import titled

    chart = alt.Chart(pd.DataFrame({"x": [1, 2]})).mark_point().encode(x="x:Q")
    caption = "SmolLM2 · builtin:world-facts · calibration calibrate-20261202-072308-d835b4 (demo settings) " * 2
    spec = titled(chart, "Mean answer NLL", caption, demo=True).to_dict()
    assert spec["title"]["text"] == "DEMO (not evidence): Mean answer NLL"
    lines = spec["title"]["subtitle"]
    assert len(lines) > 1 and " ".join(lines) == caption.strip()  # wrapped at spaces, run ids kept whole
    assert titled(chart, "T").to_dict()["title"]["text"] == "T"
