"""The talk pack: one command writes an offline slideshow and each figure with its context."""
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from cud_core.cli import main
from cud_core.report.circuit_figure import settings_caption
from cud_core.report.talk import TOP, Slide, ranking_rows, slideshow_html
from cud_core.store.workspace import Workspace

NS = {"svg": "http://www.w3.org/2000/svg"}


def test_the_talk_pack_of_a_calibration(app_setup, tmp_path, capsys):
    ws = Workspace(app_setup["workspace"])
    cal = ws.get_run(app_setup["calibration"])
    out = tmp_path / "talk"
    assert main(["talk-pack", "--workspace", app_setup["workspace"], "--run", cal["id"], "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert not re.search(r"(src|href)=['\"]?https?:", page)  # offline: nothing fetched
    titles = re.findall(r"<h1>(.*?)</h1>", page)
    assert titles[0] == "Which forget samples will be hard to unlearn?"
    assert "The ranking: highest and lowest out-of-fold CUD" in titles
    assert any(t.startswith("The CUD-hardest sample") for t in titles)
    assert any(t.startswith("The CUD-easiest sample") for t in titles)
    assert "Forgetting by CUD bucket" in titles and "Validation (out-of-fold, 95% CIs)" in titles
    # the ranking's ends, by out-of-fold CUD, with their questions
    results = ws.load_results(cal["id"])
    ranked = sorted(results, key=lambda i: -results[i]["cud_oof"])
    rows = ranking_rows(ws, cal, top=2)
    assert [r["id"] for r in rows] == ranked[:2] + ranked[-2:]
    assert [r["rank"] for r in rows] == [1, 2, len(ranked) - 1, len(ranked)]
    # every figure is a file (SVG and PNG) and in the slideshow; the circuits carry the sample and the settings
    svgs = sorted((out / "figures").glob("*.svg"))
    assert len(svgs) == page.count("<svg ") and all(p.with_suffix(".png").read_bytes()[:4] == b"\x89PNG" for p in svgs)
    hardest = next(p for p in svgs if "circuit-cud-hardest" in p.name)
    svg = ET.parse(hardest).getroot()
    title = " ".join(t.text for t in svg.findall(".//svg:text[@class='title']", NS))
    assert title.startswith(f"{ranked[0]}: ") and "rank 1)" in title
    caption = " ".join(t.text for t in svg.findall(".//svg:text[@class='caption']", NS))
    assert cal["id"] in caption and "cut greedily at up to 20 edges" in caption
    forest = (out / "figures" / next(p.name for p in svgs if "validation-forest" in p.name)).read_text()
    assert "Spearman ρ with hardness" in forest and cal["id"] in forest
    assert "wrote" in capsys.readouterr().out
    # written again: the same figures, no stale ones
    main(["talk-pack", "--workspace", app_setup["workspace"], "--run", cal["id"], "--out", str(out), "--no-png"])
    assert sorted((out / "figures").glob("*.svg")) == svgs and not list((out / "figures").glob("*.png"))


def test_slides_escape_user_text_and_say_demo():
    page = slideshow_html([Slide("<b>q</b>", "c & d", text="<script>x</script>",
                                 table=[{"question": "<img src=x>"}])], "t")
    assert "<b>q</b>" not in page and "&lt;b&gt;q&lt;/b&gt;" in page and "&lt;img src=x&gt;" in page
    assert page.count("<script>") == 1  # the slideshow's own
    run = {"id": "score-1", "model": "m", "dataset": "d", "kind": "score",
           "config": {"method": "eap", "steps": 5, "baseline": "zero", "metric": "kl", "n_edges": 30}}
    demo = {"id": "cal-1", "config": {"preset": "demo"}}
    said = settings_caption(run, 30, demo)
    assert said.startswith("DEMO (not evidence) · m · d · scoring run score-1: eap attribution, zero baseline")
    assert "steps" not in settings_caption(run, 30)  # EAP has no integration steps
    assert TOP == 5


def test_talk_pack_refuses_an_unknown_run(app_setup, tmp_path, capsys):
    assert main(["talk-pack", "--workspace", app_setup["workspace"], "--run", "nope", "--out",
                 str(tmp_path / "x")]) == 2
    assert "nope" in capsys.readouterr().err and not Path(tmp_path / "x").exists()
