"""Rankings: every forget sample with CUD, bucket, predictors, realised difficulty and annotations."""
import streamlit as st

from views.ui import charts, present, results, state
from views.ui.text import csv_download

sel, ws, runs = results.page("Rankings", "No scored samples for this model and dataset yet. Start *Score* or "
                                         "*Calibrate* on the home page (or `python -m cud_core calibrate`), then "
                                         "come back: this table fills in as results land.")
frame = results.sample_frame(ws, runs)
if frame.empty:
    st.info("Scoring has started; rows appear here batch by batch.")
    st.stop()
has_cud = "cud" in frame.columns
notes = results.annotation_summary(ws, sel)
frame["annotations"] = frame["id"].map(lambda sid: notes.get(sid, ""))

# --- filters
c1, c2, c3 = present.controls("Filters and search").columns([2, 2, 3])
query = c3.text_input("Search question / answer / id", value=st.query_params.get("q", ""))
if has_cud:
    occurring = charts.groups(frame["bucket"])  # only buckets that occur
    buckets = c1.multiselect("Bucket", occurring, default=occurring)
    frame = frame[frame["bucket"].isin(buckets)]
    curve_by_method = results.curves(str(ws.root), runs["calibrate"]["id"], runs["calibrate"]["updated"])
    methods = sorted(curve_by_method)
    wanted = st.query_params.get("method")  # shared with the Unlearning page, which offers more methods
    method = c2.selectbox("Forgetting curve of", methods, index=methods.index(wanted) if wanted in methods else 0)
    if wanted in methods or method != methods[0]:  # a fallback does not overwrite the Unlearning page's choice
        state.keep_in_url(method=method)
    curve = curve_by_method[method]["curve"]
    frame["curve"] = frame["id"].map(lambda sid: [e[sid] for e in curve if sid in e])  # a set ends at its point
else:
    st.info("Circuits are scored; CUD, buckets and realised difficulty appear once a calibration has run.")
if query:
    q = query.lower()
    mask = frame["question"].str.lower().str.contains(q, regex=False) | frame["answer"].str.lower().str.contains(
        q, regex=False) | frame["id"].str.lower().str.contains(q, regex=False)
    frame = frame[mask]
state.keep_in_url(q=query or None)

sort_default = "cud" if has_cud else "depth_com"
frame = frame.sort_values(sort_default, ascending=False) if sort_default in frame else frame
first = ["id", "cud", "bucket", "label", "curve", "question", "answer", "annotations"]
columns = [c for c in first if c in frame.columns] + [c for c in frame.columns if c not in first]
frame = frame[columns].reset_index(drop=True)

config = {
    "cud": st.column_config.ProgressColumn(
        "CUD", min_value=0.0, max_value=1.0, format="%.3f",
        help="0 = like the easy anchor, 1 = like the hard anchor. Out-of-fold: from anchors built without this "
             "sample's fold (see cud_kind); evidence for it is on the Validation page"),
    "cud_in_sample": st.column_config.NumberColumn(
        "CUD in-sample (not evidence)", format="%.3f",
        help="from the anchors of every label, this sample's own included: what scoring a new sample would use; "
             "optimistic for these samples"),
    "curve": st.column_config.LineChartColumn("forgetting curve (answer NLL)", width="small"),
    "question": st.column_config.TextColumn(width="large"),
}
st.markdown(f"**{len(frame)} samples** — click anywhere on a row to open its circuit; click a header to sort.")
event = st.dataframe(frame, column_config=config, hide_index=True, on_select="rerun",
                     selection_mode=["single-row", "single-cell"], key="ranking", height=520)
chosen = event.selection if event and hasattr(event, "selection") else {}
# a click on any cell selects that cell (and with it its row); the checkbox at the left selects the row
rows = list(chosen.get("rows", [])) + [cell[0] for cell in chosen.get("cells", [])]
if rows:
    params = {**st.query_params.to_dict(), "sample": frame.iloc[rows[0]]["id"]}
    st.switch_page("views/2_Circuit.py", query_params=params)

st.download_button("Download this table (CSV)", csv_download(frame.drop(columns=["curve"], errors="ignore")),
                   file_name="cud_rankings.csv", mime="text/csv")
