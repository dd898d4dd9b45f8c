"""Depth: where circuits live. Layer histograms of nodes and edges, edge lengths, easy vs hard side
by side, and depth centre of mass against CUD (the paper's finding: hard samples use longer, deeper
paths close to the final layers)."""
import altair as alt
import pandas as pd
import streamlit as st

from cud_core.store import Workspace
from pages.ui import charts, results

sel, ws, runs = results.page("Depth profiles", "No circuits for this model and dataset yet: score the forget set on "
                                                   "the home page first.")


@st.cache_data(show_spinner=False)
def profiles(root: str, run_id: str, updated: float) -> pd.DataFrame:
    """Long table: sample, kind (nodes / edges / edge length), position (layer or length), count."""
    rows = []
    for sid, r in Workspace(root).load_results(run_id).items():
        c = r.get("circuit", {})
        for kind, key in (("nodes per layer", "nodes_per_layer"), ("edges into layer", "edges_per_layer"),
                          ("edge length", "edge_length_hist")):
            for pos, n in enumerate(c.get(key, [])):
                rows.append({"id": sid, "kind": kind, "position": pos, "count": n})
    return pd.DataFrame(rows)


frame = results.sample_frame(ws, runs)
long = profiles(str(ws.root), runs["score"]["id"], runs["score"]["updated"])
group_options = ["all samples"]
if "bucket" in frame:
    group_options = ["CUD bucket", "ground-truth label (realised difficulty)", "all samples"]
grouping = st.radio("Compare", group_options, horizontal=True)
if grouping == "CUD bucket":
    groups = frame.set_index("id")["bucket"]
elif grouping.startswith("ground-truth"):
    groups = frame.set_index("id")["label"].replace("", None).dropna()
    st.caption("Labels come from agreement of the unlearning methods (docs/method.md, labels); unlabelled samples "
               "are left out.")
else:
    groups = pd.Series("all", index=frame["id"])
long = long[long["id"].isin(groups.index)].assign(group=lambda d: d["id"].map(groups))
if long.empty:
    st.info("No samples in these groups yet.")
    st.stop()
means = long.groupby(["kind", "group", "position"], as_index=False)["count"].mean()

for kind, title, x_title in (("nodes per layer", "Circuit nodes per layer", "layer"),
                             ("edges into layer", "Circuit edges by the layer they feed (last = logits)", "layer"),
                             ("edge length", "Edge length (child layer − parent layer)", "length in layers")):
    data = means[means["kind"] == kind]
    order = charts.groups(data["group"])
    chart = alt.Chart(data, title=title).mark_bar().encode(
        x=alt.X("position:O", title=x_title), xOffset=alt.XOffset("group:N", sort=order),
        y=alt.Y("count:Q", title="mean per sample"), color=charts.group_color("group", order),
        tooltip=["group", "position", alt.Tooltip("count:Q", format=".2f")]).properties(height=260)
    st.altair_chart(chart, width="stretch")
    charts.downloads(chart, data, kind.replace(" ", "_"))

if "cud" in frame:
    st.subheader("Depth centre of mass vs CUD")
    data = frame[["id", "cud", "depth_com", "bucket", "label", "question"]].dropna(subset=["cud", "depth_com"])
    scatter = alt.Chart(data).mark_circle(size=70, opacity=0.8).encode(
        x=alt.X("depth_com:Q", title="depth centre of mass (0 = first layer, 1 = last)"),
        y=alt.Y("cud:Q", title="CUD", scale=alt.Scale(domain=[0, 1])),
        color=charts.group_color("bucket", data["bucket"]),
        tooltip=["id", "question", alt.Tooltip("cud:Q", format=".3f"), alt.Tooltip("depth_com:Q", format=".3f"),
                 "label"]).properties(height=340)
    st.altair_chart(scatter + scatter.transform_regression("depth_com", "cud").mark_line(color="gray"),
                    width="stretch")
    from scipy.stats import spearmanr
    if len(data) > 2:
        rho = spearmanr(data["depth_com"], data["cud"])[0]
        st.caption(f"Spearman(depth centre of mass, CUD) = {rho:.3f} over {len(data)} samples.")
    charts.downloads(scatter, data, "depth_vs_cud")
