"""Annotations: mark surprising easy or hard cases; stored durably in the workspace's SQLite."""
import altair as alt
import pandas as pd
import streamlit as st

from cud_core.data.samples import DataError, Problem
from cud_core.store.annotations import LABELS, ORDERS, agreement, export_csv, import_csv, queue
from views.ui import present, results, state
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
presenting = present.toggle()
st.title("Annotations")
if not presenting:
    st.caption(f"{plain(model_name)} · {plain(sel['data'])} · stored in {plain(ws.db_path)}")

runs = results.current_runs(ws, sel)
results.calibration_picker(runs)
frame = results.sample_frame(ws, runs)
known = frame["id"].tolist() if not frame.empty else []
questions = dict(zip(frame["id"], frame["question"])) if not frame.empty else {}

author = st.text_input("Author", key="author", help="kept for this session; every annotation keeps its author, "
                                                    "so several people can annotate one workspace")
rows = ws.annotations(model=model_name, dataset=sel["data"])
queue_tab, add_tab = st.tabs(["Annotation queue", "Add one"])

with queue_tab:
    if not known:
        st.info("No scored samples yet: the queue fills once the forget set is scored (home page).")
    else:
        nll_cols = [c for c in frame.columns if c.startswith("nll_after_")]
        realised = frame.set_index("id")[nll_cols].mean(axis=1) if nll_cols else pd.Series(dtype=float)
        cud = frame.set_index("id")["cud"].dropna().to_dict() if "cud" in frame else {}
        orders = list(ORDERS) if cud and nll_cols else ["id"]
        wanted_order = st.query_params.get("order", orders[0])
        order = st.radio("Order", orders, format_func=ORDERS.get, horizontal=True, key="queue_order",
                         index=orders.index(wanted_order) if wanted_order in orders else 0,
                         help="most surprising: the largest gap between the out-of-fold CUD rank and the realised "
                              "hardness rank (−mean NLL after unlearning) first")
        state.keep_in_url(order=order)
        todo = queue(known, order, cud, (-realised).to_dict())
        at = min(st.session_state.get("queue_pos", 0), len(todo) - 1)
        sid = todo[at]
        done_any = {r["sample_id"] for r in rows} & set(todo)
        done_mine = {r["sample_id"] for r in rows if author and r["author"] == author.strip()} & set(todo)
        shown = done_mine if author else done_any
        st.progress(len(shown) / len(todo), text=f"{len(shown)} of {len(todo)} annotated"
                    + (f" by {plain(author.strip())} ({len(done_any)} by anyone)" if author else ""))
        r = frame.set_index("id").loc[sid]
        st.markdown(f"**{plain(sid)}** · {at + 1} of {len(todo)} · {ORDERS[order]}  \n**Q:** {plain(r['question'])}"
                    f"  \n**A:** {plain(r['answer'])}")
        facts = st.columns(4)
        if cud:
            facts[0].metric("CUD (out-of-fold)", f"{cud.get(sid, float('nan')):.3f}")
            facts[1].metric("bucket", str(r.get("bucket") or "–"))
            facts[2].metric("label (realised)", str(r.get("label") or "unlabelled"))
        if nll_cols:
            facts[3].metric("NLL after unlearning", f"{realised[sid]:.2f}", help="mean over the methods that voted")
            curves = results.curves(str(ws.root), runs["calibrate"]["id"], runs["calibrate"]["updated"])
            spark = pd.DataFrame([{"method": m, "step": step, "answer NLL": e[sid]} for m, c in curves.items()
                                  for step, e in zip(c["steps"], c["curve"]) if sid in e])
            if not spark.empty:
                present.chart(alt.Chart(spark).mark_line(point=True).encode(
                    x=alt.X("step:Q", axis=alt.Axis(tickMinStep=1, format="d")), y="answer NLL:Q",
                    color=alt.Color("method:N", title=None)).properties(height=150), width="stretch")
        mine = [x for x in rows if x["sample_id"] == sid]
        if mine:
            st.caption("Already: " + "; ".join(f"{plain(x['label'])} ({plain(x['author'] or 'no author')})"
                                               for x in mine))
        if st.session_state.pop("_clear_note", False):
            st.session_state["queue_note"] = ""
        note = st.text_input("Note (optional, saved with the label)", key="queue_note")
        cols = st.columns(len(LABELS) + 2)
        picked = None
        for j, lab in enumerate(LABELS):
            if cols[j].button(f"{lab} · {j + 1}", key=f"queue_label_{j}", shortcut=str(j + 1)):
                picked = lab
        back = cols[-2].button("← previous · p", key="queue_prev", shortcut="p", disabled=at == 0)
        skip = cols[-1].button("next · n →", key="queue_next", shortcut="n", disabled=at == len(todo) - 1)
        st.caption("Keys: 1–5 save that label (with the note) and go to the next sample; n / p move without saving.")
        if picked or back or skip:
            if picked:
                ws.add_annotation(model_name, sel["data"], sid, picked, note.strip(), author.strip())
                st.session_state["_clear_note"] = True
                st.session_state["queue_saved"] = f"Saved: {sid} — {picked}"
            st.session_state["queue_pos"] = max(0, min(len(todo) - 1, at + (-1 if back else 1)))
            st.rerun()
        if "queue_saved" in st.session_state:
            st.success(plain(st.session_state.pop("queue_saved")))

with add_tab, st.form("add", clear_on_submit=True):
    c1, c2 = st.columns([3, 2])
    wanted = st.session_state.get("last_saved") or st.query_params.get("sample")
    if known:
        sample_id = c1.selectbox("Sample", known, index=known.index(wanted) if wanted in known else 0,
                                 format_func=lambda i: f"{i} — {questions.get(i, '')[:80]}")
    else:
        sample_id = c1.text_input("Sample id", value=wanted or "",
                                  help="no scored samples yet: type the id of the sample you mean")
    label = c2.selectbox("Label", LABELS)
    note = st.text_area("Note", placeholder="what is surprising about it?")
    if st.form_submit_button("Save annotation", type="primary"):
        if not str(sample_id).strip():
            st.error("Choose or type a sample id.")
        else:
            ws.add_annotation(model_name, sel["data"], str(sample_id).strip(), label, note.strip(), author.strip())
            st.session_state["last_saved"] = str(sample_id).strip()  # the form stays on it (not the URL's)
            st.success(f"Saved: {plain(sample_id)} — {label}")

pairs = agreement(rows)
if pairs:
    st.subheader("Agreement between annotators")
    st.dataframe(pd.DataFrame(pairs), hide_index=True)
    st.caption("Cohen's κ over the samples both authors labelled (each author's latest label there): 1 = the same "
               "labels throughout, 0 = what chance gives with their label frequencies.")

rows = ws.annotations(model=model_name, dataset=sel["data"])  # with what was just saved
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
