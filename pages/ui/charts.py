"""Chart downloads (PNG / SVG through vl-convert, CSV of the data behind) for talks and papers."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st


@st.cache_data(show_spinner=False)
def _render(spec: str, fmt: str) -> bytes | str:
    import vl_convert as vlc

    return vlc.vegalite_to_png(spec, scale=2) if fmt == "png" else vlc.vegalite_to_svg(spec)


def downloads(chart: alt.TopLevelMixin, data: pd.DataFrame, name: str) -> None:
    c1, c2, c3 = st.columns(3)
    spec = chart.to_json()
    c1.download_button("PNG", lambda: _render(spec, "png"), file_name=f"{name}.png", mime="image/png",
                       key=f"{name}-png")
    c2.download_button("SVG", lambda: _render(spec, "svg"), file_name=f"{name}.svg", mime="image/svg+xml",
                       key=f"{name}-svg")
    c3.download_button("CSV", data.to_csv(index=False), file_name=f"{name}.csv", mime="text/csv", key=f"{name}-csv")
