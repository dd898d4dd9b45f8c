"""User text (questions, answers, ids, paths, model names, messages) shown through Streamlit's
Markdown elements: st.markdown, st.caption, st.success/info/warning/error, progress texts."""
from __future__ import annotations

import re

_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character


def md(value) -> str:
    """`value` as Markdown that shows it literally: each ASCII punctuation character is
    backslash-escaped, so `![p](http://...)` stays text (no image fetched), `<script>` stays text,
    and `*`, `:red[...]`, `$...$` or backticks change no formatting."""
    return _SPECIAL.sub(r"\\\1", str(value))
