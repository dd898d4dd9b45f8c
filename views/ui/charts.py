"""What the pages' charts share: one colour-blind-safe palette for the sample groups, integer step
axes, and downloads (PNG / SVG through vl-convert, CSV of the data behind) for talks and papers."""
from __future__ import annotations

from collections.abc import Iterable

import altair as alt
import pandas as pd
import streamlit as st

from cud_core.report.charts import GROUP_COLOURS, titled
from views.ui.text import csv_download

PALETTE = GROUP_COLOURS  # Okabe–Ito, in legend order (shared with the report's figures)


def groups(present: Iterable[str]) -> list[str]:
    """The palette's groups that occur in `present`, in palette order."""
    found = set(present)
    return [g for g in PALETTE if g in found]


def group_color(field: str, present: Iterable[str]) -> alt.Color:
    """Colour by `field` in the shared palette; the legend lists only the groups in `present`."""
    domain = groups(present)
    return alt.Color(f"{field}:N", title=field, sort=domain,
                     scale=alt.Scale(domain=domain, range=[PALETTE[g] for g in domain]))


def step_x(title: str = "step") -> alt.X:
    """An x axis of unlearning steps: whole numbers only."""
    return alt.X("step:Q", title=title, axis=alt.Axis(tickMinStep=1, format="d"))


@st.cache_data(show_spinner=False)
def _render(spec: str, fmt: str) -> bytes | str:
    import vl_convert as vlc

    return vlc.vegalite_to_png(spec, scale=2) if fmt == "png" else vlc.vegalite_to_svg(spec)


def downloads(chart: alt.TopLevelMixin, data: pd.DataFrame, name: str, title: str, context: dict,
              extra: str = "") -> None:
    """PNG, SVG and CSV of `chart`; the pictures carry `title` and the run and settings of `context`
    (`results.figure_context`), plus `extra`, as their caption, and the demo mark when it is one."""
    c1, c2, c3 = st.columns(3)
    caption = " · ".join(x for x in (context["caption"], extra) if x)
    spec = titled(chart, title, caption, context["demo"]).to_json()
    c1.download_button("PNG", lambda: _render(spec, "png"), file_name=f"{name}.png", mime="image/png",
                       key=f"{name}-png")
    c2.download_button("SVG", lambda: _render(spec, "svg"), file_name=f"{name}.svg", mime="image/svg+xml",
                       key=f"{name}-svg")
    c3.download_button("CSV", csv_download(data), file_name=f"{name}.csv", mime="text/csv", key=f"{name}-csv")
