"""A circuit as an interactive, fully offline pyvis graph, laid out left to right by layer."""
from __future__ import annotations

import json
import re

COLORS = {"input": "#6c757d", "head": "#4c78a8", "mlp": "#f58518", "logits": "#54a24b"}
SIGN = {True: "#2ca02c", False: "#d62728"}  # positive: supports the answer; negative: works against it
OVERLAY = {"easy": "#1f77b4", "hard": "#ff7f0e", "both": "#9467bd", "own": "#b0b0b0"}
_CDN = re.compile(r"<(link|script)[^>]+(?:href|src)=\"https?://[^\"]+\"[^>]*>(?:</script>)?", re.IGNORECASE)


def circuit_html(circuit_json: str, overlay: dict[str, str] | None = None, height: int = 590) -> str:
    """HTML for a circuit exported by `cud_core.circuits.to_json`. `overlay` maps edge name to
    "easy" / "hard" / "both" / "own" (membership in the anchor circuits) and recolours edges."""
    from pyvis.network import Network

    data = json.loads(circuit_json)
    net = Network(height=f"{height}px", width="100%", directed=True, cdn_resources="in_line", bgcolor="#ffffff")
    n_layers = data["n_layers"]
    columns = {layer: i for i, layer in enumerate(sorted({n["layer"] for n in data["nodes"]}))}  # occupied layers
    size = {layer: sum(1 for n in data["nodes"] if n["layer"] == layer) for layer in columns}
    row: dict[int, int] = {}
    for node in data["nodes"]:
        layer = node["layer"]
        r = row.get(layer, 0)
        row[layer] = r + 1
        net.add_node(node["name"], label=node["name"], x=columns[layer] * 170, y=(r - (size[layer] - 1) / 2) * 80,
                     physics=False, color=COLORS[node["type"]], shape="box" if node["type"] == "mlp" else "dot",
                     size=14, font={"size": 16},
                     title=f"{node['name']} ({node['type']}, layer {layer if 0 <= layer < n_layers else '-'})")
    scores = [abs(e.get("score", 1.0)) for e in data["edges"]] or [1.0]
    top = max(scores) or 1.0
    for e in data["edges"]:
        s = e.get("score")
        width = 1 + 7 * abs(s if s is not None else top) / top
        color = SIGN[(s or 0) >= 0]
        title = f"{e['name']}" + (f"\nscore {s:+.4g}" if s is not None else "")
        if overlay is not None:
            member = overlay.get(e["name"], "own")
            color = OVERLAY[member]
            title += f"\nanchor: {member}"
        net.add_edge(e["parent"], e["child"], width=width, color=color, title=title, arrows="to")
    net.toggle_physics(False)
    return offline(net.generate_html())


def offline(html: str) -> str:
    """Drop any tag that would fetch from a CDN (pyvis' template links Bootstrap even in_line)."""
    return _CDN.sub("", html)
