"""Unlearning: run a method live on all, the CUD-easiest or the CUD-hardest forget samples and watch
the forgetting curves; compare before and after, and how well CUD predicted what happened."""
import altair as alt
import pandas as pd
import streamlit as st

from cud_core.pipeline.context import RunContext
from cud_core.pipeline.estimate import describe_run, estimate_unlearning, with_preparation
from cud_core.pipeline.jobs import describe_preparation, prepare_scenario, scenario_for_estimate
from cud_core.pipeline.unlearning import UnlearnSettings, cud_subset, regime_of, regime_text, run_protocol, unlearn
from cud_core.report.charts import PALETTE as RUN_COLOURS
from cud_core.report.comparison import MEASURES, difference_rows, run_rows
from cud_core.unlearn import METHODS
from cud_core.unlearn.runner import DEFAULT_LR
from views.ui import charts, present, results, state
from views.ui.text import md

sel, ws, runs = results.page("Unlearning", "Score the forget set on the home page first: this page unlearns the "
                                           "scored forget samples.", jobs=None)
frame = results.sample_frame(ws, runs)
forget_ids = frame["id"].tolist()
has_cud = "cud" in frame

SUBSETS = {"all": "all forget samples", "easiest": "CUD-easiest k", "hardest": "CUD-hardest k"}


def from_url(name: str, default, low, high):
    """The URL's `name` as a number like `default` within [low, high]; `default` when absent or invalid."""
    try:
        value = type(default)(st.query_params.get(name, default))
    except ValueError:
        return default
    return value if low <= value <= high else default


# the method and subset rerun the page when changed (its hyper-parameters and k follow); the rest is a form
methods, subsets = list(METHODS), list(SUBSETS) if has_cud else ["all"]
start_box = present.controls("Start an unlearning run")
c1, c2 = start_box.columns(2)
method = c1.selectbox("Method", methods, index=methods.index(state.param("method", "npo"))
                      if state.param("method", "npo") in methods else 0, format_func=lambda m: METHODS[m].__name__)
c1.caption(md(f"{METHODS[method].__name__}: {METHODS[method].description}"))
subset = c2.selectbox("Forget subset", subsets, format_func=SUBSETS.get,
                      index=subsets.index(state.param("subset", "all")) if state.param("subset", "all") in subsets
                      else 0)
state.keep_in_url(method=method, subset=subset)
n_forget = max(1, len(forget_ids))
with start_box.form("unlearn"):
    c = st.columns(5 if has_cud else 4)
    steps = c[0].number_input("Steps", 1, 2000, from_url("steps", 30, 1, 2000))
    lr = c[1].number_input("Learning rate", 1e-7, 1e-2, from_url("lr", DEFAULT_LR, 1e-7, 1e-2), step=1e-6,
                           format="%.1e")
    eval_every = c[2].number_input("Evaluate every", 1, 100, from_url("eval_every", 5, 1, 100))
    k_in = None if not has_cud else c[3].number_input("k", 1, n_forget, from_url("k", min(10, n_forget), 1, n_forget),
                                                       help="How many of the CUD-easiest or CUD-hardest samples to "
                                                            "unlearn (a subset, or each side of the pair)")
    k = k_in if subset != "all" else None
    batch = c[-1].number_input("Batch size", 1, 64, from_url("batch", 8, 1, 64))
    hyper = {}
    defaults = METHODS[method].defaults
    if defaults:
        cols = st.columns(len(defaults))
        for col, (name, value) in zip(cols, defaults.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                hyper[name] = col.number_input(name, value=float(value), format="%.4g")
    b1, b2, b3 = st.columns([1, 1, 3])
    submitted = b1.form_submit_button("Start unlearning", type="primary")
    pair = has_cud and b2.form_submit_button(
        "Start easiest + hardest pair", help="two runs with identical settings: the CUD-easiest k and the "
                                             "CUD-hardest k, shown side by side on one axis below")
    estimate = b3.form_submit_button("Estimate time", help="a few seconds of timing probes on this machine: "
                                                          "training steps and evaluations with these settings")
estimates = [j for j in state.jobs().jobs() if j.kind == "estimate" and j.title == "Estimating an unlearning run"]
if estimates and estimates[0].status == "done":
    start_box.caption(md(estimates[0].result))


def start(chosen: list[str], label: str, hyper: dict, only_estimate: bool = False) -> dict:
    """Submit one unlearning job (or its estimate) of `chosen` with the form's settings; returns the dict its
    thread fills with the run id ("run") as soon as the run exists, and the job ("job")."""
    lm = state.model(sel["model"], sel["dtype"], sel["device"])
    started = {}  # filled by the job's thread with the run id as soon as the run exists

    def job(progress, should_stop):
        ctx = RunContext(lm, ws, sel["data"], progress=progress, should_stop=should_stop)
        if only_estimate:  # counts slow preparation (the knowledge filter of the retain facts) instead of doing it
            sc, prep = scenario_for_estimate(ctx, forget_ids=forget_ids)
            forget = [s for s in sc.forget if s.id in set(chosen)]
            return (f"{len(forget)} samples with {METHODS[method].__name__}: " + describe_run(with_preparation(
                estimate_unlearning(sc.lm, forget, sc.retain, method, int(steps), int(eval_every), int(batch), hyper),
                prep)) + f" · {describe_preparation(prep)}")
        # the stages before the first step show their own progress and time left in the job panel
        sc = prepare_scenario(ctx, forget_ids=forget_ids)
        forget = [s for s in sc.forget if s.id in set(chosen)]
        spec = UnlearnSettings(method, int(steps), float(lr), int(eval_every), 0, int(batch), hyper)
        return unlearn(ctx.but(lm=sc.lm), forget, sc.retain, spec, label,
                       on_run=lambda run_id: started.setdefault("run", run_id))
    if only_estimate:
        state.jobs().submit("estimate", "Estimating an unlearning run", job)
    else:
        started["job"] = state.jobs().submit("unlearn", f"Unlearning {label} with {METHODS[method].__name__}", job)
    return started


if submitted or estimate or pair:
    state.keep_in_url(steps=steps, lr=lr, eval_every=eval_every, batch=batch, **({"k": k_in} if k_in else {}))
    hyper = {n: (int(v) if isinstance(METHODS[method].defaults[n], int) else v) for n, v in hyper.items()}
    cuds = dict(zip(frame["id"], frame["cud"])) if has_cud else {}
    if pair:  # identical settings; the comparison below follows both
        st.session_state["_pair_started"] = [start(cud_subset(cuds, side, k_in), f"CUD-{side} {k_in}", hyper)
                                             for side in ("easiest", "hardest")]
    else:
        chosen = cud_subset(cuds, subset, k) if k else forget_ids
        started = start(chosen, SUBSETS["all"] if not k else f"CUD-{subset} {k}", hyper, only_estimate=estimate)
        if not estimate:
            st.session_state["_unlearn_started"] = started  # this tab follows that run


@st.fragment(run_every=1.0)
def waiting_for_run(started: dict):
    """Until the run this tab started exists (the job may wait in the queue or prepare the data): its
    progress, then the whole page again with that run selected."""
    job = started["job"]
    if "run" in started or not job.active:
        st.rerun()
    st.info(md(f"Starting {job.title}: {job.state}{' — ' + job.message if job.message else ''}"))

state.job_status(("unlearn",))
all_runs = state.runs(ws, "unlearn", sel, status=None)
if runs["calibrate"] is not None:  # the calibration's own runs (all forget samples, curves only)
    cal = runs["calibrate"]
    all_runs += [{"id": rid, "status": "done", "artifact": artifact,
                  "config": {"method": artifact[6:], "label": "calibration run" + label[len(artifact) - 6:]}}
                 for label, rid, artifact in results.calibration_units(str(ws.root), cal["id"], cal["updated"])]
mine = st.session_state.get("_unlearn_started")
if mine and "run" not in mine and mine["job"].active:
    waiting_for_run(mine)
    st.stop()
if not all_runs:
    st.info("No unlearning runs yet for this model and dataset. Start one above.")
    st.stop()
by_id = {r["id"] + (f" ({r['artifact']})" if "artifact" in r else ""): r for r in all_runs}  # a calibration: 1/method
if st.session_state.get("unlearn_run") not in by_id:
    st.session_state.pop("unlearn_run", None)
    if st.query_params.get("unlearn_run") in by_id:  # a shared link opens the run that was on screen
        st.session_state["unlearn_run"] = st.query_params["unlearn_run"]
if mine and mine.get("run") in by_id and not mine.get("shown"):
    st.session_state["unlearn_run"] = mine["run"]  # select the run this tab started, once
    mine["shown"] = True

def run_label(key: str) -> str:
    r = by_id[key]
    return f"{r['id']} · {r['config']['method']} · {r['config'].get('label') or ''} · {r['status']}"


figure = results.figure_context(sel, runs)
shown_key = st.selectbox("Run", list(by_id), key="unlearn_run", format_func=run_label)
state.keep_in_url(unlearn_run=shown_key)
run = by_id[shown_key]
others_running = [r["id"] for r in all_runs if r["status"] == "running" and r["id"] != run["id"]]


@st.fragment(run_every=2.0)
def watch_others():
    """A run that is not on screen ends: rerun the page, so that the picker no longer says "running"."""
    if any((ws.get_run(i) or {}).get("status") != "running" for i in others_running):
        st.rerun()


if others_running:
    watch_others()
buckets = frame.set_index("id")["bucket"] if has_cud else pd.Series(dtype=str)
cud = frame.set_index("id")["cud"] if has_cud else pd.Series(dtype=float)


def calibration_curve(run_id: str, artifact: str) -> list[dict]:
    c = ws.load_artifact(run_id, artifact, {})
    return [{"step": st_, "elapsed": el, "forget_nll": cv, "retain_nll": rc} for st_, el, cv, rc in
            zip(c.get("steps", []), c.get("elapsed", []), c.get("curve", []), c.get("retain_curve", []))]


def regime_panel(regime: dict) -> None:
    """Did the run forget, and what did it cost the model: efficacy and held-out utility per evaluation."""
    st.subheader("Efficacy and utility")
    traj = regime["trajectory"]
    e = traj[regime["point"]] if regime["point"] is not None else traj[-1]
    c = st.columns(4)
    c[0].metric(f"forgotten at step {e['step']}", f"{e['share_forgotten']:.0%}",
                help="share of the forget samples the model knew (p ≥ 0.1 at step 0) whose answer probability is "
                     "now below 0.1")
    c[1].metric("median p / p₀", f"{e['relative_prob']:.2f}", help="answer probability relative to the original")
    c[2].metric("mean ΔNLL", f"{e['mean_delta_nll']:.2f}")
    if e["holdout_nll"] is not None:
        c[3].metric("held-out NLL", f"{e['holdout_nll']:.2f}", f"{e['holdout_nll'] - e['holdout_nll_0']:+.2f}",
                    delta_color="inverse", help="mean answer NLL of known facts no loss saw (step 0 → here)")
        p = regime["protocol"]
        frame = pd.DataFrame([{"step": x["step"], "measure": m, "value": v} for x in traj for m, v in (
            ("share forgotten", x["share_forgotten"]),
            ("held-out NLL − step 0 (nats)", x["holdout_nll"] - x["holdout_nll_0"]))])
        lines = alt.Chart(frame).mark_line(point=True).encode(
            x=charts.step_x(), y=alt.Y("value:Q"), color=alt.Color("measure:N", title=None),
            tooltip=["measure", "step", alt.Tooltip("value:Q", format=".2f")])
        rules = alt.Chart(pd.DataFrame({"value": [p["efficacy"], regime["allowed_rise"]]})).mark_rule(
            strokeDash=[4, 4], color="grey").encode(y="value:Q")
        present.chart((lines + rules).properties(height=220), width="stretch")
    st.caption(md(regime_text(regime)))


@st.fragment(run_every=2.0 if run["status"] == "running" else None)  # a run that ends reruns the page
def live(run_id: str, artifact: str | None = None):
    current = ws.get_run(run_id)
    if run["status"] == "running" and current["status"] != "running":
        st.rerun()  # the whole page: the run picker and the job panel show the new status too
    curve = calibration_curve(run_id, artifact) if artifact else ws.load_artifact(run_id, "curve", [])
    if not curve:
        if current["status"] != "running":
            st.warning(md(f"Run {run_id} is {current['status']} before its first evaluation"
                          + (f": {current['message']}" if current.get("message") else ".")))
            return
        job = mine["job"] if mine and mine.get("run") == run_id else None
        st.info(md("Waiting for the first evaluation" + (f": {job.message}" if job and job.message else "...")))
        return
    rows = [{"step": e["step"], "id": sid, "nll": v, "bucket": buckets.get(sid, "all")}
            for e in curve for sid, v in e["forget_nll"].items()]
    long = pd.DataFrame(rows)
    retain = pd.DataFrame({"step": [e["step"] for e in curve], "nll": [e["retain_nll"] for e in curve],
                           "bucket": "retain"})
    means = pd.concat([long.groupby(["step", "bucket"], as_index=False)["nll"].mean(), retain])
    st.markdown(f"**{current['status']}** · {len(curve)} evaluations · step {curve[-1]['step']} · "
                f"{curve[-1]['elapsed']:.0f} s")
    c1, c2 = st.columns(2)
    per_bucket = alt.Chart(means, title="Mean answer NLL per bucket (forgetting curve)").mark_line(point=True).encode(
        x=charts.step_x(), y=alt.Y("nll:Q", title="answer NLL"), color=charts.group_color("bucket", means["bucket"]),
        tooltip=["bucket", "step", alt.Tooltip("nll:Q", format=".3f")]).properties(height=300)
    present.chart(per_bucket, c1, width="stretch")
    per_sample = alt.Chart(long, title="Per sample").mark_line(opacity=0.5).encode(
        x=charts.step_x(), y=alt.Y("nll:Q", title="answer NLL"), detail="id:N",
        color=charts.group_color("bucket", long["bucket"]),
        tooltip=["id", "step", alt.Tooltip("nll:Q", format=".3f")]).properties(height=300)
    present.chart(per_sample, c2, width="stretch")
    if has_cud:
        from scipy.stats import spearmanr
        last = curve[-1]["forget_nll"]
        ids = [i for i in last if i in cud.index]
        if len(ids) > 2:
            rho = spearmanr([cud[i] for i in ids], [-last[i] for i in ids])[0]
            st.metric(f"Spearman(out-of-fold CUD, realised hardness) at this step, n = {len(ids)}", f"{rho:.3f}",
                      help="hardness = −answer NLL; positive means CUD ranked the hard-to-forget samples high. "
                           "One run, no confidence interval: the Validation page has the evidence")
    charts.downloads(per_bucket, means, f"forgetting_curve_{run_id}", "Mean answer NLL per CUD bucket", figure,
                     f"run {run_label(shown_key)}")
    regime_panel(regime_of(ws.load_artifact(run_id, artifact), run_protocol(ws.get_run(run_id))) if artifact
                 else regime_of(curve))
    after = None if artifact else ws.load_artifact(run_id, "after")
    before = None if artifact else ws.load_artifact(run_id, "before")
    if after and before:
        st.subheader("Before and after")
        table = pd.DataFrame([{"id": sid, "bucket": buckets.get(sid, "all"),
                               **{f"{k} before": v for k, v in before["forget"][sid].items() if k != "generation"},
                               **{f"{k} after": v for k, v in after["forget"][sid].items() if k != "generation"},
                               "generation after": after["forget"][sid].get("generation", "")}
                              for sid in after["forget"]])
        x, y = "answer_nll before", "answer_nll after"
        lo, hi = float(table[[x, y]].min().min()), float(table[[x, y]].max().max())
        pad = 0.05 * (hi - lo) or 0.5
        same = alt.Scale(domain=[lo - pad, hi + pad], nice=False)  # both axes: y = x is the diagonal
        points = alt.Chart(table).mark_circle(size=70).encode(
            x=alt.X(f"{x}:Q", title="answer NLL before", scale=same),
            y=alt.Y(f"{y}:Q", title="answer NLL after", scale=same),
            color=charts.group_color("bucket", table["bucket"]), tooltip=["id", "bucket", "generation after"])
        diagonal = alt.Chart(pd.DataFrame({x: [lo, hi], y: [lo, hi]})).mark_line(
            color="grey", strokeDash=[5, 5]).encode(x=f"{x}:Q", y=f"{y}:Q")
        scatter = (diagonal + points).properties(title="Answer NLL before vs after", width=360, height=360)
        present.chart(scatter, width="content")
        st.caption("One dot per forget sample. Above the dashed line y = x its answer NLL rose (the answer became "
                   "less likely: forgotten); below it, the answer became more likely.")
        charts.downloads(scatter, table, f"before_after_{run_id}", "Answer NLL before vs after unlearning", figure,
                         f"run {run_label(shown_key)}")
        st.dataframe(table, hide_index=True)


live(run["id"], run.get("artifact"))


def curve_of(key: str) -> list[dict]:
    r = by_id[key]
    return calibration_curve(r["id"], r["artifact"]) if "artifact" in r else ws.load_artifact(r["id"], "curve", [])


def short(key: str) -> str:
    r = by_id[key]
    return f"{r['config'].get('label') or r['config']['method']} · {r['config']['method']} · {r['id'][-6:]}"


@st.fragment(run_every=2.0)
def waiting_for_pair(pair: list[dict]) -> None:
    if all("run" in p or not p["job"].active for p in pair):
        st.rerun()
    st.info("Starting the CUD-easiest and CUD-hardest runs; they appear side by side here once both exist.")


st.subheader("Side by side")
pair = st.session_state.get("_pair_started")
if pair and not st.session_state.get("_pair_shown"):
    if all(p.get("run") in by_id for p in pair):
        st.session_state["unlearn_compare"] = [p["run"] for p in pair]
        st.session_state["_pair_shown"] = True
    elif any(p["job"].active for p in pair):
        waiting_for_pair(pair)
if "unlearn_compare" not in st.session_state:  # from a shared link
    st.session_state["unlearn_compare"] = [k for k in st.query_params.get("compare", "").split(",") if k in by_id]
st.session_state["unlearn_compare"] = [k for k in st.session_state["unlearn_compare"] if k in by_id]
compared = st.multiselect("Runs on one axis", list(by_id), key="unlearn_compare", format_func=run_label,
                          help="e.g. the CUD-easiest k against the CUD-hardest k: the same y-axis, a 95% band each")
state.keep_in_url(compare=",".join(compared) or None)
if compared:
    c1, c2 = st.columns([3, 1])
    measure = c1.radio("Measure", list(MEASURES), format_func=MEASURES.get, horizontal=True, key="compare_measure")
    samples = c2.checkbox("Per-sample lines", key="compare_samples")
    curves = {short(k): curve_of(k) for k in compared}
    rows = pd.DataFrame([r for name, c in curves.items() if c for r in run_rows(name, c, measure)])
    if rows.empty:
        st.info("No evaluation yet in the chosen runs.")
    else:
        order = list(curves)
        color = alt.Color("run:N", sort=order, title=None,  # distinct Okabe–Ito hues, not shades of one blue
                          scale=alt.Scale(domain=order, range=[RUN_COLOURS[i % len(RUN_COLOURS)]
                                                               for i in range(len(order))]))
        base = alt.Chart(rows).encode(x=charts.step_x(), color=color)
        layers = [base.mark_area(opacity=0.2).encode(y=alt.Y("low:Q", title=MEASURES[measure]), y2="high:Q"),
                  base.mark_line(point=True).encode(y="mean:Q", tooltip=[
                      "run", "step", alt.Tooltip("mean:Q", format=".3f"), "n"])]
        if samples:
            per = pd.DataFrame([{"run": name, "step": e["step"], "id": i,
                                 "value": v - (c[0]["forget_nll"][i] if measure == "delta" else 0.0)}
                                for name, c in curves.items() for e in c for i, v in e["forget_nll"].items()])
            layers.insert(0, alt.Chart(per).mark_line(opacity=0.25, strokeWidth=1).encode(
                x=charts.step_x(), y="value:Q", detail="id:N", color=color))
        together = alt.layer(*layers).properties(height=320, title=f"{MEASURES[measure]}: mean ± 95% band per run")
        present.chart(together, width="stretch")
        charts.downloads(together, rows, "runs_side_by_side", f"{MEASURES[measure]}: mean ± 95% band per run",
                         figure, "runs " + "; ".join(run_label(k) for k in compared))
        if len(compared) == 2 and all(curves.values()):
            first, second = order
            diff = pd.DataFrame(difference_rows(run_rows(first, curves[first], measure),
                                                run_rows(second, curves[second], measure)))
            if not diff.empty:
                d = diff.iloc[-1]
                st.metric(f"{second} − {first} at step {int(d['step'])}", f"{d['difference']:+.3f}",
                          help=f"difference of the mean {MEASURES[measure]}, 95% band [{d['low']:.3f}, "
                               f"{d['high']:.3f}] (normal approximation; the runs' samples are independent)")
                band = alt.Chart(diff).encode(x=charts.step_x())
                present.chart(alt.layer(
                    band.mark_area(opacity=0.2).encode(y=alt.Y("low:Q", title="difference"), y2="high:Q"),
                    band.mark_line(point=True).encode(y="difference:Q"),
                    alt.Chart(pd.DataFrame({"zero": [0]})).mark_rule(color="grey").encode(y="zero:Q")
                ).properties(height=200, title=f"{second} − {first}: mean difference ± 95% band"), width="stretch")
        utility = []
        for key in compared:
            c = curve_of(key)
            if not c:
                continue
            entry = by_id[key]
            reg = (regime_of(ws.load_artifact(entry["id"], entry["artifact"]), run_protocol(ws.get_run(entry["id"])))
                   if "artifact" in entry else regime_of(c))
            e = reg["trajectory"][-1]
            utility.append({"run": short(key), "step": e["step"], "share forgotten": f"{e['share_forgotten']:.0%}",
                            "median p / p₀": f"{e['relative_prob']:.2f}",
                            "held-out NLL (step 0 → here)": "–" if e["holdout_nll"] is None else
                            f"{e['holdout_nll_0']:.2f} → {e['holdout_nll']:.2f}", "verdict": reg["verdict"] or "–"})
        st.dataframe(pd.DataFrame(utility), hide_index=True)
        st.caption("Efficacy and held-out utility of each run at its last evaluation (verdict: the operating-point "
                   "protocol's reading of it).")
