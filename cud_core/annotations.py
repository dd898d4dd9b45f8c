"""Annotations as CSV: export, and import with row-level validation (nothing is half-imported)."""
from __future__ import annotations

import csv
import io

from .data import DataError, Problem
from .store import Workspace

LABELS = ("surprisingly easy", "surprisingly hard", "mislabelled", "interesting circuit", "other")
COLUMNS = ("sample_id", "label", "note", "author")


def export_csv(workspace: Workspace, model: str | None = None, dataset: str | None = None) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["id", "model", "dataset", *COLUMNS, "created", "updated"])
    writer.writeheader()
    for a in workspace.annotations(model=model, dataset=dataset):
        writer.writerow({k: a[k] for k in writer.fieldnames})
    return out.getvalue()


def import_csv(workspace: Workspace, text: str, model: str, dataset: str, name: str = "annotations.csv",
               known_ids: set[str] | None = None) -> int:
    """Add every row of an annotations CSV; a DataError lists every bad row and nothing is added."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = reader.fieldnames or []
    missing = [c for c in ("sample_id", "label") if c not in header]
    if missing:
        raise DataError([Problem(name, None, f"missing column{'s' * (len(missing) > 1)} {', '.join(missing)} "
                                             f"(header: {', '.join(header) or 'empty'})")])
    rows, problems = [], []
    for i, row in enumerate(reader, start=1):
        sid, label = (row.get("sample_id") or "").strip(), (row.get("label") or "").strip()
        if not sid:
            problems.append(Problem(name, i, "empty sample_id"))
        elif known_ids is not None and sid not in known_ids:
            problems.append(Problem(name, i, f"unknown sample_id {sid!r}"))
        if not label:
            problems.append(Problem(name, i, "empty label"))
        rows.append((sid, label, (row.get("note") or "").strip(), (row.get("author") or "").strip()))
    if problems:
        raise DataError(problems)
    for sid, label, note, author in rows:
        workspace.add_annotation(model, dataset, sid, label, note, author)
    return len(rows)
