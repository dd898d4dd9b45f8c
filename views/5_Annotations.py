"""Annotations: mark surprising easy or hard cases; stored durably in the workspace's SQLite."""
import pandas as pd
import streamlit as st

from cud_core.data.samples import DataError, Problem
from cud_core.store.annotations import LABELS, export_csv, import_csv
from views.ui import results, state
from views.ui.text import md as plain


def uploaded_text(upload) -> str:
    """The uploaded file as text; a DataError (not replacement characters) when it is not UTF-8."""
    try:
        return upload.getvalue().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError([Problem(upload.name, None, f"not UTF-8 text: {exc}")]) from exc


st.set_page_config(page_title="Annotations · CUD Explorer", page_icon="🧭", layout="wide")
sel = state.selection()
ws = state.workspace(sel)
model_name = state.model_name(sel)
st.title("Annotations")
st.caption(f"{plain(model_name)} · {plain(sel['data'])} · stored in {plain(ws.db_path)}")

runs = results.current_runs(ws, sel)
results.calibration_picker(runs)
frame = results.sample_frame(ws, runs)
known = frame["id"].tolist() if not frame.empty else []
questions = dict(zip(frame["id"], frame["question"])) if not frame.empty else {}

with st.form("add", clear_on_submit=True):
    st.subheader("Add an annotation")
    c1, c2 = st.columns([3, 2])
    wanted = st.query_params.get("sample")
    if known:
        sample_id = c1.selectbox("Sample", known, index=known.index(wanted) if wanted in known else 0,
                                 format_func=lambda i: f"{i} — {questions.get(i, '')[:80]}")
    else:
        sample_id = c1.text_input("Sample id", value=wanted or "",
                                  help="no scored samples yet: type the id of the sample you mean")
    label = c2.selectbox("Label", LABELS)
    note = st.text_area("Note", placeholder="what is surprising about it?")
    author = st.text_input("Author", value=st.session_state.get("author", ""))
    if st.form_submit_button("Save annotation", type="primary"):
        if not str(sample_id).strip():
            st.error("Choose or type a sample id.")
        else:
            ws.add_annotation(model_name, sel["data"], str(sample_id).strip(), label, note.strip(), author.strip())
            st.session_state["author"] = author.strip()
            st.success(f"Saved: {plain(sample_id)} — {label}")

rows = ws.annotations(model=model_name, dataset=sel["data"])
st.subheader(f"{len(rows)} annotation(s)")
if rows:
    table = pd.DataFrame(rows)
    table["question"] = table["sample_id"].map(questions).fillna("")
    table["created"] = pd.to_datetime(table["created"], unit="s").dt.strftime("%Y-%m-%d %H:%M")
    c1, c2 = st.columns(2)
    chosen = c1.multiselect("Filter labels", sorted(table["label"].unique()))
    text = c2.text_input("Search notes / ids")
    if chosen:
        table = table[table["label"].isin(chosen)]
    if text:
        t = text.lower()
        table = table[table["note"].str.lower().str.contains(t, regex=False)
                      | table["sample_id"].str.lower().str.contains(t, regex=False)]
    view = table[["id", "sample_id", "label", "note", "author", "created", "question"]]
    event = st.dataframe(view, hide_index=True, on_select="rerun", selection_mode="multi-row", key="ann_table")
    picked = [int(view.iloc[i]["id"]) for i in (event.selection.rows if event else [])]
    if picked and st.button(f"Delete {len(picked)} selected"):
        for a in picked:
            ws.delete_annotation(a)
        st.rerun()

st.subheader("Export and import")
c1, c2 = st.columns(2)
c1.download_button("Export as CSV", export_csv(ws, model_name, sel["data"]), file_name="cud_annotations.csv",
                   mime="text/csv")
upload = c2.file_uploader("Import a CSV (columns sample_id, label, note, author)", type=["csv"])
if upload is not None and st.session_state.get("imported") != upload.file_id:
    try:
        added, skipped = import_csv(ws, uploaded_text(upload), model_name, sel["data"], upload.name,
                                    set(known) if known else None)
        st.session_state["imported"] = upload.file_id
        already = f"; {skipped} already present were skipped" if skipped else ""
        st.session_state["import_message"] = f"Imported {added} annotation(s) from {plain(upload.name)}{already}."
        st.rerun()
    except DataError as exc:
        st.error(f"{plain(upload.name)} has {len(exc.problems)} problem(s); nothing was imported.")
        st.code(exc.report(), language=None)
if "import_message" in st.session_state:  # shown after the rerun that lists the new rows
    c2.success(st.session_state.pop("import_message"))
