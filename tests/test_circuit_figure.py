"""The static circuit drawing: node shapes never overlap, however many layers the circuit spans."""
import json
import re

from cud_core.report.circuit_figure import circuit_svg

SHAPE = re.compile(r'<(ellipse cx="([\d.]+)" cy="([\d.]+)" rx="([\d.]+)" ry="([\d.]+)"'
                   r'|rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)" rx="4")')


def boxes(svg: str) -> list[tuple[float, float, float, float]]:
    """(left, top, right, bottom) of every node's shape."""
    out = []
    for m in SHAPE.finditer(svg):
        if m.group(2):
            cx, cy, rx, ry = map(float, m.group(2, 3, 4, 5))
            out.append((cx - rx, cy - ry, cx + rx, cy + ry))
        else:
            x, y, w, h = map(float, m.group(6, 7, 8, 9))
            out.append((x, y, x + w, y + h))
    return out


def chain(n_layers: int) -> str:
    """A circuit of one MLP per layer, input -> m0 -> ... -> m{n-1} -> logits (every column a lone node)."""
    names = ["input"] + [f"m{i}" for i in range(n_layers)] + ["logits"]
    nodes = [{"name": n, "type": "input" if n == "input" else "logits" if n == "logits" else "mlp", "layer": k}
             for k, n in enumerate(names)]
    edges = [{"name": f"{a}->{b}", "parent": a, "child": b, "score": 1.0} for a, b in zip(names, names[1:])]
    return json.dumps({"n_layers": n_layers, "n_heads": 9, "nodes": nodes, "edges": edges})


def test_no_two_nodes_overlap_and_all_lie_inside_the_picture():
    for n_layers in (3, 30):  # 30: SmolLM2's depth, where m29 sat on top of logits at 1000 px
        svg = circuit_svg(chain(n_layers))
        width = float(re.search(r'<svg [^>]*width="([\d.]+)"', svg).group(1))
        found = boxes(svg)
        assert len(found) == n_layers + 2
        for i, (l1, t1, r1, b1) in enumerate(found):
            for l2, t2, r2, b2 in found[i + 1:]:
                assert r1 <= l2 or r2 <= l1 or b1 <= t2 or b2 <= t1  # side by side, or one above the other
        assert min(b[0] for b in found) >= 0 and max(b[2] for b in found) <= width
    # a short circuit keeps the frame-sized picture
    assert float(re.search(r'<svg [^>]*width="([\d.]+)"', circuit_svg(chain(3))).group(1)) < 1200
