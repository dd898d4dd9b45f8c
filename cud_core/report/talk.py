"""A talk pack: the key figures of one calibration as an offline HTML slideshow (one file, figures inline)
and as separate SVG and PNG files, each figure with its title and the run and settings in its caption.

Slides: the question and the verdict; the top and bottom of the ranking; the CUD-hardest and CUD-easiest
circuits beside the hard and easy anchors; forgetting curves of the CUD-easy and CUD-hard samples per
method; the validation forest; the unlearning regimes (efficacy vs held-out utility). A calibration
without labels (no method reached an operating point) gets the title and the regimes alone; a Demo's
figures say "DEMO (not evidence)".

`python -m cud_core talk-pack --workspace WS [--run RUN] [--out DIR]` writes DIR/index.html and
DIR/figures/; the Validation page offers the slideshow as a download.
"""
from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from cud_core.engine.circuits import from_vector, to_json
from cud_core.pipeline.circuit_views import anchor_scores, picture
from cud_core.pipeline.outcomes import first_seed_curves
from cud_core.pipeline.presets import DEMO_MARK, is_demo, preset_of
from cud_core.report import charts
from cud_core.report import validation as report
from cud_core.report.circuit_figure import circuit_svg, settings_caption, svg_to_png
from cud_core.store.atomic import atomic_write_bytes, atomic_write_text
from cud_core.store.score_files import graph_of, load_circuits, load_sample_scores, sample_index
from cud_core.store.workspace import Workspace

TOP = 5  # rows at each end of the ranking


@dataclass
class Slide:
    title: str
    caption: str = ""
    svg: list[tuple[str, str]] = field(default_factory=list)  # (file stem, SVG) side by side
    table: list[dict] | None = None
    text: str = ""


def _context(cal: dict) -> str:
    made = time.strftime("%Y-%m-%d", time.localtime(cal["created"]))
    return f"{cal['model']} · {cal['dataset']} · calibration {cal['id']} ({preset_of(cal)} settings, {made})"


def _mean_nll_after(realised: dict) -> float:
    values = [d["nll_after"] for d in realised.values()]
    return sum(values) / len(values) if values else math.nan


def ranking_rows(ws: Workspace, cal: dict, top: int = TOP) -> list[dict]:
    """The `top` highest and lowest out-of-fold CUD samples: id, CUD, bucket, label, realised NLL, question."""
    samples = {s.id: s for s in ws.load_samples(cal["id"])}
    results = ws.load_results(cal["id"])
    cud = {i: r.get("cud_oof", r["cud"]) for i, r in results.items()}  # in-sample only for runs that predate it
    ranked = sorted(cud, key=lambda i: -cud[i])
    rank = {i: k + 1 for k, i in enumerate(ranked)}
    picked = ranked[:top] + ranked[-top:] if len(ranked) > 2 * top else ranked
    return [{"rank": rank[i], "id": i, "CUD (out-of-fold)": round(cud[i], 3), "bucket": results[i]["bucket"],
             "label": results[i].get("label") or "",
             "mean NLL after": round(_mean_nll_after(results[i]["realised"]), 2),
             "question": samples[i].question, "answer": samples[i].answer} for i in picked]


def bucket_curves(ws: Workspace, cal: dict):
    """Mean answer NLL per step of each CUD bucket, one panel per method (each method's first seed)."""
    import altair as alt
    import pandas as pd

    buckets = {i: r["bucket"] for i, r in ws.load_results(cal["id"]).items()}
    rows = []
    for method, c in first_seed_curves(ws, cal["id"]).items():
        for step, nll in zip(c["steps"], c["curve"]):
            for sid, v in nll.items():
                rows.append({"method": method, "step": step, "bucket": buckets.get(sid, "all"), "nll": v})
    if not rows:
        return None
    frame = pd.DataFrame(rows).groupby(["method", "step", "bucket"], as_index=False)["nll"].mean()
    domain = [b for b in ("easy", "medium", "hard") if b in set(frame["bucket"])]
    colour = alt.Color("bucket:N", sort=domain,
                       scale=alt.Scale(domain=domain, range=[charts.GROUP_COLOURS[b] for b in domain]))
    return alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("step:Q", axis=alt.Axis(tickMinStep=1, format="d")), y=alt.Y("nll:Q", title="mean answer NLL"),
        color=colour).properties(width=260, height=200).facet(facet=alt.Facet("method:N"), columns=3)


def circuit_slides(ws: Workspace, cal: dict, ranking: list[dict]) -> list[Slide]:
    """The CUD-hardest and CUD-easiest samples' circuits, each beside its anchor (when the calibration has
    consensus anchors and the scoring run its edge scores)."""
    score = ws.get_run(ws.load_artifact(cal["id"], "score_run") or "")
    if score is None or not ranking:
        return []
    graph = graph_of(ws, score["id"])
    index = sample_index(ws, score["id"])
    n_edges = int(score["config"].get("n_edges", 75))
    caption = settings_caption(score, n_edges, cal)
    stored = {} if ranking[0]["id"] in index else load_circuits(ws, score["id"], graph.n_edges)
    if ranking[0]["id"] not in index and ranking[0]["id"] not in stored:
        return [Slide("Circuits", text="This calibration's scoring run has neither edge scores nor circuits stored: "
                                       "no circuit figures.")]
    if stored:  # a bundle packed without --with-scores keeps the binary circuits: drawn with equal widths
        caption += " · edge scores not in this bundle: equal edge widths"
    anchors = anchor_scores(ws, cal["id"], graph) if ws.tensor_path(cal["id"], "anchors").is_file() else None
    slides = []
    for side, row in (("hard", ranking[0]), ("easy", ranking[-1])):
        most = {"hard": "hardest", "easy": "easiest"}[side]
        if stored:
            circuit_json = to_json(from_vector(stored[row["id"]], graph), graph)
        else:
            circuit_json = picture(load_sample_scores(ws, score["id"], row["id"], graph, index), graph, n_edges).json
        figures = [(f"circuit-cud-{most}-{row['id']}", circuit_svg(
            circuit_json, title=f"{row['id']}: {row['question']} (CUD {row['CUD (out-of-fold)']:.2f}, rank "
                              f"{row['rank']})", caption=caption))]
        if anchors is not None:
            a = anchors[side]
            figures.append((f"anchor-{side}", circuit_svg(
                picture(a["scores"], graph, n_edges).json, caption=caption,
                title=f"{side.capitalize()} anchor: mean edge scores of {len(a['members'])} samples labelled {side}")))
        slides.append(Slide(f"The CUD-{most} sample" + (f" and the {side} anchor" if anchors else ""), caption,
                            figures))
    return slides


def slides(ws: Workspace, cal: dict) -> list[Slide]:
    r = ws.load_artifact(cal["id"], "validation_report") or {}
    demo, context = is_demo(cal), _context(cal)
    mark = f"{DEMO_MARK}: " if demo else ""
    verdict = r.get("verdict", "")
    if not r.get("regimes") and not report.regimes_only(r):
        verdict += (" These unlearning runs predate the operating-point protocol: every method voted at its last "
                    "step, whether it forgot or broke the model.")
    out = [Slide(f"{mark}Which forget samples will be hard to unlearn?", context, text=verdict)]
    if report.regimes_only(r):
        out.append(Slide("No labels: no unlearning method reached a valid operating point", context,
                         text=report.regimes_note(r)))
    else:
        ranking = ranking_rows(ws, cal)
        out.append(Slide(f"{mark}The ranking: highest and lowest out-of-fold CUD", context, table=ranking))
        out += circuit_slides(ws, cal, ranking)
        curves = bucket_curves(ws, cal)
        if curves is not None:
            out.append(Slide(f"{mark}Forgetting by CUD bucket", context, [("forgetting-by-bucket", charts.to_svg(
                charts.titled(curves, "Mean answer NLL per step, CUD-easy vs CUD-hard samples", context, demo)))]))
        if r.get("predictors"):
            out.append(Slide(f"{mark}Validation (out-of-fold, 95% CIs)", context, [("validation-forest", charts.to_svg(
                charts.titled(charts.forest(r, "nll_after"), "Spearman ρ with hardness (NLL after unlearning)",
                              context, demo)))], text=verdict))
    if r.get("regimes"):
        out.append(Slide(f"{mark}Unlearning regimes: did each method forget, and at what cost?", context,
                         [("unlearning-regimes", charts.to_svg(charts.titled(
                             charts.regimes(r["regimes"], r["protocol"]), "Efficacy vs held-out utility",
                             f"{context} · {report.bound_text(r['protocol'])}", demo)))]))
    return out


_STYLE = """
body{margin:0;font-family:sans-serif;background:#fff;color:#1a1a1a}
section{display:none;box-sizing:border-box;width:100vw;height:100vh;padding:3vh 4vw;overflow:auto}
section.on{display:flex;flex-direction:column}
h1{font-size:2.6vw;margin:0 0 1vh}
p.caption{font-size:1.1vw;color:#555;margin:0 0 2vh}
p.text{font-size:1.6vw;max-width:80vw}
.figs{display:flex;gap:2vw;flex:1;min-height:0}
.figs>div{flex:1;min-width:0;min-height:0}
.figs svg{width:100%;height:100%}
table{border-collapse:collapse;font-size:1.1vw}
td,th{border-bottom:1px solid #ddd;padding:.4vh .6vw;text-align:left;vertical-align:top}
td:nth-child(2){white-space:nowrap}
footer{position:fixed;bottom:1vh;right:2vw;font-size:1vw;color:#888}
@media print{section{display:block;page-break-after:always;height:auto}.figs svg{height:auto}footer{display:none}}
"""
_SCRIPT = """
var s=document.querySelectorAll('section'),i=0;
function go(k){s[i].classList.remove('on');i=Math.max(0,Math.min(s.length-1,k));s[i].classList.add('on');
document.getElementById('n').textContent=(i+1)+' / '+s.length;}
document.addEventListener('keydown',function(e){
if(['ArrowRight','PageDown',' '].indexOf(e.key)>=0){go(i+1);e.preventDefault();}
if(['ArrowLeft','PageUp'].indexOf(e.key)>=0){go(i-1);e.preventDefault();}
if(e.key==='Home')go(0);if(e.key==='End')go(s.length-1);});
document.addEventListener('click',function(e){go(e.clientX>window.innerWidth/3?i+1:i-1);});
go((parseInt(location.hash.slice(1),10)||1)-1);
"""


def _table(rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def slideshow_html(deck: list[Slide], title: str) -> str:
    """One offline HTML file: a slide per section, ← / → (or a click) to move, `#N` in the address opens
    slide N, printable one slide a page.
    No network: figures are inline SVG; every text is escaped."""
    parts = []
    for k, s in enumerate(deck):
        body = f"<h1>{html.escape(s.title)}</h1>"
        if s.caption:
            body += f"<p class='caption'>{html.escape(s.caption)}</p>"
        if s.text:
            body += f"<p class='text'>{html.escape(s.text)}</p>"
        if s.table:
            body += _table(s.table)
        if s.svg:
            body += "<div class='figs'>" + "".join(f"<div>{svg}</div>" for _, svg in s.svg) + "</div>"
        parts.append(f"<section id='slide-{k + 1}'>{body}</section>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}<footer id='n'></footer>"
            f"<script>{_SCRIPT}</script></body></html>")


def write(ws: Workspace, cal: dict, out: Path, png: bool = True) -> list[Path]:
    """Write `out`/index.html and every figure as `out`/figures/NN-name.svg (and .png); the paths written."""
    deck = slides(ws, cal)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for old in list(figures.glob("[0-9][0-9]-*.svg")) + list(figures.glob("[0-9][0-9]-*.png")):
        old.unlink()  # an earlier pack's figures: numbering may differ
    written = []
    number = 0
    for s in deck:
        for stem, svg in s.svg:
            number += 1
            path = figures / f"{number:02d}-{stem}.svg"
            atomic_write_text(path, svg)
            written.append(path)
            if png:
                atomic_write_bytes(path.with_suffix(".png"), svg_to_png(svg))
                written.append(path.with_suffix(".png"))
    index = out / "index.html"
    atomic_write_text(index, slideshow_html(deck, f"CUD · {cal['id']}"))
    return [index, *written]
