"""User text (questions, answers, ids, paths, model names, messages) shown through Streamlit's
Markdown elements: st.markdown, st.caption, st.success/info/warning/error, progress texts."""
from __future__ import annotations

from cud_core.store.escaping import csv_frame, markdown_all


def md(value) -> str:
    """`value` as Markdown that shows it literally: each ASCII punctuation character is
    backslash-escaped, so `![p](http://...)` stays text (no image fetched), `<script>` stays text,
    and `*`, `:red[...]`, `$...$` or backticks change no formatting (cud_core.store.escaping)."""
    return markdown_all(value)


def csv_download(frame) -> str:
    """A table as CSV for a download button, with formula-like text cells escaped (cud_core.store.escaping)."""
    return csv_frame(frame).to_csv(index=False)
