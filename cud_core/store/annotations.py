"""Annotations as CSV: export, and import with row-level validation (nothing is half-imported)."""
from __future__ import annotations

import csv
import io
import time
from typing import NamedTuple

from cud_core.data.samples import DataError, Problem, csv_records
from cud_core.store.escaping import csv_cell, csv_unescape
from cud_core.store.workspace import Workspace

LABELS = ("surprisingly easy", "surprisingly hard", "mislabelled", "interesting circuit", "other")
COLUMNS = ("sample_id", "label", "note", "author")
_CANONICAL = {label.casefold(): label for label in LABELS}


class Imported(NamedTuple):
    added: int
    skipped: int  # rows already in the workspace, or earlier in the same file


def export_csv(workspace: Workspace, model: str | None = None, dataset: str | None = None) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["id", "model", "dataset", *COLUMNS, "created", "updated"])
    writer.writeheader()
    for a in workspace.annotations(model=model, dataset=dataset):
        writer.writerow({k: csv_cell(a[k]) for k in writer.fieldnames})
    return out.getvalue()


def import_csv(workspace: Workspace, text: str, model: str, dataset: str, name: str = "annotations.csv",
               known_ids: set[str] | None = None) -> Imported:
    """Add the rows of an annotations CSV the workspace does not hold yet, all in one transaction.
    Every row is checked first: a DataError lists every bad row and nothing is added."""
    rows, problems = [], []
    for i, rec in csv_records(text.lstrip("\ufeff"), name, ("sample_id", "label")):
        if isinstance(rec, Problem):
            problems.append(rec)
            continue
        row = tuple(csv_unescape((rec.get(c) or "").strip()) for c in COLUMNS)
        row_problems = _row_problems(row, known_ids)
        problems += [Problem(name, i, reason) for reason in row_problems]
        if not row_problems:
            rows.append((row[0], _CANONICAL[row[1].casefold()], *row[2:]))
    if problems:
        raise DataError(problems)
    return _add_new(workspace, model, dataset, rows)


def _row_problems(row: tuple[str, ...], known_ids: set[str] | None) -> list[str]:
    sid, label = row[0], row[1]
    out = []
    if not sid:
        out.append("empty sample_id")
    elif known_ids is not None and sid not in known_ids:
        out.append(f"unknown sample_id {sid!r}")
    if not label:
        out.append("empty label")
    elif label.casefold() not in _CANONICAL:
        out.append(f"unknown label {label!r}; use one of {', '.join(LABELS)}")
    return out


def _add_new(workspace: Workspace, model: str, dataset: str, rows: list[tuple[str, ...]]) -> Imported:
    """Insert the rows not stored yet; the check and the insert are one transaction, so a kill leaves
    all or nothing and two imports at once cannot both add the same row."""
    now = time.time()
    with workspace.transaction() as db:
        db.execute("BEGIN IMMEDIATE")  # take the write lock before reading what is stored
        seen = {tuple(r) for r in db.execute(f"SELECT {', '.join(COLUMNS)} FROM annotations WHERE model=? AND "
                                             "dataset=?", (model, dataset))}
        new = []
        for row in rows:
            if row not in seen:
                seen.add(row)
                new.append((model, dataset, *row, now, now))
        db.executemany(f"INSERT INTO annotations (model, dataset, {', '.join(COLUMNS)}, created, updated) "
                       "VALUES (?,?,?,?,?,?,?,?)", new)
    return Imported(len(new), len(rows) - len(new))
