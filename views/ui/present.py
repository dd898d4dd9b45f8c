"""Presentation mode (`?present=1`, a sidebar toggle that follows the user from page to page): for a talk.
Forms, banners and the job panel fold to one line, each page's result comes first, chart text is at least
16 px, and the circuit graph fills the window. Off, nothing changes."""
from __future__ import annotations

import altair as alt
import streamlit as st

# fixed text only (no user input reaches it)
_CSS = """<style>
header[data-testid="stHeader"] {display: none;}
[data-testid="stMainBlockContainer"], .block-container {padding-top: 0.75rem !important;
  padding-bottom: 1rem !important;}
h1 {font-size: 1.9rem !important; padding: 0 0 0.25rem 0 !important;}
[data-testid="stMarkdownContainer"] p, [data-testid="stMarkdownContainer"] li {font-size: 1.2rem;}
[data-testid="stCaptionContainer"] {font-size: 1.05rem;}
[data-testid="stMetricValue"] {font-size: 2.4rem;}
</style>"""
# the Circuit page: the graph's frame takes the window's height less the title, the folded settings and the
# question and answer above it; its element box (which Streamlit gives a flex basis of the frame's set height)
# follows, so the captions under the graph do not overlap it
GRAPH_CSS = """<style>
[data-testid="stIFrame"] {height: calc(100vh - 15rem) !important; min-height: 420px;}
[data-testid="stElementContainer"]:has([data-testid="stIFrame"]) {flex: 0 0 auto !important; height: auto !important;}
</style>"""


def on() -> bool:
    return st.query_params.get("present") == "1"


def toggle() -> bool:
    """The sidebar switch; kept in the URL (and remembered across pages by views.ui.state.SHARED)."""
    from views.ui import state

    wanted = st.sidebar.toggle("Presentation mode", value=on(), key="present_toggle",
                               help="for a talk: the result first, forms folded, large chart text; in the URL, so a "
                                    "shared link opens in it too")
    if wanted != on():
        state.keep_in_url(present="1" if wanted else None)
        st.rerun()
    if wanted:
        st.markdown(_CSS, unsafe_allow_html=True)
    return wanted


def controls(label: str):
    """Where a page's settings go: folded under `label` when presenting, as they are otherwise."""
    return st.expander(label, expanded=False) if on() else st.container()


def big(chart: alt.TopLevelMixin) -> alt.TopLevelMixin:
    """`chart` with every text at least 16 px (axes, legends, facet headers, titles)."""
    return (chart.configure_axis(labelFontSize=16, titleFontSize=18)
            .configure_legend(labelFontSize=16, titleFontSize=17, symbolSize=160)
            .configure_header(labelFontSize=17, titleFontSize=18)
            .configure_title(fontSize=20, subtitleFontSize=16))


def chart(c: alt.TopLevelMixin, target=None, **kwargs) -> None:
    """`st.altair_chart` (into `target`, e.g. a column), with large text when presenting (Streamlit's chart
    theme would set its own, smaller fonts over the chart's: presenting drops it)."""
    if on():
        (target or st).altair_chart(big(c), theme=None, **kwargs)
    else:
        (target or st).altair_chart(c, **kwargs)
