"""Reading computed results for the current selection into tables (cached per run update)."""
from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from cud_core.pipeline.outcomes import first_seed_curves, shown_units
from cud_core.pipeline.presets import is_demo, preset_of
from cud_core.store.workspace import Workspace

from . import present, state
from .text import md

CIRCUIT_COLUMNS = ("n_edges", "n_nodes", "depth_com", "weighted_depth_com", "longest_path", "mean_edge_length",
                   "share_heads", "faithfulness")


def current_runs(ws: Workspace, sel: dict) -> dict:
    """The finished calibration the URL's `run` names (default: the newest) and the scoring run behind
    it (or the newest scoring run); "calibrations": every finished one, newest first."""
    calibrations = state.runs(ws, "calibrate", sel)
    wanted = state.param("run", "")
    if wanted and wanted not in {c["id"] for c in calibrations}:
        other = ws.get_run(wanted)
        if other is not None and (other["dataset"] != sel["data"]
                                  or not state.same_model(other["model"], sel["model"])):
            state.keep_in_url(run=None)  # a choice made for another model or dataset (remembered): dropped
            wanted = ""
    cal = next((c for c in calibrations if c["id"] == wanted), calibrations[0] if calibrations else None)
    score = None
    if cal is not None:
        score = ws.get_run(ws.load_artifact(cal["id"], "score_run"))
    if score is None:
        score = next(iter(state.runs(ws, "score", sel, status=None)), None)
    return {"calibrate": cal, "score": score, "calibrations": calibrations, "wanted": wanted}


def calibration_picker(runs: dict) -> None:
    """With more than one finished calibration for this model and dataset, a sidebar choice between
    them (kept in the URL as `run`, so every page and a shared link show the same one); a `run` in
    the URL that is not one of them is named, and the newest shown instead."""
    calibrations = runs["calibrations"]
    if runs["wanted"] and runs["calibrate"] is not None and runs["calibrate"]["id"] != runs["wanted"]:
        st.warning(md(f"No finished calibration {runs['wanted']} for this model and dataset; showing the newest, "
                      f"{runs['calibrate']['id']}."))
    if len(calibrations) < 2:
        return
    ids = [c["id"] for c in calibrations]
    labels = {c["id"]: f"{preset_of(c)} · {c['config'].get('score', {}).get('method', '?')}"
                       f" · {time.strftime('%m-%d %H:%M', time.localtime(c['created']))}" for c in calibrations}
    if len(set(labels.values())) < len(labels):  # made in the same minute: the id's random suffix tells them apart
        labels = {i: f"{v} · {i.rsplit('-', 1)[-1]}" for i, v in labels.items()}
    chosen = st.sidebar.selectbox("Shown calibration", ids, index=ids.index(runs["calibrate"]["id"]),
                                  format_func=labels.get,
                                  help="Every results page shows this calibration; the newest is the default.")
    st.sidebar.caption(md(runs["calibrate"]["id"]))
    if chosen != runs["calibrate"]["id"]:
        state.keep_in_url(run=None if chosen == ids[0] else chosen)  # the newest: no pin, so later ones show
        st.rerun()


@st.cache_data(show_spinner=False)
def _score_frame(root: str, run_id: str, updated: float) -> pd.DataFrame:
    ws = Workspace(root)
    samples = {s.id: s for s in ws.load_samples(run_id)}
    rows = []
    for sid, r in ws.load_results(run_id).items():
        row = {"id": sid, "question": samples[sid].question, "answer": samples[sid].answer}
        for k in ("answer_nll", "answer_prob", "exact_match", "extraction_strength", "rouge_l_recall"):
            if k in r:
                row[k] = r[k]
        for k in CIRCUIT_COLUMNS:
            if k in r.get("circuit", {}):
                row[k] = r["circuit"][k]
        rows.append(row)
    return pd.DataFrame(rows)


@st.cache_data(show_spinner=False)
def _calibration_frame(root: str, run_id: str, updated: float) -> pd.DataFrame:
    ws = Workspace(root)
    rows = []
    for sid, r in ws.load_results(run_id).items():
        # `cud_oof` is the out-of-fold CUD (evidence); results without it have only the in-sample `cud`
        oof = r.get("cud_oof")
        row = {"id": sid, "cud": r["cud"] if oof is None else oof, "cud_in_sample": r.get("cud_in_sample", r["cud"]),
               "cud_kind": "in-sample (older run)" if oof is None else "out-of-fold", "fold": r.get("fold"),
               "bucket": r["bucket"], "label": r.get("label") or ""}
        for method, d in r["realised"].items():
            row[f"nll_after_{method}"] = d["nll_after"]
        for k, v in r["predictors"].items():
            if k not in ("original_nll", "extraction_strength"):
                row[k] = v
        rows.append(row)
    return pd.DataFrame(rows)


def sample_frame(ws: Workspace, runs: dict) -> pd.DataFrame:
    """One row per forget sample: metrics and circuit statistics, plus CUD and realised difficulty
    when a calibration exists."""
    frame = pd.DataFrame()
    if runs["score"] is not None:
        frame = _score_frame(str(ws.root), runs["score"]["id"], runs["score"]["updated"])
    if runs["calibrate"] is not None:
        cal = _calibration_frame(str(ws.root), runs["calibrate"]["id"], runs["calibrate"]["updated"])
        frame = cal.merge(frame, on="id", how="left") if len(frame) else cal
    return frame


@st.cache_data(show_spinner=False)
def calibration_units(root: str, run_id: str, updated: float) -> list[tuple[str, str, str]]:
    """(label, run id, artifact) of each first-seed curve of a calibration run (per forget set when pooled)."""
    return shown_units(Workspace(root), run_id)


@st.cache_data(show_spinner=False)
def curves(root: str, run_id: str, updated: float) -> dict[str, dict]:
    """method -> stored forgetting curve of a calibration run."""
    return first_seed_curves(Workspace(root), run_id)  # the first unlearning seed


def figure_context(sel: dict, runs: dict) -> dict:
    """What an exported figure says about where it comes from: {"caption": model · dataset · calibration (its
    preset) or scoring run, "demo": whether it is the Demo's (no evidence)}."""
    cal, score = runs.get("calibrate"), runs.get("score")
    source = (f"calibration {cal['id']} ({preset_of(cal)} settings)" if cal is not None
              else f"scoring run {score['id']}" if score is not None else "")
    return {"caption": " · ".join(x for x in (state.model_name(sel), sel["data"], source) if x), "demo": is_demo(cal)}


def annotation_summary(ws: Workspace, sel: dict) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    for a in ws.annotations(model=state.model_name(sel), dataset=sel["data"]):
        out.setdefault(a["sample_id"], []).append(a["label"])
    return {k: "; ".join(v) for k, v in out.items()}


def page(title: str, empty_message: str, jobs: tuple[str, ...] | None = ()) -> tuple[dict, Workspace, dict]:
    """The common top of a results page: config, title, selection caption, job panel, and a clear
    pointer to the compute step when nothing is scored yet (the page stops there). A workspace, data
    file or model folder that is refused or unusable stops the page with one clear error."""
    st.set_page_config(page_title=f"{title} · CUD Explorer", page_icon="🧭", layout="wide")
    sel = state.selection()
    presenting = present.toggle()
    st.title(title)
    if not presenting:
        st.caption(md(f"{state.model_name(sel)} · {sel['data']} · workspace {sel['workspace']}"))
    state.check_paths(sel)
    ws = state.workspace(sel)
    if jobs is not None:
        state.job_status(jobs)
    runs = current_runs(ws, sel)
    if runs["score"] is None:
        st.info(empty_message)
        state.home_link()
        st.stop()
    if runs["calibrate"] is None and not ws.done_sample_ids(runs["score"]["id"]):
        st.info(no_results_yet(ws, runs["score"]))
        state.home_link()
        st.stop()
    calibration_picker(runs)
    demo_banner(runs["calibrate"])
    return sel, ws, runs


def demo_banner(calibration: dict | None) -> None:
    """A demo calibration's numbers carry no evidence: say so on every page that shows them."""
    if not is_demo(calibration):
        return
    if present.on():
        st.caption(":orange[**Demo calibration**: a few samples and steps to fill the pages; no evidence.]")
    else:
        st.warning("**Demo calibration** — a few labelled samples and a few unlearning steps, to fill every page "
                   "quickly. Its CUD values, buckets and correlations carry no evidence: run *Calibrate* with "
                   "the full settings before drawing conclusions (docs/method.md, validation).")


def no_results_yet(ws: Workspace, run: dict) -> str:
    """What to say (Markdown) about a scoring run that has not stored its first batch."""
    ws.mark_interrupted()  # a run whose process died shows as interrupted, not running
    run = ws.get_run(run["id"]) or run
    said = f"No results yet: scoring run {md(run['id'])} is **{md(run['status'])}**"
    if run["status"] == "running":
        return f"{said} and has not stored its first batch. Rows appear batch by batch; reload this page soon."
    why = f" ({md(run['message'])})" if run.get("message") else ""
    return (f"{said}{why} and stored no results. Start *Score* again on the home page with the same settings "
            "(or rerun its `python -m cud_core score` command) to resume it.")


def circuit_diffs(ws: Workspace, sel: dict, runs: dict) -> dict[str, dict]:
    """Label -> stored circuit diff (see cud_core.pipeline.reattribution) whose "before" side is the scoring run
    the pages show: from the calibration (one per method) and from unlearning runs."""
    score = runs.get("score")
    if score is None:
        return {}
    found = {}
    cal = runs.get("calibrate")
    if cal is not None:
        for name in ws.artifact_names(cal["id"]):
            if name.startswith("circuit_diff-"):
                found[f"calibration: {name[len('circuit_diff-'):]}"] = ws.load_artifact(cal["id"], name)
    for run in state.runs(ws, "unlearn", sel):
        d = ws.load_artifact(run["id"], "circuit_diff")
        if d is not None:
            found[f"{run['config']['method']} run {run['id']}"] = d
    # the unlearned copy's scoring run must be here (a calibration unpacked from a bundle comes without it)
    return {k: v for k, v in found.items()
            if v.get("before_run") == score["id"] and ws.get_run(v.get("after_run", "")) is not None}
