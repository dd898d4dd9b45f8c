"""What every page shares: the selected model/dataset/workspace (kept in the URL query), cached
models and tables, the background job queue, and the newest runs for the current selection."""
from __future__ import annotations

import os
import time

import streamlit as st

from cud_core.engine.models import EMBEDDED, EMBEDDED_NAME, load_model
from cud_core.pipeline.jobs import JobManager
from cud_core.store.workspace import DEFAULT_WORKSPACE, Workspace, WorkspaceError

from . import paths, present
from .text import md

DEFAULT_DATA = "builtin:world-facts"
HOME = "views/0_Home.py"
# (script, title, icon, url path) of every page in the sidebar's order; app.py builds st.navigation from it.
# Material icons ship with Streamlit: no emoji font needed
PAGE_FILES = ((HOME, "Home", ":material/home:", ""),
              ("views/1_Rankings.py", "Rankings", ":material/leaderboard:", "Rankings"),
              ("views/2_Circuit.py", "Circuit", ":material/hub:", "Circuit"),
              ("views/3_Depth.py", "Depth", ":material/layers:", "Depth"),
              ("views/4_Unlearning.py", "Unlearning", ":material/trending_down:", "Unlearning"),
              ("views/5_Annotations.py", "Annotations", ":material/edit_note:", "Annotations"),
              ("views/6_Validation.py", "Validation", ":material/verified:", "Validation"))


# what follows the user from page to page; the sidebar's page links carry no query parameters, so the
# session remembers them and puts them back into the URL (which stays the shareable form of the view)
SHARED = ("model", "data", "workspace", "dtype", "device", "sample", "run", "present")


def param(name: str, default: str) -> str:
    return st.query_params.get(name, default)


def selection() -> dict:
    """model, data, workspace, dtype, device from the URL (defaults: the embedded model on world-facts).
    What the URL lacks after navigating through the sidebar comes back from this session, into the URL."""
    remembered = st.session_state.setdefault("_selection", {})
    for name in SHARED:
        if name in st.query_params:
            remembered[name] = st.query_params[name]
        elif name in remembered:
            st.query_params[name] = remembered[name]
    return {"model": param("model", EMBEDDED), "data": param("data", DEFAULT_DATA),
            "workspace": param("workspace", os.environ.get("CUD_WORKSPACE", DEFAULT_WORKSPACE)),
            "dtype": param("dtype", "float32"), "device": param("device", "auto")}


def keep_in_url(**values) -> None:
    """Put values into the URL (None removes one) and remember the shared ones for other pages."""
    remembered = st.session_state.setdefault("_selection", {})
    for k, v in values.items():
        if v is None:
            st.query_params.pop(k, None)
            remembered.pop(k, None)
            continue
        if st.query_params.get(k) != str(v):
            st.query_params[k] = str(v)
        if k in SHARED:
            remembered[k] = str(v)


def model(spec: str, dtype: str = "float32", device: str = "auto"):
    """The model `spec` (cached); paths.PathRefused for a folder outside the allowed roots and caches."""
    paths.check_model(spec)
    return _model(spec, dtype, device)


@st.cache_resource(show_spinner=False)
def _model(spec: str, dtype: str, device: str):
    return load_model(spec, dtype=dtype, device=device)


@st.cache_resource(show_spinner=False)
def jobs() -> JobManager:
    return JobManager()


def open_workspace(root: str) -> Workspace:
    """The workspace at `root`; paths.PathRefused outside the allowed roots (nothing is created),
    WorkspaceError when it cannot be used (a file, not writable, a newer schema)."""
    paths.check_workspace(root)
    return Workspace(root)


def workspace(sel: dict | None = None) -> Workspace:
    """The selected workspace; one that is refused or unusable stops the page with a clear error."""
    root = (sel or selection())["workspace"]
    try:
        return open_workspace(root)
    except (paths.PathRefused, WorkspaceError) as exc:
        stop(f"Cannot open the workspace: {exc}", exc)


def check_paths(sel: dict) -> None:
    """Stop the page with a clear error if the URL's data file or model folder is outside the allowed roots."""
    try:
        paths.check_data(sel["data"])
        paths.check_model(sel["model"])
    except paths.PathRefused as exc:
        stop(str(exc), exc)


def error_markdown(message, exc: Exception | None = None) -> str:
    """`message` (user text: shown literally), plus how to allow a folder when `exc` refused a path."""
    return md(message) + (f" {paths.PathRefused.how_to}" if isinstance(exc, paths.PathRefused) else "")


def stop(message: str, exc: Exception | None = None):
    """Show `message` as the page's error and end the page here."""
    st.error(error_markdown(message, exc))
    st.stop()


def runs(ws: Workspace, kind: str, sel: dict, status: str | None = "done") -> list[dict]:
    """Runs of `kind` for the selected dataset, newest first (any model name derived from the selection)."""
    out = []
    for r in ws.list_runs(kind):
        if r["dataset"] != sel["data"] or (status and r["status"] != status):
            continue
        if not same_model(r["model"], sel["model"]):
            continue
        out.append(r)
    return out


def model_name(sel: dict) -> str:
    """The name runs and annotations are stored under for the selected model spec."""
    return EMBEDDED_NAME if sel["model"] == EMBEDDED else sel["model"]


def same_model(run_model: str, spec: str) -> bool:
    name = model_name({"model": spec})
    return run_model == name or run_model.startswith(f"{name}+ft-")


def job_status(kinds: tuple[str, ...] = ()) -> None:
    """Progress bars of active jobs with stop buttons; refreshes itself while anything runs."""
    manager = jobs()

    # every 2 s: each refresh takes the GIL from the running job (the Demo ran ~10% slower at 1 s)
    @st.fragment(run_every=2.0 if manager.active() else None)
    def _panel():
        active = [j for j in manager.jobs() if j.active and (not kinds or j.kind in kinds)]
        # outcomes of the last three jobs this browser session saw running that ended in the past 15 minutes
        # (a fresh browser is not told that someone's job stopped an hour ago)
        seen = st.session_state.setdefault("_jobs_seen_active", set())
        seen.update(j.id for j in active)
        recent = [j for j in manager.jobs() if not j.active and j.id in seen and (not kinds or j.kind in kinds)
                  and time.time() - (j.finished or time.time()) < 900][:3]
        for j in active:
            cols = st.columns([5, 1])
            cols[0].progress(j.progress, text=md(f"{j.title} — {j.state}: {j.message}"))
            if cols[1].button("Stop", key=f"stop-{j.id}"):
                manager.stop(j.id)
        for j in recent:
            said = (md(f"{j.title} failed: {j.error}") if j.status == "failed" else
                    md(f"{j.title}: {j.status}" + (f" ({j.message})" if j.message else ""))
                    if j.status in ("stopped", "cancelled") else None)
            if said and present.on():  # one line, not a banner
                st.caption(f":orange[{said}]")
            elif said:
                (st.error if j.status == "failed" else st.warning)(said)
        # a job that just ended shows its outcome here first; the whole page reruns on the next tick (its
        # results appear), so "stopped" is on screen within two seconds of the job stopping
        if not active and st.session_state.get("_had_active_jobs"):
            if st.session_state.get("_rerun_after_jobs"):
                st.session_state["_had_active_jobs"] = st.session_state["_rerun_after_jobs"] = False
                st.rerun()
            st.session_state["_rerun_after_jobs"] = True
            return
        st.session_state["_had_active_jobs"] = bool(active)
    _panel()


def home_link(label: str = "Go to the home page") -> None:
    """A link back to the home page that keeps the URL's selection."""
    from streamlit.errors import StreamlitAPIException

    try:
        st.page_link(HOME, label=label, icon=":material/home:", query_params=st.query_params.to_dict())
    except StreamlitAPIException:  # a page run on its own (tests): there is no home page to link to
        st.caption("Open the home page (Home) to start computing.")
