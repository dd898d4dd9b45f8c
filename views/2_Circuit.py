"""Circuit: the selected sample's circuit as an interactive graph (SVG/PNG for slides), with the anchors."""
import altair as alt
import pandas as pd
import streamlit as st

from cud_core.engine.circuits import FAITHFULNESS_SIZES
from cud_core.engine.graph import Graph
from cud_core.pipeline.circuit_views import anchor_scores, mean_scores, picture
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.faithfulness import curve_artifact, sample_faithfulness, sample_faithfulness_curve
from cud_core.report.circuit_figure import circuit_svg, settings_caption, svg_to_png
from cud_core.store.score_files import graph_of, load_sample_scores, sample_index
from cud_core.store.workspace import Workspace
from views.ui import present, results, state
from views.ui.circuit_view import circuit_html, faithfulness_note, legend_html, size_note
from views.ui.text import md

sel, ws, runs = results.page("Circuit", "No circuits for this model and dataset yet: score the forget set on the "
                                        "home page first.")
score_run = runs["score"]


@st.cache_data(show_spinner=False)
def index_of(root: str, run_id: str, updated: float) -> dict:
    return sample_index(Workspace(root), run_id)


def run_graph(root: str, run_id: str) -> Graph:
    try:
        return graph_of(Workspace(root), run_id)
    except ValueError as exc:
        state.stop(str(exc))


@st.cache_data(show_spinner=False, max_entries=64)
def scores_of(root: str, run_id: str, sample_id: str, updated: float):
    return load_sample_scores(Workspace(root), run_id, sample_id, run_graph(root, run_id),
                              index_of(root, run_id, updated))


@st.cache_data(show_spinner=False)
def anchors_of(root: str, run_id: str, _graph: Graph) -> dict:
    return anchor_scores(Workspace(root), run_id, _graph)


@st.cache_data(show_spinner=False, max_entries=4)
def mean_scores_of(root: str, run_id: str, ids: tuple[str, ...], updated: float):
    """Mean edge scores over `ids` in a scoring run (an anchor's circuit after unlearning)."""
    return mean_scores(Workspace(root), run_id, ids, run_graph(root, run_id), index_of(root, run_id, updated))


@st.cache_data(show_spinner=False, max_entries=32)
def png_of(svg: str) -> bytes:
    return svg_to_png(svg)


frame = results.sample_frame(ws, runs)
index = index_of(str(ws.root), score_run["id"], score_run["updated"])
frame = frame[frame["id"].isin(index)]
if frame.empty:
    if ws.load_artifact(score_run["id"], "unpacked"):
        st.info("This scoring run was unpacked from a bundle without its edge scores: pack the original with "
                "`python -m cud_core pack --with-scores` and unpack it here to see circuits (rankings, depth and "
                "validation need no edge scores).")
    else:
        st.info("The scoring run has no stored edge scores yet; they appear batch by batch while it runs.")
    st.stop()
if "cud" in frame:
    frame = frame.sort_values("cud", ascending=False)
ids = frame["id"].tolist()
labels = {r.id: f"{r.id} — {r.question[:70]}" + (f"  (CUD {r.cud:.2f}, {r.bucket})" if "cud" in frame else "")
          for r in frame.itertuples()}
wanted = st.query_params.get("sample")
graph = run_graph(str(ws.root), score_run["id"])

controls = present.controls("Sample, view and settings")
c1, c2, c3 = controls.columns([4, 2, 2])
sample_id = c1.selectbox("Sample", ids, index=ids.index(wanted) if wanted in ids else 0, format_func=labels.get)
has_anchors = runs["calibrate"] is not None and ws.tensor_path(runs["calibrate"]["id"], "anchors").is_file()
if has_anchors:
    view = c2.radio("Show", ["sample", "easy anchor", "hard anchor"], horizontal=True)
else:
    view = "sample"
    c2.caption("The easy and hard anchor circuits can be shown here after a calibration (home page)."
               if runs["calibrate"] is None else "This calibration has no consensus anchors (its labels lack "
               "an easy or a hard sample on which enough methods agree); its CUD uses each method's own anchors.")
most = max(10, min(300, graph.n_edges))
n_edges = c3.slider("Keep up to n edges (greedy from the logits, then pruned to input → logits paths)", 10, most,
                    min(most, int(score_run["config"].get("n_edges", 75))), 5)
state.keep_in_url(sample=sample_id)
diffs = results.circuit_diffs(ws, sel, runs)
mode, after_run = "original", None
if diffs:
    d1, d2 = controls.columns([3, 4])
    mode = d1.radio("Circuit", ["original", "after unlearning", "diff"], horizontal=True, key="circuit_mode",
                    help="the circuit in the original model, in the unlearned copy (same attribution settings), "
                         "or both in one picture: kept edges grey, lost red dashed, gained blue")
    if mode != "original":
        chosen = d2.selectbox("Unlearning", list(diffs), key="diff_run")
        after_run = ws.get_run(diffs[chosen]["after_run"])
elif not present.on():
    st.caption("Before/after circuits appear here once an unlearning run re-attributes its unlearned copy "
               f"(`python -m cud_core unlearn --diff-circuits --like {score_run['id']} ...`).")
t1, t2 = controls.columns([6, 2])
overlay_on = has_anchors and view == "sample" and mode != "diff" and t1.toggle(
    "Overlay the easy/hard anchors (edge colour = shared with the easy anchor, the hard anchor, both, or own)")
font_size = t2.slider("Label size", 10, 40, 24 if present.on() else 18)

row = frame.set_index("id").loc[sample_id]
anchors = anchors_of(str(ws.root), runs["calibrate"]["id"], graph) if view != "sample" or overlay_on else None
if view == "sample":
    st.markdown(f"**Q:** {md(row['question'])}  \n**A:** {md(row['answer'])}")
else:  # the anchor's own header: what it is made of, not the sample picked above
    side = "easy" if view == "easy anchor" else "hard"
    members = anchors[side]["members"]
    counts = frame["label"].value_counts().to_dict() if "label" in frame else {}
    st.markdown(f"**{side.capitalize()} anchor** of calibration {md(runs['calibrate']['id'])}: the mean edge scores "
                f"of the {len(members)} samples labelled {side} (labels: {counts.get('easy', 0)} easy, "
                f"{counts.get('hard', 0)} hard of {len(frame)}), cut like a sample's circuit.")
    st.caption("Members: " + md(", ".join(members)))
if view == "sample":
    scores = scores_of(str(ws.root), score_run["id"], sample_id, score_run["updated"])
else:
    anchor = anchors["easy" if view == "easy anchor" else "hard"]
    scores = anchor["scores"]
after = None
if after_run is not None:
    if view == "sample":
        after = scores_of(str(ws.root), after_run["id"], sample_id, after_run["updated"])
    else:
        after = mean_scores_of(str(ws.root), after_run["id"], tuple(anchor["members"]), after_run["updated"])
if mode == "after unlearning":
    scores = after
# in a diff: the union of both circuits, edge width = |Δscore|
shown = picture(scores, graph, n_edges, after=after if mode == "diff" else None,
                anchors=anchors if overlay_on else None)
circuit, picked, stats, diff_map, changed, overlay = (shown.circuit, shown.picked, shown.stats, shown.diff,
                                                      shown.changed, shown.overlay)
circuit_json = shown.json
graph_html = circuit_html(circuit_json, overlay, font_size=font_size, diff=diff_map, fill=present.on())
if view == "sample":
    figure_title = f"{sample_id}: {row['question']}"
    if "cud" in frame:
        figure_title += f" (out-of-fold CUD {row['cud']:.2f}, {row['bucket']})"
else:
    figure_title = f"{view.capitalize()} of calibration {runs['calibrate']['id']} ({len(anchor['members'])} samples)"
if mode != "original":
    figure_title += f", {mode} ({after_run['id']})"
if overlay_on:
    figure_title += ", edges coloured by anchor membership"
graph_svg = circuit_svg(circuit_json, overlay, font_size=font_size, diff=diff_map, title=figure_title,
                        caption=settings_caption(score_run, n_edges, runs["calibrate"]))
if present.on():  # the graph takes the window; statistics and downloads fold underneath
    st.markdown(present.GRAPH_CSS, unsafe_allow_html=True)
    graph_col, stats_col = st.container(), st.expander("Statistics and downloads")
else:
    graph_col, stats_col = st.columns([3, 1])
with graph_col:
    st.iframe(graph_html, height=640)
    if changed is None:
        st.caption(size_note(int(circuit.sum()), picked, n_edges))
    else:
        st.caption(f"Both circuits cut at up to {n_edges} edges: {changed['kept']} kept, {changed['lost']} lost, "
                   f"{changed['gained']} gained (Jaccard {changed['jaccard']:.2f}); "
                   f"{changed['retained_flow']:.0%} of the original circuit's attribution still flows through "
                   "its edges after unlearning.")
    st.caption(legend_html(overlay, diff_map), unsafe_allow_html=True)
    st.caption("Left to right by layer · hover for names and scores · drag to pan, scroll to zoom.")
with stats_col:
    flat = {k: v for k, v in stats.items() if not isinstance(v, (list, dict))}
    flat.update({f"qkv {k}": v for k, v in stats["qkv_split"].items()})
    if "cud" in frame and view == "sample":
        flat = {"CUD": row["cud"], "bucket": row["bucket"], **flat}
    elif view != "sample":
        flat = {"anchor": view, "members": len(anchors["easy" if view == "easy anchor" else "hard"]["members"]),
                **flat}
    st.dataframe(pd.DataFrame({"value": {k: (f"{v:.3f}" if isinstance(v, float) else str(v))
                                         for k, v in flat.items()}}), height=420)
    measured = f"faithfulness {score_run['id']} {sample_id} {n_edges}"
    if view == "sample" and mode == "original" and st.button(
            "Measure faithfulness", help="ablate every edge outside the circuit (zero baseline) and report how much "
                                         "of the clean metric it keeps"):
        with st.spinner("Loading the model and patching..."):
            lm = state.model(sel["model"], sel["dtype"], sel["device"])
            st.session_state[measured] = sample_faithfulness(lm, ws, score_run["id"], sample_id, circuit)
    if view == "sample" and mode == "original" and measured in st.session_state:
        f = st.session_state[measured]
        st.metric("faithfulness", f"{f['faithfulness']:.3f}")
        st.caption(faithfulness_note(f, "zero"))
    st.download_button("Circuit (JSON)", circuit_json, file_name=f"circuit_{sample_id}.json",
                       mime="application/json")
    st.download_button("Graph (HTML, offline)", graph_html,
                       file_name=f"circuit_{sample_id}.html", mime="text/html")
    st.download_button("Graph (SVG)", graph_svg, file_name=f"circuit_{sample_id}.svg", mime="image/svg+xml")
    st.download_button("Graph (PNG)", png_of(graph_svg), file_name=f"circuit_{sample_id}.png",
                       mime="image/png")


if changed is not None:
    st.markdown("**Top movers** (edges of either circuit with the largest change of score)")
    st.dataframe(pd.DataFrame(changed["top_movers"]).rename(columns={"in": "in circuit"}), hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%+.4f")
                                for c in ("before", "after", "delta")})


def faithfulness_by_size(curve: dict) -> None:
    """The curve (log-scale n) with the 0.5 and 0.8 lines, and where each ablation first reaches them."""
    rows = [{"edges": n, "ablation": b, "faithfulness": v} for b in ("zero", "mean") if b in curve
            for n, v in zip(curve["sizes"], curve[b])]
    lines = alt.Chart(pd.DataFrame(rows)).mark_line(point=True).encode(
        x=alt.X("edges:Q", scale=alt.Scale(type="log"), title="circuit size n (edges kept, log scale)"),
        y=alt.Y("faithfulness:Q", title="faithfulness"), color=alt.Color("ablation:N", title="ablation"),
        tooltip=["ablation", "edges", alt.Tooltip("faithfulness:Q", format=".3f")])
    rules = alt.Chart(pd.DataFrame({"y": [0.5, 0.8]})).mark_rule(color="grey", strokeDash=[4, 4]).encode(y="y:Q")
    present.chart((rules + lines).properties(height=300), width="stretch")
    reach = curve["reaches"]
    st.caption(" · ".join(f"{b} ablation reaches 0.5 at n = {reach[b]['0.5'] or 'never'}, 0.8 at n = "
                          f"{reach[b]['0.8'] or 'never'}" for b in reach)
               + f" (n up to {max(curve['sizes'])}). Faithfulness = (metric with only the circuit − metric "
                 "with everything ablated) / (clean − everything ablated); zero ablation sets the missing edges' "
                 "inputs to 0, mean ablation to their mean over the scored forget samples.")


if view == "sample" and mode == "original":
    with st.expander("Faithfulness vs circuit size"):
        title = f"Faithfulness vs circuit size of {sample_id}"
        if st.button(f"Measure at n = {', '.join(map(str, FAITHFULNESS_SIZES))}",  # no user text in labels
                     help="greedy circuits of each size from the selected sample's scores, ablated with zero and "
                          "with mean activations; about 2 × 11 patched passes (a job: progress and Stop at the top)"):
            lm = state.model(sel["model"], sel["dtype"], sel["device"])

            def job(progress, should_stop, lm=lm, sample_id=sample_id, scores=scores, run_id=score_run["id"]):
                ctx = RunContext(lm, ws, sel["data"], run_id=run_id, progress=progress, should_stop=should_stop)
                return sample_faithfulness_curve(ctx, sample_id, scores)
            state.jobs().submit("faithfulness", title, job)
        stored = ws.load_artifact(score_run["id"], curve_artifact(sample_id))  # read back on every visit
        if stored:
            faithfulness_by_size(stored)
        elif any(j.title == title for j in state.jobs().active("faithfulness")):
            st.caption("Measuring in the background: progress and Stop at the top of the page.")
        else:
            st.caption("Not measured yet for this sample.")

with st.expander("Nodes and edges per layer"):
    per_layer = pd.DataFrame([{"layer": i, "count": v, "what": what} for what, values in (
        ("nodes", stats["nodes_per_layer"]), ("edges into layer", stats["edges_per_layer"][:-1]))
        for i, v in enumerate(values)])
    present.chart(alt.Chart(per_layer).mark_bar().encode(
        x=alt.X("layer:O"), xOffset="what:N", y=alt.Y("count:Q"), color=alt.Color("what:N", title=None),
        tooltip=["what", "layer", "count"]).properties(height=260), width="stretch")
