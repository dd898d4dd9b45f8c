"""A circuit drawn left to right by layer: an interactive, fully offline pyvis graph, and the same
picture as SVG/PNG (rendered here, no browser needed), with its legend and explanations."""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from xml.sax.saxutils import escape, quoteattr

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
_CDN = re.compile(r"<(link|script)[^>]+(?:href|src)=\"https?://[^\"]+\"[^>]*>(?:</script>)?", re.IGNORECASE)
_FIT = """<script type="text/javascript">
  network.fit();
  network.once("afterDrawing", function () { network.fit(); });
  window.addEventListener("resize", function () { network.fit(); });
</script>
"""


# ----------------------------------------------------------------------------- what is drawn

def size_note(shown: int, picked: int, n: int) -> str:
    """Why the circuit may have fewer edges than asked for."""
    said = f"{shown} of up to {n} edges: greedy " + (
        f"took all {picked} edges that lead to the logits" if picked < n
        else f"picked {n} edges, from the logits backwards (highest |score| first)")
    if shown < picked:
        said += f"; pruning dropped the {picked - shown} that lie on no input → logits path"
    return said + "."


def faithfulness_note(f: dict, baseline: str = "zero") -> str:
    """One line on what `cud_core.engine.circuits.faithfulness` measured, with its three metric values."""
    said = ("Share of the full model's lead over the fully ablated one that the circuit keeps when every edge "
            f"outside it is ablated with the {baseline} baseline: (circuit − empty) / (clean − empty) on the mean "
            "answer log-prob. 1 = all of it, 0 = no better than ablating everything, < 0 = worse than ablating "
            f"everything, > 1 = better than the full model. Here clean {f['clean']:.3f}, circuit {f['circuit']:.3f}, "
            f"empty {f['empty']:.3f}")
    return said + (": undefined, as clean and empty are equal." if math.isnan(f["faithfulness"]) else ".")


def layout(data: dict, width: float = WIDTH, height: float = HEIGHT) -> dict[str, tuple[float, float]]:
    """Node name -> (x, y): one column per occupied layer across `width`, each column's nodes spread
    evenly over `height`, so the picture fills a frame of about that shape."""
    layers = sorted({n["layer"] for n in data["nodes"]})
    step = width / max(1, len(layers) - 1)
    out = {}
    for i, layer in enumerate(layers):
        names = [n["name"] for n in data["nodes"] if n["layer"] == layer]
        out.update({name: (i * step if len(layers) > 1 else width / 2, (r + 0.5) / len(names) * height)
                    for r, name in enumerate(names)})
    return out


def _edges(data: dict, overlay: dict[str, str] | None, diff: dict[str, dict] | None = None):
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


def legend_html(overlay: dict[str, str] | None = None, diff: dict[str, dict] | None = None) -> str:
    """The legend as one caption (HTML of fixed text and colours only)."""
    nodes, edges = legend(overlay, diff)
    glyph = {t: "●" if t == "head" else "■" for t in COLORS}
    node_items = (f"<span style='color:{COLORS[t]}'>{glyph[t]}</span> {label}" for t, label in nodes)
    edge_items = (f"<span style='color:{c}'>━</span> {label}" for c, label in edges)
    width = "|after − before|" if diff is not None else "|score|"
    return "Nodes: " + "  ·  ".join(node_items) + f"  \nEdges (width = {width}): " + "  ·  ".join(edge_items)


# ----------------------------------------------------------------------------- interactive (pyvis)

def circuit_html(circuit_json: str, overlay: dict[str, str] | None = None, height: int = 590,
                 font_size: int = 18, diff: dict[str, dict] | None = None) -> str:
    """HTML for a circuit exported by `cud_core.engine.circuits.to_json`, fitted to its frame once drawn.
    `overlay` maps edge name to "easy" / "hard" / "both" / "own" (membership in the anchor circuits)
    and recolours edges."""
    from pyvis.network import Network

    data = json.loads(circuit_json)
    net = Network(height=f"{height}px", width="100%", directed=True, cdn_resources="in_line", bgcolor="#ffffff")
    at = layout(data, height=height * 0.85)
    for node in data["nodes"]:
        kind, layer = node["type"], node["layer"]
        x, y = at[node["name"]]
        net.add_node(node["name"], label=node["name"], x=x, y=y, physics=False,
                     shape="ellipse" if kind == "head" else "box", borderWidth=2,
                     color={"background": FILLS[kind], "border": COLORS[kind]},
                     font={"size": font_size, "face": "sans-serif", "color": "#1a1a1a"},
                     title=f"{node['name']} ({kind}, layer {layer if 0 <= layer < data['n_layers'] else '-'})")
    for e, color, width, title, dashed in _edges(data, overlay, diff):
        net.add_edge(e["parent"], e["child"], width=width, color=color, title=title, arrows="to", dashes=dashed)
    net.toggle_physics(False)
    net.options.edges.smooth.enabled = False  # straight, as in the SVG
    html = net.generate_html()
    assert "</body>" in html
    return offline(html.replace("</body>", _FIT + "</body>", 1))


def offline(html: str) -> str:
    """Drop any tag that would fetch from a CDN (pyvis' template links Bootstrap even in_line)."""
    return _CDN.sub("", html)


# ----------------------------------------------------------------------------- static (SVG, PNG)

def _box(name: str, font_size: int) -> tuple[float, float]:
    """Half width and half height of a node's shape around its label."""
    return 0.31 * font_size * len(name) + 0.6 * font_size, 0.85 * font_size


def circuit_svg(circuit_json: str, overlay: dict[str, str] | None = None, font_size: int = 18,
                diff: dict[str, dict] | None = None) -> str:
    """The picture of `circuit_html` as a standalone SVG: one `<line class="edge">` per edge, one
    `<g class="node">` per node, and the legend underneath."""
    data = json.loads(circuit_json)
    at = layout(data)
    half = {n["name"]: _box(n["name"], font_size) for n in data["nodes"]}
    kind_of = {n["name"]: n["type"] for n in data["nodes"]}
    mx = max([w for w, _ in half.values()], default=0) + 20
    my = max([h for _, h in half.values()], default=0) + 20
    out = [f'<marker id="arrow{c[1:]}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="14" markerHeight="14" '
           f'markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{c}"/></marker>'
           for c in sorted({c for _, c, _, _, _ in _edges(data, overlay, diff)})]
    out = ["<defs>", *out, "</defs>"]
    for e, color, stroke, title, dashed in _edges(data, overlay, diff):
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
                   f'<title>{escape(title)}</title></line>')
    for n in data["nodes"]:
        (x, y), (hw, hh), kind = at[n["name"]], half[n["name"]], n["type"]
        x, y = x + mx, y + my
        style = f'fill="{FILLS[kind]}" stroke="{COLORS[kind]}" stroke-width="2"'
        shape = (f'<ellipse cx="{x:.1f}" cy="{y:.1f}" rx="{hw:.1f}" ry="{hh:.1f}" {style}/>' if kind == "head" else
                 f'<rect x="{x - hw:.1f}" y="{y - hh:.1f}" width="{2 * hw:.1f}" height="{2 * hh:.1f}" rx="4" {style}/>')
        out.append(f'<g class="node" id={quoteattr("node-" + n["name"])}>{shape}<text x="{x:.1f}" '
                   f'y="{y + 0.35 * font_size:.1f}" text-anchor="middle" font-size="{font_size}">'
                   f'{escape(n["name"])}</text></g>')
    width, small = WIDTH + 2 * mx, max(12, round(0.8 * font_size))
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
    height = y + small
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" fill="#1a1a1a">'
            '<rect width="100%" height="100%" fill="#ffffff"/>' + "".join(out) + "</svg>")


def svg_to_png(svg: str, scale: float = 2.0) -> bytes:
    import vl_convert

    return vl_convert.svg_to_png(svg, scale=scale)
