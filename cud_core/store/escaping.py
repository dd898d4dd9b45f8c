"""Text that comes from data, a bundle or a file name, made inert where the project writes it.

- CSV cells: a text cell that starts like a spreadsheet formula (`=`, `+`, `-`, `@`, tab, carriage
  return) gets a leading `'`, so Excel, LibreOffice and Google Sheets show it as text (OWASP, "CSV
  Injection"); texts that already start with quotes before such a character get one more, so that
  `csv_unescape` gives back exactly the original.
- Markdown: `markdown_inline` backslash-escapes the characters that make links, images, HTML, code,
  emphasis or table cells, so a name such as `<img onerror=...>` or `![x](http://...)` renders as the
  text it is (CommonMark renders a backslash-escaped punctuation character as itself); `markdown_all`
  escapes every ASCII punctuation character (Streamlit's Markdown also reads `:red[...]` and `$...$`).
"""
from __future__ import annotations

import re

_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_INLINE = re.compile(r"([\\`*_\[\]()<>!|#~$&{}])")
_ALL = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character


def csv_cell(value):
    return "'" + value if isinstance(value, str) and _FORMULA.match(value) else value


def csv_unescape(text: str) -> str:
    return text[1:] if text.startswith("'") and _FORMULA.match(text) else text


def csv_frame(frame):
    """A pandas DataFrame with every text cell (and column name) through `csv_cell`, for `to_csv`."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    out = frame.copy()
    for column in out.columns:
        if not (is_numeric_dtype(out[column]) or is_bool_dtype(out[column])):  # object and string columns
            out[column] = out[column].map(csv_cell)
    return out.rename(columns=lambda c: csv_cell(str(c)))


def markdown_inline(value) -> str:
    return _INLINE.sub(r"\\\1", str(value))


def markdown_all(value) -> str:
    return _ALL.sub(r"\\\1", str(value))
