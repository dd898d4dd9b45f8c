"""Validation charts (Altair), shared by the Validation page and the offline HTML report.

Altair is imported inside the functions: the engine stays importable without it being loaded.
"""
from __future__ import annotations

import math
import textwrap

from cud_core.difficulty.grid import FACTORS, ranking_agreement
from cud_core.difficulty.regimes import Protocol, allowed_rise
from cud_core.pipeline.presets import DEMO_MARK

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]  # Okabe–Ito
# Okabe–Ito colours of the sample groups, in legend order: easy → hard blue → purple → vermillion; retain grey
GROUP_COLOURS = {"easy": "#0072B2", "medium": "#CC79A7", "hard": "#D55E00", "all": "#009E73", "retain": "#999999"}


def forest_rows(report: dict, target: str) -> list[dict]:
    """One row per predictor × method (and the method mean) for one target."""
    rows = []
    for name, entry in report["predictors"].items():
        t = entry[target]
        for method, v in [("mean over methods", t), *t["by_method"].items()]:
            if v["spearman"] is None or not math.isfinite(v["spearman"]):
                continue
            lo, hi = v["spearman_ci"]
            rows.append({"predictor": name, "method": method, "spearman": v["spearman"],
                         "lo": lo if math.isfinite(lo) else v["spearman"],
                         "hi": hi if math.isfinite(hi) else v["spearman"],
                         "high means": entry["high_means"]})
    return rows


def forest(report: dict, target: str, width: int = 560):
    """Each predictor's Spearman ρ with hardness and its 95% CI, per method; zero as a rule, the target's
    reliability ceiling (±) as a grey band."""
    import altair as alt
    import pandas as pd

    rows = forest_rows(report, target)
    if not rows:  # e.g. forgotten_at when no sample was forgotten: ρ undefined for every predictor
        return alt.Chart(pd.DataFrame([{"text": f"No finite ρ for {target}: the target is constant "
                                                "(e.g. no answer fell below the threshold)"}])
                         ).mark_text(align="left").encode(text="text:N").properties(width=width, height=30)
    data = pd.DataFrame(rows)
    methods = list(dict.fromkeys(data["method"]))
    colour = alt.Color("method:N", scale=alt.Scale(domain=methods, range=PALETTE[:len(methods)]), title="method")
    y = alt.Y("predictor:N", sort=list(report["predictors"]), title=None)
    offset = alt.YOffset("method:N", sort=methods)
    x = alt.X("spearman:Q", title=f"Spearman ρ with hardness ({target})", scale=alt.Scale(domain=[-1, 1]))
    bars = alt.Chart(data).mark_rule(strokeWidth=2).encode(x=alt.X("lo:Q", scale=alt.Scale(domain=[-1, 1])), x2="hi:Q",
                                                           y=y, yOffset=offset, color=colour)
    points = alt.Chart(data).mark_point(filled=True, size=45).encode(
        x=x, y=y, yOffset=offset, color=colour,
        tooltip=["predictor", "method", alt.Tooltip("spearman:Q", format=".3f"), alt.Tooltip("lo:Q", format=".3f"),
                 alt.Tooltip("hi:Q", format=".3f"), "high means"])
    layers = []
    ceiling = report.get("reliability", {}).get("method_mean", {}).get("ceiling")
    if ceiling is not None and math.isfinite(ceiling):
        band = pd.DataFrame([{"lo": -ceiling, "hi": ceiling}])
        layers.append(alt.Chart(band).mark_rect(color="#bbbbbb", opacity=0.18).encode(x="lo:Q", x2="hi:Q"))
        edges = pd.DataFrame([{"x": -ceiling}, {"x": ceiling}])
        layers.append(alt.Chart(edges).mark_rule(color="#888888", strokeDash=[2, 2]).encode(x="x:Q"))
    layers.append(alt.Chart(pd.DataFrame([{"x": 0.0}])).mark_rule(color="black").encode(x="x:Q"))
    height = 26 * len(report["predictors"]) * max(1, len(methods)) // 2 + 40
    return alt.layer(*layers, bars, points).properties(width=width, height=min(height, 700))


def null_histogram(report: dict, width: int = 460):
    """The permutation null of ρ(out-of-fold CUD, hardness) with CUD's observed value as a red rule."""
    import altair as alt
    import pandas as pd

    perm = report["permutation"]
    null = pd.DataFrame({"rho": [v for v in perm["null"] if math.isfinite(v)]})
    hist = alt.Chart(null).mark_bar(color=PALETTE[0], opacity=0.8).encode(
        x=alt.X("rho:Q", bin=alt.Bin(maxbins=30), title="ρ under shuffled outcomes (chance)"),
        y=alt.Y("count():Q", title="permutations"))
    observed = alt.Chart(pd.DataFrame([{"rho": perm["observed"]}])).mark_rule(color="#D55E00", strokeWidth=3).encode(
        x="rho:Q", tooltip=[alt.Tooltip("rho:Q", format=".3f", title="observed ρ")])
    return (hist + observed).properties(width=width, height=220)


def regimes_frame(found: dict):
    """One row per evaluation of every learning rate each method's first seed tried (on each forget set of a
    pooled calibration: "attempt" tells the runs apart): the share forgotten and the held-out NLL's rise
    above step 0's (nats), whether it is the operating point."""
    import pandas as pd

    rows = []
    for method, r in found.items():
        for n, attempt in enumerate(r["search"]):
            where = f" · set {attempt['forget_set']}" if attempt.get("forget_set") else ""
            for k, e in enumerate(attempt["trajectory"]):
                rows.append({"method": method, "lr": f"{attempt['lr']:.2g} ({attempt['verdict']})",
                             "attempt": f"{n}{where}", "forget set": where.removeprefix(" · "),
                             "step": e["step"], "share forgotten": e["share_forgotten"],
                             "held-out NLL − step 0": e["holdout_nll"] - e["holdout_nll_0"],
                             "operating point": k == attempt["point"]})
    return pd.DataFrame(rows)


def regimes(found: dict, protocol: dict, width: int = 260):
    """Efficacy (share forgotten) against held-out utility (the NLL's rise above step 0's) over the steps of
    every rate each method tried, one panel per method and one line per run (each forget set's its own); the
    valid region's edges (`protocol`, as stored) as dashed rules and the operating point as a large mark."""
    import altair as alt

    frame = regimes_frame(found)
    nll_0 = next(e["holdout_nll_0"] for r in found.values() for a in r["search"] for e in a["trajectory"])
    bound = allowed_rise(nll_0, Protocol.from_dict(protocol))
    base = alt.Chart(frame).encode(
        x=alt.X("held-out NLL − step 0:Q", title="held-out NLL − step 0's (nats)"),
        y=alt.Y("share forgotten:Q", scale=alt.Scale(domain=[0, 1])), color=alt.Color("lr:N", title="lr (verdict)"),
        tooltip=["method", "lr", "forget set", "step", alt.Tooltip("share forgotten:Q", format=".2f"),
                 alt.Tooltip("held-out NLL − step 0:Q", format=".2f")])
    lines = base.mark_line(point=True, strokeWidth=1.2).encode(order="step:Q", detail="attempt:N")
    point = base.transform_filter(alt.datum["operating point"]).mark_point(size=220, shape="diamond", filled=True)
    edges = alt.Chart(frame).mark_rule(strokeDash=[4, 4], color="grey")
    rules = edges.encode(x=alt.datum(bound)) + edges.encode(y=alt.datum(protocol["efficacy"]))
    return alt.layer(lines, point, rules).properties(width=width, height=200).facet(
        facet=alt.Facet("method:N"), columns=3)


def titled(chart, title: str, caption: str = "", demo: bool = False, width: int = 110):
    """`chart` with `title` and `caption` (the run and settings, wrapped at `width` characters) as its subtitle:
    a figure that leaves the app carries its context. A demo's title says it is no evidence."""
    import altair as alt

    text = f"{DEMO_MARK}: {title}" if demo else title
    lines = textwrap.wrap(caption, width, break_on_hyphens=False) if caption else []
    return chart.properties(title=alt.TitleParams(text=text, subtitle=lines,
                                                  anchor="start", fontSize=16, subtitleFontSize=12,
                                                  subtitleColor="#444444"))


def to_svg(chart) -> str:
    """An Altair chart as a standalone SVG string (no script, no network)."""
    import vl_convert as vlc

    return vlc.vegalite_to_svg(chart.to_dict())


def ablation_frame(summary: dict, target: str = "nll_after"):
    """One row per computed cell with numeric columns (sortable): its settings, ρ and CI, partial ρ,
    AUROC, p, Holm p, wall time."""
    import pandas as pd

    ref = summary["reference"]
    rows = []
    for c in summary["cells"]:
        t = c[target]
        rows.append({**{f: str(c[f]) for f in FACTORS},
                     "own setting": all(c[f] == ref.get(f) for f in FACTORS),
                     "ρ": t["spearman"], "ρ low": t["spearman_ci"][0], "ρ high": t["spearman_ci"][1],
                     "partial ρ": c["partial_spearman"], "AUROC": c["auroc"], "p": c["p"], "Holm p": c["p_holm"],
                     "significant (Holm)": c["significant"], "wall s": c["wall_s"]})
    return pd.DataFrame(rows)


def ablation_strip(summary: dict, factor: str, target: str = "nll_after", width: int = 420):
    """Every cell's held-out ρ (with its CI) by the level of `factor`: how much that setting moves ρ."""
    import altair as alt

    data = ablation_frame(summary, target)
    data["cell"] = range(len(data))
    levels = [str(v) for v in summary["grid"][factor] if str(v) in set(data[factor])]
    y = alt.Y(f"{factor}:N", sort=levels, title=factor)
    base = alt.Chart(data)
    ci = base.mark_rule(opacity=0.25).encode(x=alt.X("ρ low:Q", title=f"held-out ρ ({target})"), x2="ρ high:Q", y=y,
                                            yOffset=alt.YOffset("cell:N"), color=alt.Color(f"{factor}:N", legend=None))
    dots = base.mark_point(filled=True, size=30).encode(
        x=alt.X("ρ:Q"), y=y, yOffset=alt.YOffset("cell:N"), color=alt.Color(f"{factor}:N", legend=None),
        shape=alt.Shape("own setting:N", scale=alt.Scale(domain=[False, True], range=["circle", "diamond"])),
        tooltip=list(summary["grid"]) + [alt.Tooltip("ρ:Q", format=".3f"), alt.Tooltip("ρ low:Q", format=".3f"),
                                         alt.Tooltip("ρ high:Q", format=".3f"), alt.Tooltip("Holm p:Q", format=".3f")])
    zero = base.mark_rule(color="black").encode(x=alt.datum(0))
    return alt.layer(zero, ci, dots).properties(width=width, height=max(120, 70 * len(levels)))


def agreement_heatmap(summary: dict, factor: str, width: int = 320):
    """Mean Spearman between the CUD rankings of cells that differ only in `factor`, per pair of levels."""
    import altair as alt
    import pandas as pd

    pairs = ranking_agreement(summary["cells"], factor)
    data = pd.DataFrame([{"a": str(a), "b": str(b), "ρ": v[0], "pairs": v[1]} for (a, b), v in pairs.items()])
    if data.empty:
        return alt.Chart(pd.DataFrame([{"text": f"only one level of {factor} computed"}])).mark_text().encode(
            text="text:N")
    levels = [str(v) for v in summary["grid"][factor] if str(v) in set(data["a"])]
    rect = alt.Chart(data).mark_rect().encode(
        x=alt.X("a:N", sort=levels, title=None), y=alt.Y("b:N", sort=levels, title=None),
        color=alt.Color("ρ:Q", scale=alt.Scale(domain=[-1, 1], scheme="blueorange"), title="ranking ρ"),
        tooltip=["a", "b", alt.Tooltip("ρ:Q", format=".2f"), "pairs"])
    text = alt.Chart(data).mark_text(fontSize=11).encode(x=alt.X("a:N", sort=levels), y=alt.Y("b:N", sort=levels),
                                                         text=alt.Text("ρ:Q", format=".2f"))
    return (rect + text).properties(width=width, height=width)
