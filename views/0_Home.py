"""CUD Explorer — Home: pick model, dataset and settings; start and watch jobs; see what is computed.

Reached through app.py's navigation (`make run`); the other pages show the results (Rankings,
Circuit, Depth, Unlearning, Annotations, Validation).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from cud_core.data.samples import BUILTINS, DataError, load_data, load_samples, needs_finetuning
from cud_core.engine.attribution import BASELINES, METHODS, METRICS
from cud_core.engine.graph import Graph
from cud_core.engine.models import EMBEDDED, ModelLoadError
from cud_core.pipeline.calibration import ANCHORS, CalibrationSettings, calibrate, pending
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.estimate import describe, describe_run, estimate_calibrate, estimate_score, with_preparation
from cud_core.pipeline.executor import ExecutorSettings, make
from cud_core.pipeline.jobs import describe_preparation, prepare_scenario, scenario_for_estimate
from cud_core.pipeline.predict import ARTIFACT, anchor_settings, score_and_predict
from cud_core.pipeline.presets import DEFAULT, PRESETS, calibration_settings
from cud_core.pipeline.scoring import ScoreSettings, score_run
from cud_core.report.validation import summary_rows, unavailable_text
from cud_core.store.workspace import Workspace, WorkspaceError
from cud_core.unlearn import METHODS as UNLEARN_METHODS
from cud_core.unlearn.runner import DEFAULT_LR
from views.ui import paths, results, state
from views.ui.text import md

st.set_page_config(page_title="CUD Explorer", page_icon="🧭", layout="wide")


def model_picker(sel: dict) -> str:
    current = sel["model"]
    kinds = ["embedded", "local folder", "hub id (local cache)"]
    index = 0 if current == EMBEDDED else (2 if paths.is_hub_id(current) else 1)
    kind = st.sidebar.radio("Model", kinds, index=index,
                            help="embedded = SmolLM2-135M-Instruct, shipped with the tool, fully offline")
    if kind == "embedded":
        return EMBEDDED
    return st.sidebar.text_input("Folder path" if kind == "local folder" else "Hub id",
                                 value="" if current == EMBEDDED else current,
                                 help="Model folders may also lie in the Hugging Face cache or CUD Explorer's "
                                      "model cache. " + paths.HELP).strip()


def dataset_picker(sel: dict, ws: Workspace | None) -> str | None:
    builtin = [f"builtin:{name}" for name in BUILTINS]
    options = builtin + ["upload a file"]
    current = sel["data"]
    index = options.index(current) if current in options else len(options) - 1
    choice = st.sidebar.selectbox("Dataset", options, index=index,
                                  format_func=lambda o: f"{o} — {BUILTINS[o[8:]]}" if o in builtin else o)
    if choice != "upload a file":
        return choice
    upload = st.sidebar.file_uploader("Question/answer file", type=["json", "jsonl", "csv", "parquet"],
                                      help="Columns `question` and `answer` (TOFU format); optional `id`.")
    if upload is None:
        return current if current not in builtin else None
    if ws is None:
        st.sidebar.error("Uploads are saved in the workspace folder: choose a usable one first.")
        return None
    folder = ws.root / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(upload.name).name
    path.write_bytes(upload.getvalue())
    return str(path)


def settings_panel() -> tuple[ScoreSettings, CalibrationSettings, float, int]:
    # calibrate's defaults (cud_core/pipeline/presets.py), the same on the command line
    d, c, s = DEFAULT, DEFAULT.calibration, DEFAULT.calibration.score
    with st.sidebar.expander("Forget set"):
        fraction = st.slider("Forget fraction", 0.05, 0.5, d.forget_fraction, 0.05,
                             help="share of the file's samples drawn for the forget set (only facts the model "
                                  f"knows are kept); {d.forget_fraction:g} of world-facts gives ≥ 100 forget samples")
        seed = st.number_input("Seed", 0, 10_000, d.seed)
        sets = st.number_input("Forget sets", 1, 20, c.forget_sets,
                               help="cut the forget set into this many disjoint sets matched on the original NLL "
                                    "and unlearn each on its own, outcomes pooled (a small model forgets a few "
                                    "dozen facts within the utility bound, not a hundred at once)")
    with st.sidebar.expander("Attribution"):
        method = st.selectbox("Method", METHODS, index=METHODS.index(s.method))
        steps = st.number_input("IG steps", 1, 50, s.steps)
        baseline = st.selectbox("Baseline", BASELINES, index=BASELINES.index(s.baseline))
        metric = st.selectbox("Metric", METRICS, index=METRICS.index(s.metric))
        batch = st.number_input("Batch size", 1, 64, c.batch_size)
        n_edges = st.number_input("Circuit size (edges)", 5, 2000, s.n_edges)
    with st.sidebar.expander("Calibration"):
        methods = st.multiselect("Unlearning methods (K)", list(UNLEARN_METHODS), default=list(c.methods))
        u_steps = st.number_input("Unlearning steps", 1, 1000, c.steps)
        # a number here: the runner's default below 500M parameters (the command line's None picks by model size)
        lr = st.number_input("Learning rate", 1e-7, 1e-2, DEFAULT_LR, step=1e-6, format="%.1e")
        q = st.slider("q (top/bottom share labelled easy/hard)", 0.05, 0.5, c.q, 0.025,
                      help=f"{c.q:g} labels ≥ 20 samples per class at the default size; the paper uses "
                           f"{PRESETS['paper'].calibration.q:g}")
        seeds = st.multiselect("Unlearning seeds", list(range(5)), default=list(c.seeds),
                               help="two or more give the target's reliability ceiling (Validation page)")
        folds = st.number_input("Cross-fitting folds", 2, 20, c.folds)
        anchors = st.radio("Headline CUD", ANCHORS, index=ANCHORS.index(c.anchors), horizontal=True,
                           help="anchors from the methods' consensus labels, or each method's own (the paper's "
                                "code); both are always computed")
    score = ScoreSettings(method=method, steps=int(steps), baseline=baseline, metric=metric, batch_size=int(batch),
                          n_edges=int(n_edges), generation=False)
    cal = CalibrationSettings(methods=tuple(methods), steps=int(u_steps), lr=float(lr), q=q, batch_size=int(batch),
                              seed=int(seed), seeds=tuple(sorted(seeds)) or (0,), folds=int(folds), anchors=anchors,
                              forget_sets=int(sets), score=score)
    return score, cal, float(fraction), int(seed)


def cluster_panel() -> ExecutorSettings | None:
    """Where Score and Calibrate run: this process (default) or a running Ray cluster (docs/cluster.md);
    the workspace fills while the workers compute, so the pages can be browsed meanwhile."""
    with st.sidebar.expander("Where jobs run"):
        where = st.radio("Executor", ["this machine", "Ray cluster"], horizontal=True,
                         help="a Ray cluster computes scoring batches and unlearning runs on its workers; this "
                              "app stays the one writer of the workspace")
        if where == "this machine":
            return None
        address = st.text_input("Ray address", "auto", help="auto: the cluster `ray start --head` runs on this "
                                "machine; HOST:PORT of a head node; local-cluster: a private instance here")
        workers = st.number_input("Workers (0: one per GPU or CPU slot)", 0, 4096, 0)
        gpus = st.number_input("GPUs per worker", 0.0, 8.0, 0.0, 0.25, help="a fraction shares a GPU between workers")
        cpus = st.number_input("CPUs per worker", 0.25, 256.0, 1.0, 0.25)
    return ExecutorSettings("ray", address.strip() or "auto", int(workers) or None, float(gpus), float(cpus))


def start_job(kind: str, sel: dict, lm, score: ScoreSettings, cal: CalibrationSettings, fraction: float, seed: int,
              limit: int | None = None, cluster: ExecutorSettings | None = None):
    ws = state.workspace(sel)

    def job(progress, should_stop):
        ctx = RunContext(lm, ws, sel["data"], progress=progress, should_stop=should_stop)
        if kind == "estimate":  # counts slow preparation (fine-tuning, the knowledge filter) instead of doing it
            sc, prep = scenario_for_estimate(ctx, fraction, seed, limit=limit)
            return cost_estimates(sc, score, cal, (cluster.workers or 1) if cluster else 1, ws, sel["data"], prep)
        # the stages before the first step show their own progress and time left in the job panel
        sc = prepare_scenario(ctx, fraction, seed, limit=limit,
                              need_retain=kind != "score")  # a Score needs the forget set only
        if kind == "finetune":
            return sc.lm.name
        if cluster is not None:
            progress(0.0, f"connecting to the Ray cluster at {cluster.address} and loading the model on its workers")
        executor = make(cluster, sc.lm)
        try:
            if kind == "score":
                return score_run(ctx.but(lm=sc.lm, executor=executor), sc.forget, score,
                                 extra_config={"forget_fraction": fraction, "seed": seed})
            return calibrate(ctx.but(lm=sc.lm, executor=executor), sc.forget, sc.retain, cal)
        finally:
            if executor is not None:
                executor.close()
    title = {"score": "Scoring circuits", "calibrate": "Calibrating CUD", "finetune": "Fine-tuning",
             "estimate": "Estimating time and memory"}[kind]
    if cal.preset:
        title = f"{cal.preset.capitalize()}: {title.lower()}"
    state.jobs().submit(kind, f"{title} ({sel['data']})", job)


def main() -> None:
    sel = state.selection()
    st.title("CUD Explorer")
    st.caption("Which forget-set samples will be hard to unlearn, and why — circuit-guided unlearning difficulty.")
    spec = model_picker(sel)
    dtype = st.sidebar.selectbox("dtype", ["float32", "bfloat16", "float16"],
                                 index=["float32", "bfloat16", "float16"].index(sel["dtype"]))
    device = st.sidebar.selectbox("Device", ["auto", "cpu", "cuda"], index=["auto", "cpu", "cuda"].index(sel["device"]))
    ws_root = st.sidebar.text_input("Workspace folder", value=sel["workspace"], help=paths.HELP)
    try:
        ws, ws_error = state.open_workspace(ws_root), None
    except (paths.PathRefused, WorkspaceError) as exc:  # shown in the Workspace section; nothing created
        ws, ws_error = None, exc
    data = dataset_picker(sel, ws)
    score, cal, fraction, seed = settings_panel()
    cluster = cluster_panel()
    state.keep_in_url(model=spec or None, data=data, workspace=ws_root, dtype=dtype, device=device)
    sel = state.selection()

    model_col, data_col = st.columns(2)
    lm = None
    with model_col:
        st.subheader("Model")
        if not spec:
            st.info("Enter a model folder or hub id in the sidebar.")
        else:
            try:
                with st.spinner(f"Loading {md(spec)} (the first embedded start converts it once, about 30 s)..."):
                    lm = state.model(spec, dtype, device)
                st.success(md(f"{lm.name} on {lm.device} ({lm.info['dtype']})"))
                facts = {**lm.info, "n_edges": Graph.from_model(lm.model).n_edges}
                st.dataframe(pd.DataFrame({"value": {k: str(v) for k, v in facts.items()}}), height=300)
            except (ModelLoadError, paths.PathRefused) as exc:
                st.error(state.error_markdown(f"Cannot load the model: {exc}", exc))
    samples = None
    with data_col:
        st.subheader("Dataset")
        if data is None:
            st.info("Upload a JSON, JSONL, CSV or Parquet file with `question` and `answer` columns.")
        else:
            try:
                paths.check_data(data)
                samples = load_data(data) if data.startswith("builtin:") else load_samples(data)
                st.success(md(f"{data}: {len(samples)} samples"))
                st.dataframe(pd.DataFrame([{"id": s.id, "question": s.question, "answer": s.answer}
                                           for s in samples]), hide_index=True, height=300)
            except paths.PathRefused as exc:
                st.error(state.error_markdown(exc, exc))
            except DataError as exc:
                st.error(f"The data has {len(exc.problems)} problem(s); nothing was loaded.")
                st.code(exc.report(), language=None)

    st.subheader("Compute")
    ready = lm is not None and samples is not None and ws is not None
    c0, c1, c2, c3 = st.columns(4)
    demo, paper = PRESETS["demo"], PRESETS["paper"]
    if c0.button("Demo (≈5 min on a laptop CPU)", disabled=not ready, type="primary",
                 help=f"{demo.description}. Fills every page with a small calibration of the selected model "
                      "and dataset; the pages mark it as a demo. For evidence, run Calibrate (see the "
                      "validation protocol in docs/method.md)."):
        start_job("calibrate", sel, lm, score, calibration_settings("demo", lr=cal.lr), demo.forget_fraction,
                  seed, limit=demo.limit)
    if c1.button("Score the forget set's circuits", disabled=not ready,
                 help="per-sample edge attribution, circuits and statistics (minutes on a CPU)"):
        start_job("score", sel, lm, score, cal, fraction, seed, cluster=cluster)
    if c2.button("Calibrate CUD (unlearn with K methods)", disabled=not ready,
                 help="scores circuits, runs the unlearning methods, labels easy/hard, builds anchors, "
                      "scores and validates CUD (tens of minutes on a CPU)"):
        start_job("calibrate", sel, lm, score, cal, fraction, seed, cluster=cluster)
    if c3.button("Paper setting", disabled=not ready,
                 help=f"{paper.description}: the published CUD pipeline, calibrated on the selected model and "
                      "dataset (heavy on a CPU: EAP-IG-activations costs (L+2)·4+1 forward+backward passes per "
                      "sample)"):
        paper_cal = calibration_settings("paper", lr=cal.lr)
        start_job("calibrate", sel, lm, paper_cal.score, paper_cal, fraction, seed, cluster=cluster)
    if data and needs_finetuning(data) and st.button(
            "Fine-tune the model on this scenario now", disabled=not ready,
            help="the model must learn the invented facts before it can unlearn them; scoring and calibration "
                 "do this first anyway, and the result is cached"):
        start_job("finetune", sel, lm, score, cal, fraction, seed)
    if st.button("Estimate time and memory", disabled=not ready,
                 help="timing probes of a few seconds on this machine: Score and Calibrate with the settings in "
                      "the sidebar (on the workers chosen under 'Where jobs run')"):
        start_job("estimate", sel, lm, score, cal, fraction, seed, cluster=cluster)
    show_estimates(data)
    if ready:
        predictions(sel, ws, lm)
    state.job_status()
    summary(sel, ws, ws_error)


def cost_estimates(sc, score: ScoreSettings, cal: CalibrationSettings, workers: int, ws, data: str, prep: dict) -> dict:
    """What Score and Calibrate would cost with these settings (cud_core.pipeline.estimate; timing probes here),
    each with the work before its first step (`prep`, jobs.estimate_preparation); Calibrate counts only
    what this workspace does not have yet (finished or reusable work)."""
    return {"Before the first step": describe_preparation(prep).split(": ", 1)[1],
            "Score": describe(with_preparation(estimate_score(sc.lm, sc.forget, score, workers=workers), prep)),
            "Calibrate": describe_run(with_preparation(estimate_calibrate(
                sc.lm, sc.forget, sc.retain, cal, workers, pending=pending(sc.lm, sc.forget, sc.retain, cal, ws, data)),
                prep))}


def show_estimates(data: str | None) -> None:
    """The newest finished estimate for this dataset, under the Start buttons."""
    done = [j for j in state.jobs().jobs() if j.kind == "estimate" and j.status == "done" and j.title.endswith(
        f"({data})")]
    if done:
        for name, line in done[0].result.items():
            st.caption(f"**{name}** — " + md(line))


def predictions(sel: dict, ws: Workspace, lm) -> None:
    """Score the selected dataset against a finished calibration's saved anchors (CUD before unlearning)."""
    cals = [r for r in ws.list_runs("calibrate") if r["status"] == "done" and r["model"] == lm.name]
    with st.expander("Score new samples against saved anchors"):
        if not cals:
            st.caption("Needs a finished calibration of this model in this workspace: its anchors are what new "
                       "samples are compared with.")
            return
        ids = [r["id"] for r in cals]
        datasets = {r["id"]: r["dataset"] for r in cals}
        chosen = st.selectbox("Anchors of calibration", ids, key="anchors_run",
                              format_func=lambda i: f"{i} ({datasets[i]})")
        if st.button("Score this dataset against these anchors",
                     help="every sample of the selected dataset, attributed with the calibration's settings, then "
                          "compared with its easy and hard anchors (no unlearning)"):
            settings = anchor_settings(ws, chosen)

            def job(progress, should_stop):
                everything = load_data(sel["data"])  # every sample is a new forget request
                ctx = RunContext(lm, ws, sel["data"], progress=progress, should_stop=should_stop)
                sc = prepare_scenario(ctx, samples=everything, forget_ids=[x.id for x in everything], need_retain=False)
                run, _ = score_and_predict(ctx.but(lm=sc.lm), sc.forget, settings, chosen,
                                           extra_config={"anchors": chosen})
                return run
            state.jobs().submit("score", f"Scoring against the anchors of {chosen} ({sel['data']})", job)
        shown = [r for r in state.runs(ws, "score", sel) if ws.load_artifact(r["id"], ARTIFACT)]
        if shown:
            p = ws.load_artifact(shown[0]["id"], ARTIFACT)
            samples = {x.id: x for x in ws.load_samples(shown[0]["id"])}
            seen = set(p["in_calibration"])
            table = pd.DataFrame([{"id": i, "question": samples[i].question, "predicted CUD": v,
                                   "in that calibration": "yes (in-sample)" if i in seen else ""}
                                  for i, v in sorted(p["cud"].items(), key=lambda kv: -kv[1]) if i in samples])
            st.markdown(md(f"Predicted with the anchors of `{p['anchors_run']}` ({p['similarity']}): "
                           "0 = the circuit looks like the easy anchor, 1 = like the hard one."))
            st.dataframe(table, hide_index=True, column_config={
                "predicted CUD": st.column_config.NumberColumn(format="%.3f")})


def summary(sel: dict, ws: Workspace | None, ws_error: Exception | None) -> None:
    st.subheader("Workspace")
    if ws is None:
        st.error(state.error_markdown(f"Cannot open the workspace: {ws_error}", ws_error))
        return
    try:
        ws.mark_interrupted()
        runs = ws.list_runs()
    except Exception as exc:  # an unusable folder must not break the page
        st.error(md(f"Cannot open workspace {sel['workspace']!r}: {exc}"))
        return
    working = state.jobs().active()
    if not runs and working:  # a job preparing its data or model has stored nothing yet, but it is under way
        st.info(md(f"Nothing stored yet in {sel['workspace']}: " + "; ".join(
            f"{j.title} is {j.state} ({j.progress:.0%})" for j in working) + ". Its runs appear here once it "
            "stores them; progress and Stop are above."))
        return
    if not runs:
        st.info(f"Nothing computed yet in {md(sel['workspace'])}. Press *Score* or *Calibrate* above, or run "
                "`python -m cud_core calibrate --model embedded --data builtin:world-facts`.")
        return
    table = pd.DataFrame([{k: r[k] for k in ("id", "kind", "model", "dataset", "status", "message")} for r in runs])
    st.dataframe(table, hide_index=True)
    current = results.current_runs(ws, sel)
    results.calibration_picker(current)
    shown = current["calibrate"]  # the URL's `run`, else the newest
    if shown:
        report = ws.load_artifact(shown["id"], "validation_report")
        st.markdown(f"**Validation of CUD** (out-of-fold, run `{shown['id']}`; details on the Validation page)")
        results.demo_banner(shown)
        if report:
            st.markdown(md(report["verdict"]))
        rows = summary_rows(report) if report else ws.load_artifact(shown["id"], "validation", [])
        st.dataframe(pd.DataFrame(rows), hide_index=True)
        if report and report.get("unavailable"):
            st.caption(md(unavailable_text(report)))
        st.caption("ρ = Spearman with realised hardness (high = hard to forget), mean over methods and seeds, with "
                   "95% bootstrap CIs; AUROC = hard vs easy labels, read in the expected direction (0.5 = "
                   "chance); CUD is out-of-fold. `high means` is the direction each predictor was "
                   "expected to have.")


main()
