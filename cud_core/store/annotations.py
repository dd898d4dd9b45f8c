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


# ----------------------------------------------------------------------------- an annotation session

ORDERS = {"surprise": "most surprising first", "cud": "by CUD (hardest first)", "id": "by id"}


def queue(ids: list[str], order: str, cud: dict[str, float] | None = None,
          hardness: dict[str, float] | None = None) -> list[str]:
    """The samples in annotation order. "surprise": the largest disagreement between the out-of-fold CUD and
    the realised hardness first, |rank(CUD) − rank(hardness)| / n (average ranks; samples without either
    last); "cud": highest CUD first; "id": by id."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    if order == "id" or not cud:
        return sorted(ids)
    if order == "cud":
        return sorted(ids, key=lambda i: (-cud.get(i, float("-inf")), i))
    both = [i for i in ids if i in cud and hardness and i in hardness]
    gap = dict(zip(both, surprise([cud[i] for i in both], [hardness[i] for i in both])))
    return sorted(both, key=lambda i: (-gap[i], i)) + sorted(i for i in ids if i not in gap)


def surprise(cud: list[float], hardness: list[float]) -> list[float]:
    """|rank(CUD) − rank(hardness)| / n per sample (0: CUD ranked it where it ended up)."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda j: v[j])
        r = [0.0] * len(v)
        j = 0
        while j < len(order):  # ties share their mean rank
            k = j
            while k + 1 < len(order) and v[order[k + 1]] == v[order[j]]:
                k += 1
            for m in range(j, k + 1):
                r[order[m]] = (j + k) / 2 + 1
            j = k + 1
        return r
    n = len(cud)
    return [abs(a - b) / n for a, b in zip(ranks(cud), ranks(hardness))]


def latest_labels(rows: list[dict]) -> dict[str, dict[str, str]]:
    """author -> sample id -> that author's latest label (annotations without an author are left out)."""
    out: dict[str, dict[str, tuple[float, str]]] = {}
    for r in rows:
        if r.get("author"):
            mine = out.setdefault(r["author"], {})
            if r["sample_id"] not in mine or r["created"] >= mine[r["sample_id"]][0]:
                mine[r["sample_id"]] = (r["created"], r["label"])
    return {a: {s: lab for s, (_, lab) in v.items()} for a, v in out.items()}


def cohen_kappa(a: dict[str, str], b: dict[str, str]) -> tuple[float, int]:
    """Cohen's κ (Cohen 1960) of two annotators over the samples both labelled, and that n:
    κ = (p_o − p_e) / (1 − p_e), p_o the share of agreements, p_e = Σ_k p_a(k)·p_b(k); NaN when n = 0 or
    p_e = 1 (both used one and the same label throughout)."""
    common = sorted(set(a) & set(b))
    n = len(common)
    if not n:
        return float("nan"), 0
    p_o = sum(a[i] == b[i] for i in common) / n
    labels = {a[i] for i in common} | {b[i] for i in common}
    p_e = sum((sum(a[i] == k for i in common) / n) * (sum(b[i] == k for i in common) / n) for k in labels)
    return (float("nan") if p_e == 1 else (p_o - p_e) / (1 - p_e)), n


def agreement(rows: list[dict]) -> list[dict]:
    """Cohen's κ and its n for every pair of authors who labelled at least one sample in common."""
    by_author = latest_labels(rows)
    names = sorted(by_author)
    out = []
    for j, x in enumerate(names):
        for y in names[j + 1:]:
            kappa, n = cohen_kappa(by_author[x], by_author[y])
            if n:
                out.append({"authors": f"{x} · {y}", "samples both labelled": n, "Cohen's κ": kappa})
    return out
