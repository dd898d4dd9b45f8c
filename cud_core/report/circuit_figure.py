"""A circuit as a static picture (SVG, PNG), drawn left to right by layer with its legend, and, for figures
that leave the app (slides, papers, the talk pack), a title and a caption that carry its context: the
sample or anchor, the run and the settings, and a demo mark when the numbers carry no evidence.

The Circuit page's interactive graph (views/ui/circuit_view.py) uses the same layout and colours."""
from __future__ import annotations

import json
import math
import textwrap
from collections import Counter
from xml.sax.saxutils import escape, quoteattr

from cud_core.pipeline.presets import DEMO_MARK, is_demo, preset_of
from cud_core.pipeline.scoring import ScoreSettings

COLORS = {"input": "#6c757d", "head": "#4c78a8", "mlp": "#f58518", "logits": "#54a24b"}  # borders
FILLS = {"input": "#dee2e6", "head": "#c6dbef", "mlp": "#fdd0a2", "logits": "#c7e9c0"}
NODE_TYPES = {"input": "input (embeddings)", "head": "attention head (aL.hH)", "mlp": "MLP (mL)", "logits": "logits"}
SIGN = {True: "#2ca02c", False: "#d62728"}  # positive: supports the answer; negative: works against it
OVERLAY = {"easy": "#1f77b4", "hard": "#ff7f0e", "both": "#9467bd", "own": "#b0b0b0"}
OVERLAY_MEANING = {"easy": "also in the easy anchor's circuit", "hard": "also in the hard anchor's circuit",
                   "both": "in both anchors' circuits", "own": "in neither"}
DASHED = ' stroke-dasharray="8,5"'
DIFF = {"kept": "#9e9e9e", "lost": "#d62728", "gained": "#1f77b4"}  # lost edges are also dashed
DIFF_MEANING = {"kept": "in both circuits", "lost": "only before unlearning (dashed)",
                "gained": "only after unlearning"}
WIDTH, HEIGHT = 1000, 520  # the layout's extent: about the frame's size, so a fitted view keeps labels readable


def layout(data: dict, width: float = WIDTH, height: float = HEIGHT,
           half_width: dict[str, float] | None = None, gap: float = 16) -> dict[str, tuple[float, float]]:
    """Node name -> (x, y): one column per occupied layer across `width`, each column's nodes spread
    evenly over `height`, so the picture fills a frame of about that shape; a column's lone node at 30%, 50%
    or 70% of the height in turn (the first and last column at 50%). With `half_width` (node name -> half
    its shape's width), neighbouring columns stay at least `gap` apart, so the picture grows wider than
    `width` where many layers would otherwise overlap (e.g. `m29` beside `logits`)."""
    layers = sorted({n["layer"] for n in data["nodes"]})
    columns = [[n["name"] for n in data["nodes"] if n["layer"] == layer] for layer in layers]
    step = width / max(1, len(layers) - 1)
    widest = [max((half_width or {}).get(name, 0.0) for name in names) for names in columns]
    xs = [0.0] if len(layers) > 1 else [width / 2]
    for i in range(1, len(layers)):
        xs.append(xs[-1] + max(step, widest[i - 1] + widest[i] + gap if half_width else 0.0))
    out = {}
    for i, names in enumerate(columns):
        # a lone node steps between three heights, so that edges skipping layers do not run along one line
        lone = 0.5 + 0.2 * ((i % 3) - 1) if len(names) == 1 and 0 < i < len(layers) - 1 else 0.5
        out.update({name: (xs[i], lone * height if len(names) == 1 else (r + 0.5) / len(names) * height)
                    for r, name in enumerate(names)})
    return out


def edge_styles(data: dict, overlay: dict[str, str] | None, diff: dict[str, dict] | None = None):
    """(edge, colour, width, tooltip, dashed) per edge: colour by sign, by anchor membership with
    `overlay`, or by kept/lost/gained with `diff` (edge name -> {"kind", "before", "after"}; the
    edges' scores are then after − before, so width = |Δscore|)."""
    top = max([abs(e.get("score", 1.0)) for e in data["edges"]], default=1.0) or 1.0
    for e in data["edges"]:
        s = e.get("score")
        color, title, dashed = SIGN[(s or 0) >= 0], e["name"] + (f"\nscore {s:+.4g}" if s is not None else ""), False
        if diff is not None:
            d = diff.get(e["name"], {"kind": "kept", "before": 0.0, "after": 0.0})
            color, dashed = DIFF[d["kind"]], d["kind"] == "lost"
            title = f"{e['name']} ({d['kind']})\nbefore {d['before']:+.4g}\nafter {d['after']:+.4g}"
        elif overlay is not None:
            member = overlay.get(e["name"], "own")
            color, title = OVERLAY[member], f"{title}\nanchor: {member}"
        yield e, color, 1 + 7 * abs(s if s is not None else top) / top, title, dashed


def legend(overlay: dict[str, str] | None = None, diff: dict[str, dict] | None = None
           ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """([(node type, label)], [(edge colour, label)]) for the picture."""
    nodes = list(NODE_TYPES.items())
    if diff is not None:
        counts = Counter(d["kind"] for d in diff.values())
        return nodes, [(DIFF[k], f"{k}: {counts.get(k, 0)} ({DIFF_MEANING[k]})") for k in DIFF]
    if overlay is None:
        return nodes, [(SIGN[True], "supports the answer (score > 0)"), (SIGN[False], "works against it (score < 0)")]
    counts = Counter(overlay.values())
    return nodes, [(OVERLAY[k], f"{k}: {counts.get(k, 0)} ({OVERLAY_MEANING[k]})") for k in OVERLAY]


def _box(name: str, font_size: int) -> tuple[float, float]:
    """Half width and half height of a node's shape around its label."""
    return 0.31 * font_size * len(name) + 0.6 * font_size, 0.85 * font_size


def settings_caption(score_run: dict, n_edges: int, calibration: dict | None = None) -> str:
    """Where a circuit figure comes from: model, dataset, the scoring run and its attribution settings, the
    cut, the calibration behind its CUD; "DEMO (not evidence)" first for the Demo's calibration."""
    s = ScoreSettings.of_run(score_run)
    steps = "" if s.method == "eap" else f", {s.steps} steps"
    parts = [f"{score_run['model']} · {score_run['dataset']}",
             f"scoring run {score_run['id']}: {s.method} attribution{steps}, {s.baseline} baseline, {s.metric} metric",
             f"cut greedily at up to {n_edges} edges"]
    if calibration is not None:
        parts.append(f"calibration {calibration['id']} ({preset_of(calibration)} settings)")
    return (f"{DEMO_MARK} · " if is_demo(calibration) else "") + " · ".join(parts)


def text_lines(text: str | None, size: int, width: float) -> list[str]:
    """`text` wrapped to lines that fit `width` pixels at font `size` (about 0.55 em per character)."""
    if not text:
        return []
    return textwrap.wrap(text, max(20, int(width / (0.55 * size))), break_on_hyphens=False)


def circuit_svg(circuit_json: str, overlay: dict[str, str] | None = None, font_size: int = 18,
                diff: dict[str, dict] | None = None, title: str | None = None, caption: str | None = None) -> str:
    """The picture of `circuit_html` as a standalone SVG: one `<line class="edge">` per edge, one
    `<g class="node">` per node, and the legend underneath; `title` (e.g. the sample id and question) in
    `<text class="title">` lines above and `caption` (the run and settings) in `<text class="caption">`
    lines below, wrapped to the picture's width. User text is escaped."""
    data = json.loads(circuit_json)
    half = {n["name"]: _box(n["name"], font_size) for n in data["nodes"]}
    at = layout(data, half_width={name: w for name, (w, _) in half.items()})
    kind_of = {n["name"]: n["type"] for n in data["nodes"]}
    mx = max([w for w, _ in half.values()], default=0) + 20
    my = max([h for _, h in half.values()], default=0) + 20
    out = [f'<marker id="arrow{c[1:]}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="14" markerHeight="14" '
           f'markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{c}"/></marker>'
           for c in sorted({c for _, c, _, _, _ in edge_styles(data, overlay, diff)})]
    out = ["<defs>", *out, "</defs>"]
    for e, color, stroke, tip, dashed in edge_styles(data, overlay, diff):
        (x1, y1), (x2, y2) = at[e["parent"]], at[e["child"]]
        dx, dy = x1 - x2, y1 - y2  # the arrow ends where this line from the child's centre leaves its shape
        hw, hh = half[e["child"]]
        if not (dx or dy):
            t = 0.0
        elif kind_of[e["child"]] == "head":  # an ellipse
            t = 1 / math.hypot(dx / hw, dy / hh)
        else:
            t = min(hw / abs(dx) if dx else math.inf, hh / abs(dy) if dy else math.inf)
        out.append(f'<line class="edge" x1="{x1 + mx:.1f}" y1="{y1 + my:.1f}" x2="{x2 + t * dx + mx:.1f}" '
                   f'y2="{y2 + t * dy + my:.1f}" stroke="{color}" stroke-width="{stroke:.2f}" stroke-opacity="0.8" '
                   f'marker-end="url(#arrow{color[1:]})"{DASHED if dashed else ""}>'
                   f'<title>{escape(tip)}</title></line>')
    for n in data["nodes"]:
        (x, y), (hw, hh), kind = at[n["name"]], half[n["name"]], n["type"]
        x, y = x + mx, y + my
        style = f'fill="{FILLS[kind]}" stroke="{COLORS[kind]}" stroke-width="2"'
        shape = (f'<ellipse cx="{x:.1f}" cy="{y:.1f}" rx="{hw:.1f}" ry="{hh:.1f}" {style}/>' if kind == "head" else
                 f'<rect x="{x - hw:.1f}" y="{y - hh:.1f}" width="{2 * hw:.1f}" height="{2 * hh:.1f}" rx="4" {style}/>')
        out.append(f'<g class="node" id={quoteattr("node-" + n["name"])}>{shape}<text x="{x:.1f}" '
                   f'y="{y + 0.35 * font_size:.1f}" text-anchor="middle" font-size="{font_size}">'
                   f'{escape(n["name"])}</text></g>')
    extent = max([WIDTH, *(x for x, _ in at.values())])
    width, small = extent + 2 * mx, max(12, round(0.8 * font_size))
    nodes, edges = legend(overlay, diff)
    x, y = 20.0, HEIGHT + 2 * my + small
    for i, (key, label) in enumerate(nodes + edges):
        advance = 1.5 * small + 0.55 * small * len(label) + 1.5 * small
        if i == len(nodes) or (x > 20 and x + advance > width):  # edges on a new line; wrap long lines
            x, y = 20.0, y + 1.8 * small
        if key in FILLS:
            out.append(f'<rect class="legend" x="{x:.1f}" y="{y - 0.8 * small:.1f}" width="{small}" height="{small}" '
                       f'rx="{small / 2 if key == "head" else 2}" fill="{FILLS[key]}" stroke="{COLORS[key]}" '
                       'stroke-width="2"/>')
        else:
            out.append(f'<line class="legend" x1="{x:.1f}" y1="{y - 0.3 * small:.1f}" x2="{x + small:.1f}" '
                       f'y2="{y - 0.3 * small:.1f}" stroke="{key}" stroke-width="4"/>')
        out.append(f'<text class="legend" x="{x + 1.5 * small:.1f}" y="{y:.1f}" font-size="{small}">'
                   f'{escape(label)}</text>')
        x += advance
    for line in text_lines(caption, small, width - 40):
        y += 1.5 * small
        out.append(f'<text class="caption" x="20" y="{y:.1f}" font-size="{small}" fill="#444444">{escape(line)}</text>')
    big = round(1.1 * font_size)
    heading = [f'<text class="title" x="20" y="{(k + 1) * 1.4 * big:.1f}" font-size="{big}" font-weight="bold">'
               f'{escape(line)}</text>' for k, line in enumerate(text_lines(title, big, width - 40))]
    top = 1.4 * big * len(heading) + (0.4 * big if heading else 0)
    height = top + y + small
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" fill="#1a1a1a">'
            '<rect width="100%" height="100%" fill="#ffffff"/>' + "".join(heading)
            + f'<g transform="translate(0,{top:.1f})">' + "".join(out) + "</g></svg>")


def svg_to_png(svg: str, scale: float = 2.0) -> bytes:
    import vl_convert

    return vl_convert.svg_to_png(svg, scale=scale)
