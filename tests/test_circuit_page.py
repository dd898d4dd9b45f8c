"""The Circuit page as a figure for a talk: a graph that fills its frame with a chosen
label size, a legend, SVG/PNG export, a circuit size that explains itself, and an explained faithfulness."""
import json
import re
import xml.etree.ElementTree as ET

import pytest
from pagetest import ready, shown

from cud_core.store.workspace import Workspace

PAGE = "views/2_Circuit.py"

pytestmark = pytest.mark.usefixtures("allow_test_folders")  # see conftest.py


@pytest.fixture
def downloads(monkeypatch):
    """File name -> bytes of every st.download_button of the last run (AppTest keeps them in memory)."""
    import streamlit.testing.v1.app_test as app_test
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    files = {}

    class Keeping(MemoryMediaFileStorage):
        def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
            files[filename] = path_or_data.encode() if isinstance(path_or_data, str) else path_or_data
            return super().load_and_get_id(path_or_data, mimetype, kind, filename)
    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Keeping)
    return files


def edges_shown(at) -> int:
    return int(at.dataframe[0].value["value"]["n_edges"])


def graph_html(at) -> str:
    [frame] = at.get("iframe")
    return frame.proto.srcdoc


def test_graph_fits_its_frame_with_the_chosen_label_size_and_a_legend(app_setup):
    at = ready(app_setup, PAGE, sample=app_setup["forget"][0])
    assert not at.exception, at.exception
    html = graph_html(at)
    assert "network.fit()" in html and '"size": 18' in html
    assert not re.search(r"<(link|script)[^>]+(href|src)=\"https?://", html)  # offline: no CDN tags
    assert '"physics": {\n        "enabled": false' in html
    label_size = next(s for s in at.slider if s.label == "Label size")
    label_size.set_value(30).run()
    assert '"size": 30' in graph_html(at) and '"size": 18' not in graph_html(at)
    legend = next(c for c in shown(at.caption) if c.startswith("Nodes:"))
    for text in ("input (embeddings)", "attention head", "MLP", "logits", "supports the answer", "works against it"):
        assert text in legend


def test_the_circuit_size_explains_itself(app_setup):
    at = ready(app_setup, PAGE, sample=app_setup["forget"][0])
    assert at.slider[0].label.startswith("Keep up to n edges")
    for n in (at.slider[0].value, 40):
        at.slider[0].set_value(n).run()
        note = next(c for c in shown(at.caption) if " of up to " in c)
        assert note.startswith(f"{edges_shown(at)} of up to {n} edges: greedy ")
        assert ("pruning dropped" in note) == (edges_shown(at) < n)


def test_svg_and_png_export_of_the_shown_circuit(app_setup, downloads):
    sample = app_setup["forget"][0]
    at = ready(app_setup, PAGE, sample=sample)
    assert [b.label for b in at.download_button][-2:] == ["Graph (SVG)", "Graph (PNG)"]
    circuit = json.loads(downloads[f"circuit_{sample}.json"])
    svg = ET.fromstring(downloads[f"circuit_{sample}.svg"])
    ns = {"svg": "http://www.w3.org/2000/svg"}
    nodes = svg.findall(".//svg:g[@class='node']", ns)
    assert sorted(g.find("svg:text", ns).text for g in nodes) == sorted(n["name"] for n in circuit["nodes"])
    edges = svg.findall(".//svg:line[@class='edge']", ns)
    assert sorted(e.find("svg:title", ns).text.split("\n")[0] for e in edges) == sorted(
        e["name"] for e in circuit["edges"])
    assert len(edges) == edges_shown(at) > 0
    assert downloads[f"circuit_{sample}.png"].startswith(b"\x89PNG\r\n\x1a\n")
    # the figure carries its context: the sample and its question above, the runs and settings below
    title = " ".join(t.text for t in svg.findall(".//svg:text[@class='title']", ns))
    question = next(r for r in Workspace(app_setup["workspace"]).load_samples(app_setup["calibration"])
                    if r.id == sample).question
    assert title.startswith(f"{sample}: {question} (out-of-fold CUD ")
    caption = " ".join(t.text for t in svg.findall(".//svg:text[@class='caption']", ns))
    assert app_setup["calibration"] in caption and "eap-ig-inputs attribution, 2 steps" in caption
    assert "cut greedily at up to 20 edges" in caption and "DEMO" not in caption


def test_the_overlay_legend_counts_every_edge(app_setup, downloads):
    sample = app_setup["forget"][0]
    at = ready(app_setup, PAGE, sample=sample)
    at.toggle[0].set_value(True).run()
    legend = next(c for c in shown(at.caption) if c.startswith("Nodes:"))
    counts = {k: int(n) for k, n in re.findall(r"(easy|hard|both|own): (\d+)", legend)}
    assert set(counts) == {"easy", "hard", "both", "own"} and sum(counts.values()) == edges_shown(at)
    assert "supports the answer" not in legend  # edge colour means anchor membership here, not sign
    svg = downloads[f"circuit_{sample}.svg"].decode()
    assert all(f"{k}: {n}" in svg for k, n in counts.items())


def test_faithfulness_is_explained_and_stays_shown(app_setup):
    at = ready(app_setup, PAGE, sample=app_setup["forget"][0])
    next(b for b in at.button if b.label == "Measure faithfulness").click().run()
    assert not at.exception, at.exception
    [metric] = at.metric
    note = next(c for c in shown(at.caption) if "(circuit − empty) / (clean − empty)" in c)
    assert "ablated with the zero baseline" in note and "0 = no better than ablating everything" in note
    clean, kept, empty = (float(x) for x in re.search(
        r"clean (-?\d+\.\d+), circuit (-?\d+\.\d+), empty (-?\d+\.\d+)", note).groups())
    assert float(metric.value) == pytest.approx((kept - empty) / (clean - empty), abs=0.02)
    next(s for s in at.slider if s.label == "Label size").set_value(24).run()  # another widget: still shown
    assert at.metric and at.metric[0].value == metric.value


def test_faithfulness_against_circuit_size_is_drawn_stored_and_matches_the_engine(app_setup):
    """The Circuit page's curve is cud_core.engine.circuits.faithfulness_curve of the sample's stored scores
    (recomputed here independently of the page), measured as a background job, stored in the workspace and
    shown again on reload."""
    from cud_core.engine.circuits import faithfulness_curve
    from cud_core.engine.models import load_model
    from cud_core.store.score_files import graph_of, load_sample_scores, sample_index
    from cud_core.store.workspace import Workspace
    from views.ui import state

    sample = app_setup["forget"][1]
    at = ready(app_setup, PAGE, sample=sample)
    next(b for b in at.button if b.label.startswith("Measure at n =")).click().run()
    assert not at.exception, at.exception
    job = next(j for j in state.jobs().jobs() if j.kind == "faithfulness")
    assert state.jobs().wait(job.id, 300).status == "done", job.error or job.message
    at.run()
    ws = Workspace(app_setup["workspace"])
    [score_run] = [r for r in ws.list_runs("score") if r["status"] == "done"][:1]
    stored = ws.load_artifact(score_run["id"], f"faithfulness-curve-{sample}")
    graph = graph_of(ws, score_run["id"])
    scores = load_sample_scores(ws, score_run["id"], sample, graph, sample_index(ws, score_run["id"]))
    lm = load_model(app_setup["model"], device="cpu")
    samples = ws.load_samples(score_run["id"])
    from cud_core.engine.attribution import mean_outputs
    expected = faithfulness_curve(lm.model, lm.tokenizer, [s for s in samples if s.id == sample], [scores], graph,
                                  means=mean_outputs(lm.model, lm.tokenizer, samples[:32], graph))
    assert stored["sizes"] == expected["sizes"] and stored["reaches"] == expected["reaches"]
    assert stored["zero"] == pytest.approx(expected["zero"], abs=1e-5)
    assert stored["mean"] == pytest.approx(expected["mean"], abs=1e-5)
    caption = next(c for c in shown(at.caption) if "ablation reaches 0.5 at n =" in c)
    assert "zero ablation" in caption and "mean ablation" in caption
    again = ready(app_setup, PAGE, sample=sample)  # a new session: read back from the workspace
    assert any("ablation reaches 0.5 at n =" in c for c in shown(again.caption))


@pytest.fixture(scope="module")
def scored_only(app_setup, tmp_path_factory):
    """A workspace holding only a scoring run of the app's model and facts (no calibration)."""
    from cud_core.data.samples import load_samples
    from cud_core.engine.models import load_model
    from cud_core.pipeline.context import RunContext
    from cud_core.pipeline.scoring import ScoreSettings, score_run
    from cud_core.store.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("scored-only") / "ws")
    samples = load_samples(app_setup["data"])[:2]
    score_run(RunContext(load_model(app_setup["model"], device="cpu"), ws, app_setup["data"]), samples,
              ScoreSettings(steps=2, n_edges=20,
                                                                                  generation=False))
    return {**app_setup, "workspace": str(ws.root), "samples": [s.id for s in samples]}


def test_without_a_calibration_there_is_no_one_option_show(scored_only):
    at = ready(scored_only, PAGE)
    assert not at.exception, at.exception
    assert not at.radio and [t.key for t in at.toggle] == ["present_toggle"]  # no overlay toggle
    assert any("anchor circuits can be shown here after a calibration" in c for c in shown(at.caption))
    assert at.selectbox[0].value in scored_only["samples"] and edges_shown(at) > 0


def test_an_anchor_view_has_its_own_header_not_the_samples(app_setup):
    from cud_core.difficulty.cud import Anchors
    from cud_core.store.workspace import Workspace

    sample = app_setup["forget"][0]
    at = ready(app_setup, PAGE, sample=sample)
    at.radio[0].set_value("hard anchor").run()
    assert not at.exception
    text = " ".join(shown(at.markdown))
    hard = Anchors.load(Workspace(app_setup["workspace"]), app_setup["calibration"]).hard_ids
    assert "Hard anchor" in text and f"of the {len(hard)} samples labelled hard" in text
    assert "**Q:**" not in " ".join(m.value for m in at.markdown)  # no sample question under the anchor
    assert any(", ".join(hard) in c for c in shown(at.caption))
    stats = at.dataframe[0].value["value"]
    assert "CUD" not in stats.index and stats["members"] == str(len(hard))
