"""A circuit drawn left to right by layer: an interactive, fully offline pyvis graph, with its legend and
explanations; the same picture as SVG/PNG comes from cud_core.report.circuit_figure."""
from __future__ import annotations

import json
import math
import re

from cud_core.report.circuit_figure import COLORS, FILLS, edge_styles, layout, legend

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
                 font_size: int = 18, diff: dict[str, dict] | None = None, fill: bool = False) -> str:
    """HTML for a circuit exported by `cud_core.engine.circuits.to_json`, fitted to its frame once drawn.
    `overlay` maps edge name to "easy" / "hard" / "both" / "own" (membership in the anchor circuits)
    and recolours edges. `fill`: the graph takes its frame's whole height (presentation mode sizes the frame
    to the window) instead of `height` pixels."""
    from pyvis.network import Network

    data = json.loads(circuit_json)
    net = Network(height="calc(100vh - 24px)" if fill else f"{height}px", width="100%", directed=True,
                  cdn_resources="in_line", bgcolor="#ffffff")
    at = layout(data, height=height * 0.85)
    for node in data["nodes"]:
        kind, layer = node["type"], node["layer"]
        x, y = at[node["name"]]
        net.add_node(node["name"], label=node["name"], x=x, y=y, physics=False,
                     shape="ellipse" if kind == "head" else "box", borderWidth=2,
                     color={"background": FILLS[kind], "border": COLORS[kind]},
                     font={"size": font_size, "face": "sans-serif", "color": "#1a1a1a"},
                     title=f"{node['name']} ({kind}, layer {layer if 0 <= layer < data['n_layers'] else '-'})")
    for e, color, width, title, dashed in edge_styles(data, overlay, diff):
        net.add_edge(e["parent"], e["child"], width=width, color=color, title=title, arrows="to", dashes=dashed)
    net.toggle_physics(False)
    net.options.edges.smooth.enabled = False  # straight, as in the SVG
    html = net.generate_html()
    assert "</body>" in html
    return offline(html.replace("</body>", _FIT + "</body>", 1))


def offline(html: str) -> str:
    """Drop any tag that would fetch from a CDN (pyvis' template links Bootstrap even in_line)."""
    return _CDN.sub("", html)
