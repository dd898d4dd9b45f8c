"""Depth: where circuits live. Layer histograms of nodes and edges, edge lengths, easy vs hard side
by side, depth centre of mass against CUD, and the paper's depth claim (hard samples use longer, deeper
paths close to the final layers) next to what the shown calibration measured."""
import altair as alt
import pandas as pd
import streamlit as st

from cud_core.difficulty.circuit_diff import NODE_TYPES
from cud_core.pipeline.circuit_views import (
    change_by_layer,
    change_summary,
    depth_cud_spearman,
    hardness_after,
    mass_by_layer,
)
from cud_core.report.validation import depth_rows, depth_sentence
from cud_core.store.workspace import Workspace
from views.ui import charts, present, results
from views.ui.text import md

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
figure = results.figure_context(sel, runs)
depth_test = (ws.load_artifact(runs["calibrate"]["id"], "validation_report") or {}).get("depth") \
    if runs.get("calibrate") else None
claim = present.controls("The paper's depth claim, tested here")
if depth_test:
    claim.info("**The paper:** hard samples use deeper circuits, closer to the final layers. **This calibration** "
               f"(out-of-sample hardness, 95% CIs): {md(depth_sentence(depth_test))}")
    claim.dataframe(pd.DataFrame(depth_rows({"depth": depth_test})), hide_index=True)
else:
    claim.caption("The paper reports that hard samples use deeper circuits; a finished calibration measures whether "
                  "that holds here (its depth test appears above the charts).")
long = profiles(str(ws.root), runs["score"]["id"], runs["score"]["updated"])
group_options = ["all samples"]
if "bucket" in frame:
    group_options = ["CUD bucket", "ground-truth label (realised difficulty)", "all samples"]
grouping = present.controls("Groups").radio("Compare", group_options, horizontal=True)
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
    present.chart(chart, width="stretch")
    charts.downloads(chart, data, kind.replace(" ", "_"), f"{title}, by {grouping}", figure)

if "cud" in frame:
    st.subheader("Depth centre of mass vs CUD")
    data = frame[["id", "cud", "depth_com", "bucket", "label", "question"]].dropna(subset=["cud", "depth_com"])
    scatter = alt.Chart(data).mark_circle(size=70, opacity=0.8).encode(
        x=alt.X("depth_com:Q", title="depth centre of mass (0 = first layer, 1 = last)"),
        y=alt.Y("cud:Q", title="CUD", scale=alt.Scale(domain=[0, 1])),
        color=charts.group_color("bucket", data["bucket"]),
        tooltip=["id", "question", alt.Tooltip("cud:Q", format=".3f"), alt.Tooltip("depth_com:Q", format=".3f"),
                 "label"]).properties(height=340)
    present.chart(scatter + scatter.transform_regression("depth_com", "cud").mark_line(color="gray"),
                    width="stretch")
    if len(data) > 2:
        rho = depth_cud_spearman(data["depth_com"], data["cud"])
        st.caption(f"Spearman(depth centre of mass, CUD) = {rho:.3f} over {len(data)} samples.")
    charts.downloads(scatter, data, "depth_vs_cud", "Depth centre of mass vs out-of-fold CUD", figure,
                     f"n = {len(data)} samples")

diffs = results.circuit_diffs(ws, sel, runs)
st.subheader("Where unlearning acted")
if not diffs:
    st.caption(f"Appears once an unlearning run re-attributes its unlearned copy: `python -m cud_core calibrate "
               f"--diff-circuits ...` (every method) or `python -m cud_core unlearn --diff-circuits --like "
               f"{runs['score']['id']} ...`.")
    st.stop()
chosen = st.selectbox("Unlearning", list(diffs), key="depth_diff")
d = diffs[chosen]
per = {i: v for i, v in d["per_sample"].items() if i in groups.index}
if not per:
    st.info("No re-attributed sample in these groups.")
    st.stop()
heat_rows, profile_rows = [], []
for group in charts.groups(pd.Series([groups[i] for i in per])):
    members = [i for i in per if groups[i] == group]
    heat_rows += [{"group": f"{group} (n = {len(members)})", **row} for row in change_by_layer(per, members)]
    profile_rows += [{"group": group, **row} for row in mass_by_layer(per, members)]
heat = pd.DataFrame(heat_rows)
top = float(heat["change"].abs().max()) or 1.0
chart = alt.Chart(heat).mark_rect().encode(
    x=alt.X("layer:O", title="layer (last = logits)"), y=alt.Y("node type:N", sort=list(NODE_TYPES)),
    color=alt.Color("change:Q", scale=alt.Scale(scheme="redblue", domain=[-top, top]),
                    title="Δ attribution mass"),
    column=alt.Column("group:N", title=None), tooltip=["group", "layer", "node type",
                                                       alt.Tooltip("change:Q", format=".4f")]
).properties(width=300, height=110)
present.chart(chart)
st.caption("Mean over the group's samples of (attribution mass after − before) per layer and node type: Σ |edge "
           "score| over the edges feeding that node type in that layer. Blue = more attribution after unlearning, "
           "red = less.")
profile = alt.Chart(pd.DataFrame(profile_rows)).mark_line(point=True).encode(
    x=alt.X("layer:O", title="layer (last = logits)"), y=alt.Y("mass:Q", title="mean attribution mass"),
    color=charts.group_color("group", charts.groups(pd.Series([r["group"] for r in profile_rows]))),
    strokeDash=alt.StrokeDash("when:N", sort=["before", "after"], title="unlearning"),
    tooltip=["group", "when", "layer", alt.Tooltip("mass:Q", format=".4f")]).properties(height=280)
present.chart(profile, width="stretch")
if chosen.startswith("calibration: "):  # the calibration's runs of that method
    hard = hardness_after(ws, runs["calibrate"]["id"], chosen.split(": ", 1)[1])
else:  # an unlearning run: its own outcome
    hard = hardness_after(ws, chosen.rsplit(" ", 1)[-1])
agg = change_summary(per, {i: groups[i] for i in per}, hard)
rows = [{"group": g, "n": v["n"], **{k: f"{s['mean']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]"
                                       for k, s in v.items() if k != "n"}} for g, v in agg["groups"]["group"].items()]
st.dataframe(pd.DataFrame(rows), hide_index=True)
st.caption(f"Circuit change at {d['n_edges']} edges, mean per group with 95% bootstrap CIs: Jaccard of the two "
           "circuits, the share of the original circuit's attribution still flowing through its edges, edges lost "
           "and gained, change of depth centre of mass and longest path.")
if agg["with_hardness"]:
    st.caption("Spearman with realised hardness (−NLL after this unlearning): " + "; ".join(
        f"{k} {v['spearman']:.2f} [{v['spearman_ci'][0]:.2f}, {v['spearman_ci'][1]:.2f}]"
        for k, v in agg["with_hardness"].items()) + f" (n = {next(iter(agg['with_hardness'].values()))['n']}).")
