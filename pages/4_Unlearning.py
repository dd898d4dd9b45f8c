"""Unlearning: run a method live on all, the CUD-easiest or the CUD-hardest forget samples and watch
the forgetting curves; compare before and after, and how well CUD predicted what happened."""
import altair as alt
import pandas as pd
import streamlit as st

from cud_core.jobs import prepare_scenario, unlearn_into_workspace
from cud_core.unlearn import METHODS
from cud_core.unlearn.runner import DEFAULT_LR
from pages.ui import charts, results, state

sel, ws, runs = results.page("Unlearning", "Score the forget set on the home page first: this page unlearns the "
                                           "scored forget samples.", jobs=None)
frame = results.sample_frame(ws, runs)
forget_ids = frame["id"].tolist()
has_cud = "cud" in frame

with st.form("unlearn"):
    c1, c2, c3, c4 = st.columns(4)
    methods = list(METHODS)
    method = c1.selectbox("Method", methods, index=methods.index(st.query_params.get("method", "npo"))
                          if st.query_params.get("method", "npo") in methods else 0,
                          format_func=lambda m: f"{m} — {METHODS[m].description}")
    steps = c2.number_input("Steps", 1, 2000, 30)
    lr = c3.number_input("Learning rate", 1e-7, 1e-2, DEFAULT_LR, step=1e-6, format="%.1e")
    eval_every = c4.number_input("Evaluate every", 1, 100, 5)
    subsets = ["all forget samples"] + (["CUD-easiest k", "CUD-hardest k"] if has_cud else [])
    c5, c6, c7 = st.columns(3)
    subset = c5.selectbox("Forget subset", subsets)
    k = c6.number_input("k", 1, max(1, len(forget_ids)), min(10, len(forget_ids)))
    batch = c7.number_input("Batch size", 1, 64, 8)
    hyper = {}
    defaults = METHODS[method].defaults
    if defaults:
        cols = st.columns(len(defaults))
        for col, (name, value) in zip(cols, defaults.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                hyper[name] = col.number_input(name, value=float(value), format="%.4g")
    submitted = st.form_submit_button("Start unlearning", type="primary")

if submitted:
    chosen = forget_ids
    if subset != "all forget samples":
        ranked = frame.sort_values("cud")["id"].tolist()
        chosen = ranked[: int(k)] if subset == "CUD-easiest k" else ranked[-int(k):]
    hyper = {n: (int(v) if isinstance(METHODS[method].defaults[n], int) else v) for n, v in hyper.items()}
    lm = state.model(sel["model"], sel["dtype"], sel["device"])
    label = subset if subset == "all forget samples" else f"{subset.replace(' k', '')} {int(k)}"

    def job(progress, should_stop, chosen=chosen, hyper=hyper, method=method, label=label):
        sc = prepare_scenario(lm, sel["data"], forget_ids=forget_ids, progress=lambda f, m: progress(0.0, m),
                              should_stop=should_stop)
        forget = [s for s in sc.forget if s.id in set(chosen)]
        return unlearn_into_workspace(sc.lm, forget, sc.retain, ws, sel["data"], method, int(steps), float(lr),
                                      int(eval_every), 0, int(batch), hyper, progress, should_stop, label)
    state.jobs().submit("unlearn", f"Unlearning {label} with {method}", job)
    state.keep_in_url(method=method)

state.job_status(("unlearn",))
all_runs = state.runs(ws, "unlearn", sel, status=None)
if runs["calibrate"] is not None:  # the calibration's own runs (all forget samples, curves only)
    cal = runs["calibrate"]
    all_runs += [{"id": cal["id"], "status": "done", "artifact": f"curve-{m}",
                  "config": {"method": m, "label": "calibration run"}}
                 for m in results.curves(str(ws.root), cal["id"], cal["updated"])]
if not all_runs:
    st.info("No unlearning runs yet for this model and dataset. Start one above.")
    st.stop()
run = st.selectbox("Run", all_runs, format_func=lambda r: f"{r['id']} · {r['config']['method']} · "
                   f"{r['config'].get('label') or ''} · {r['status']}")
buckets = frame.set_index("id")["bucket"] if has_cud else pd.Series(dtype=str)
cud = frame.set_index("id")["cud"] if has_cud else pd.Series(dtype=float)


def calibration_curve(run_id: str, artifact: str) -> list[dict]:
    c = ws.load_artifact(run_id, artifact, {})
    return [{"step": st_, "elapsed": el, "forget_nll": cv, "retain_nll": rc} for st_, el, cv, rc in
            zip(c.get("steps", []), c.get("elapsed", []), c.get("curve", []), c.get("retain_curve", []))]


@st.fragment(run_every=2.0 if run["status"] == "running" else None)
def live(run_id: str, artifact: str | None = None):
    current = ws.get_run(run_id)
    curve = calibration_curve(run_id, artifact) if artifact else ws.load_artifact(run_id, "curve", [])
    if not curve:
        st.info("Waiting for the first evaluation...")
        return
    rows = [{"step": e["step"], "id": sid, "nll": v, "bucket": buckets.get(sid, "all")}
            for e in curve for sid, v in e["forget_nll"].items()]
    long = pd.DataFrame(rows)
    retain = pd.DataFrame({"step": [e["step"] for e in curve], "nll": [e["retain_nll"] for e in curve],
                           "bucket": "retain (mean)"})
    means = pd.concat([long.groupby(["step", "bucket"], as_index=False)["nll"].mean(), retain])
    st.markdown(f"**{current['status']}** · {len(curve)} evaluations · step {curve[-1]['step']} · "
                f"{curve[-1]['elapsed']:.0f} s")
    c1, c2 = st.columns(2)
    per_bucket = alt.Chart(means, title="Mean answer NLL per bucket (forgetting curve)").mark_line(point=True).encode(
        x="step:Q", y=alt.Y("nll:Q", title="answer NLL"), color=alt.Color("bucket:N", scale=alt.Scale(
            domain=["easy", "medium", "hard", "all", "retain (mean)"],
            range=["#1f77b4", "#bcbd22", "#d62728", "#4c78a8", "#7f7f7f"])),
        tooltip=["bucket", "step", alt.Tooltip("nll:Q", format=".3f")]).properties(height=300)
    c1.altair_chart(per_bucket, width="stretch")
    per_sample = alt.Chart(long, title="Per sample").mark_line(opacity=0.5).encode(
        x="step:Q", y=alt.Y("nll:Q", title="answer NLL"), detail="id:N",
        color=alt.Color("bucket:N", scale=alt.Scale(domain=["easy", "medium", "hard", "all"],
                                                     range=["#1f77b4", "#bcbd22", "#d62728", "#4c78a8"])),
        tooltip=["id", "step", alt.Tooltip("nll:Q", format=".3f")]).properties(height=300)
    c2.altair_chart(per_sample, width="stretch")
    if has_cud:
        from scipy.stats import spearmanr
        last = curve[-1]["forget_nll"]
        ids = [i for i in last if i in cud.index]
        if len(ids) > 2:
            rho = spearmanr([cud[i] for i in ids], [-last[i] for i in ids])[0]
            st.metric("Spearman(CUD, realised hardness) at this step", f"{rho:.3f}",
                      help="hardness = −answer NLL; positive means CUD ranked the hard-to-forget samples high")
    charts.downloads(per_bucket, means, f"forgetting_curve_{run_id}")
    after = None if artifact else ws.load_artifact(run_id, "after")
    before = None if artifact else ws.load_artifact(run_id, "before")
    if after and before:
        st.subheader("Before and after")
        table = pd.DataFrame([{"id": sid, "bucket": buckets.get(sid, "all"),
                               **{f"{k} before": v for k, v in before["forget"][sid].items() if k != "generation"},
                               **{f"{k} after": v for k, v in after["forget"][sid].items() if k != "generation"},
                               "generation after": after["forget"][sid].get("generation", "")}
                              for sid in after["forget"]])
        scatter = alt.Chart(table, title="Answer NLL before vs after").mark_circle(size=70).encode(
            x=alt.X("answer_nll before:Q"), y=alt.Y("answer_nll after:Q"),
            color=alt.Color("bucket:N"), tooltip=["id", "bucket", "generation after"]).properties(height=320)
        st.altair_chart(scatter, width="stretch")
        charts.downloads(scatter, table, f"before_after_{run_id}")
        st.dataframe(table, hide_index=True)


live(run["id"], run.get("artifact"))
