"""Annotation CSV export/import (cud_core.store.annotations) and the Annotations page's messages."""
import csv
import html
import io
import re
import sqlite3
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cud_core.data.samples import DataError
from cud_core.store.annotations import LABELS, export_csv, import_csv
from cud_core.store.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
HEADER = "sample_id,label,note,author\n"


def stored(ws):
    return [(a["sample_id"], a["label"], a["note"], a["author"]) for a in ws.annotations()]


def test_export_escapes_formula_cells_and_import_restores_them(tmp_path):
    ws = Workspace(tmp_path / "a")
    notes = ["=HYPERLINK(\"http://evil.example\")", "+1", "-2", "@SUM(A1)", "\tcmd", "\rcmd",
             "'=already quoted", "''+two quotes", "'plain quote", "safe = fine", "a-b"]
    for i, note in enumerate(notes):
        ws.add_annotation("m", "d", f"s{i}", "other", note, "-author")
    ws.add_annotation("m", "d", "=id", "other", "", "")
    text = export_csv(ws, "m", "d")
    cells = {r["sample_id"]: r for r in csv.DictReader(io.StringIO(text))}
    assert [cells[f"s{i}"]["note"] for i in range(len(notes))] == [
        "'=HYPERLINK(\"http://evil.example\")", "'+1", "'-2", "'@SUM(A1)", "'\tcmd", "'\rcmd",
        "''=already quoted", "'''+two quotes", "'plain quote", "safe = fine", "a-b"]
    assert cells["'=id"]["author"] == "" and cells["s0"]["author"] == "'-author"
    other = Workspace(tmp_path / "b")
    assert import_csv(other, text, "m", "d") == (len(notes) + 1, 0)
    assert stored(other) == stored(ws)


def test_import_is_one_transaction_all_or_nothing(tmp_path):
    ws = Workspace(tmp_path)
    text = HEADER + "".join(f"s{i},other,note {i},ann\n" for i in range(200_000))
    # a failure after 1,000 rows have been written (as a kill or a full disk would cause)
    with sqlite3.connect(ws.db_path) as db:
        db.execute("CREATE TRIGGER fail_mid_import BEFORE INSERT ON annotations "
                   "WHEN (SELECT count(*) FROM annotations) >= 1000 BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        import_csv(ws, text, "m", "d")
    assert ws.annotations() == []
    with sqlite3.connect(ws.db_path) as db:
        db.execute("DROP TRIGGER fail_mid_import")
    assert import_csv(ws, text, "m", "d") == (200_000, 0)
    assert len(ws.annotations(model="m", dataset="d")) == 200_000


def test_a_bad_row_anywhere_means_nothing_is_added(tmp_path):
    ws = Workspace(tmp_path)
    text = HEADER + "".join(f"s{i},other,,\n" for i in range(500)) + "s500,,,\n"
    with pytest.raises(DataError, match="row 501: empty label"):
        import_csv(ws, text, "m", "d", "mine.csv")
    assert ws.annotations() == []


def test_row_problems_name_the_row_and_reason(tmp_path):
    ws = Workspace(tmp_path)
    huge = "x" * (4 * 1024 * 1024 + 1)
    with pytest.raises(DataError) as err:
        import_csv(ws, HEADER + f"s1,other,ok,\ns2,other,\"{huge}\",\n", "m", "d", "huge.csv")
    assert [str(p) for p in err.value.problems] == ["huge.csv row 2: a cell is longer than 4,194,304 characters"]
    with pytest.raises(DataError) as err:
        import_csv(ws, HEADER + "s1,other,fine,ann\ns2,other,note,ann,extra\n", "m", "d", "extra.csv")
    assert [str(p) for p in err.value.problems] == ["extra.csv row 2: 5 cells but 4 columns"]
    with pytest.raises(DataError) as err:
        import_csv(ws, HEADER + "s1,Other,,\ns2,boring,,\n", "m", "d", "labels.csv")
    assert [str(p) for p in err.value.problems] == [
        "labels.csv row 2: unknown label 'boring'; use one of " + ", ".join(LABELS)]
    assert ws.annotations() == []
    long_note = "n" * 200_000  # over Python's default csv field limit of 131,072
    assert import_csv(ws, HEADER + f"s1,SURPRISINGLY Hard,{long_note},ann\n", "m", "d") == (1, 0)
    assert stored(ws) == [("s1", "surprisingly hard", long_note, "ann")]  # the canonical label


def test_reimporting_adds_nothing_and_duplicates_in_a_file_count_once(tmp_path):
    ws = Workspace(tmp_path)
    ws.add_annotation("m", "d", "s1", "surprisingly hard", "deep path", "ann")
    ws.add_annotation("m", "d", "s2", "other", "=1+1", "")
    ws.add_annotation("other-model", "d", "s1", "other", "", "")
    assert import_csv(ws, export_csv(ws, "m", "d"), "m", "d") == (0, 2)
    text = HEADER + "s3,other,new,\ns3,other,new,\ns3,other,different,\ns1,surprisingly hard,deep path,ann\n"
    assert import_csv(ws, text, "m", "d") == (2, 2)
    assert sorted(stored(ws)) == [("s1", "other", "", ""), ("s1", "surprisingly hard", "deep path", "ann"),
                                  ("s2", "other", "=1+1", ""), ("s3", "other", "different", ""),
                                  ("s3", "other", "new", "")]
    assert import_csv(ws, export_csv(ws, "m", "d"), "m", "other-data") == (4, 0)  # another dataset's rows


# ----------------------------------------------------------------------------- the page

HOSTILE = "![x](http://attacker.example/p.png)<img src=http://attacker.example/q.png>"


def rendered_text(markdown: str) -> str:
    """What a CommonMark renderer shows for `markdown`; fails if it would show an image or a link."""
    markdown_it = pytest.importorskip("markdown_it")
    out = markdown_it.MarkdownIt("commonmark").render(markdown)
    assert "<img" not in out and "<a " not in out, out
    return html.unescape(re.sub(r"<[^>]+>", "", out)).strip()


def page(tmp_path) -> AppTest:
    at = AppTest.from_file(str(ROOT / "views/5_Annotations.py"), default_timeout=60)
    at.query_params.update(model=HOSTILE, data=HOSTILE, workspace=str(tmp_path / "ws"))
    return at.run()


def test_annotations_page_shows_user_text_literally(tmp_path, allow_test_folders):
    at = page(tmp_path)
    assert not at.exception
    assert rendered_text(at.caption[0].value).startswith(f"{HOSTILE} · {HOSTILE} · stored in ")
    next(t for t in at.text_input if t.label == "Sample id").set_value(HOSTILE)  # no scored samples: typed
    next(b for b in at.button if b.label == "Save annotation").click().run()
    assert not at.exception
    assert at.success[0].value == (r"Saved: \!\[x\]\(http\:\/\/attacker\.example\/p\.png\)\<img src\=http\:\/\/"
                                   r"attacker\.example\/q\.png\> — surprisingly easy")
    assert rendered_text(at.success[0].value) == f"Saved: {HOSTILE} — surprisingly easy"

    name = f"{HOSTILE}.csv"
    at.file_uploader[0].set_value((name, b"sample_id,label\ns1,nonsense\n", "text/csv")).run()
    assert rendered_text(at.error[0].value) == f"{name} has 1 problem(s); nothing was imported."
    at.file_uploader[0].set_value((name, (HEADER + f"{HOSTILE},surprisingly easy,,\ns2,other,,\n").encode(),
                                   "text/csv")).run()
    assert not at.exception and not at.error
    assert rendered_text(at.success[0].value) == (f"Imported 1 annotation(s) from {name}; "
                                                  "1 already present were skipped.")
    rows = Workspace(tmp_path / "ws").annotations(model=HOSTILE, dataset=HOSTILE)
    assert sorted(a["sample_id"] for a in rows) == sorted([HOSTILE, "s2"])


def test_annotation_queue_orders_by_surprise_cud_or_id():
    from cud_core.store.annotations import queue, surprise

    ids = ["a", "b", "c", "d"]
    cud = {"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.3}
    hard = {"a": 0.0, "b": 3.0, "c": 2.0, "d": 1.0}  # a: CUD-hardest, realised easiest
    # ranks CUD a4 b1 c3 d2, hardness a1 b4 c3 d2 → |Δ|/4: a 0.75, b 0.75, c 0, d 0
    assert surprise([cud[i] for i in ids], [hard[i] for i in ids]) == [0.75, 0.75, 0.0, 0.0]
    assert queue(ids, "surprise", cud, hard) == ["a", "b", "c", "d"]
    assert queue(ids + ["e"], "surprise", cud, hard)[-1] == "e"   # no outcome: last
    assert queue(ids, "cud", cud) == ["a", "c", "d", "b"]
    assert queue(["b", "a"], "id") == ["a", "b"]
    with pytest.raises(ValueError, match="unknown order"):
        queue(ids, "random", cud, hard)


def test_cohens_kappa_matches_sklearn_and_a_hand_computation():
    from sklearn.metrics import cohen_kappa_score

    from cud_core.store.annotations import agreement, cohen_kappa

    a = {"s1": "x", "s2": "x", "s3": "y", "s4": "y", "s5": "x"}
    b = {"s1": "x", "s2": "y", "s3": "y", "s4": "y", "s6": "x"}
    kappa, n = cohen_kappa(a, b)
    # common s1..s4: agree 3/4; p_a(x) = 1/2, p_b(x) = 1/4 → p_e = 1/8 + 3/8 = 1/2 → κ = (0.75 − 0.5)/0.5
    assert n == 4 and kappa == pytest.approx(0.5)
    common = ["s1", "s2", "s3", "s4"]
    assert kappa == pytest.approx(cohen_kappa_score([a[i] for i in common], [b[i] for i in common]))
    same, one = cohen_kappa({"s1": "x"}, {"s1": "x"})
    assert same != same and one == 1      # p_e = 1: κ undefined (NaN)
    none, zero = cohen_kappa(a, {"z": "x"})
    assert none != none and zero == 0
    rows = [{"author": "ann", "sample_id": i, "label": v, "created": 1.0} for i, v in a.items()]
    rows += [{"author": "bo", "sample_id": i, "label": v, "created": 1.0} for i, v in b.items()]
    rows += [{"author": "bo", "sample_id": "s2", "label": "x", "created": 2.0},   # bo changed their mind
             {"author": "", "sample_id": "s1", "label": "y", "created": 3.0}]    # anonymous: not counted
    [pair] = agreement(rows)
    assert pair["authors"] == "ann · bo" and pair["samples both labelled"] == 4
    assert pair["Cohen's κ"] == pytest.approx(1.0)   # with bo's latest s2 = x, all four agree
