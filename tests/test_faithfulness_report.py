"""`python -m cud_core faithfulness`: the anchors' faithfulness against circuit size, stored for the report."""
import shutil

import pytest

pytestmark = pytest.mark.usefixtures("allow_test_folders")  # see conftest.py


def test_anchor_faithfulness_is_the_engines_curve_and_reaches_the_report(app_setup, tmp_path, capsys):
    from cud_core.cli import main
    from cud_core.difficulty.cud import Anchors
    from cud_core.engine.attribution import mean_outputs
    from cud_core.engine.circuits import faithfulness_curve, from_vector
    from cud_core.engine.graph import Graph
    from cud_core.engine.models import load_model
    from cud_core.store.workspace import Workspace

    root = tmp_path / "ws"
    shutil.copytree(app_setup["workspace"], root)
    assert main(["faithfulness", "--workspace", str(root), "--model", app_setup["model"], "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    ws = Workspace(root)
    run = app_setup["calibration"]
    stored = ws.load_artifact(run, "faithfulness_anchors")
    labels = ws.load_artifact(run, "labels")["all"]
    samples = ws.load_samples(ws.load_artifact(run, "score_run"))
    lm = load_model(app_setup["model"], device="cpu")
    graph = Graph.from_model(lm.model)
    hard = sorted((s for s in samples if labels.get(s.id) == "hard"), key=lambda s: s.id)
    expected = faithfulness_curve(lm.model, lm.tokenizer, hard,
                                  [from_vector(Anchors.load(ws, run).hard_scores, graph)] * len(hard), graph,
                                  means=mean_outputs(lm.model, lm.tokenizer, samples[:32], graph))
    assert stored["n_members"]["hard"] == len(hard) > 0
    assert stored["hard"]["zero"] == pytest.approx(expected["zero"], abs=1e-5)
    assert stored["hard"]["mean"] == pytest.approx(expected["mean"], abs=1e-5)
    assert "n reaching 0.5" in table and f"hard ({len(hard)} members)" in table
    assert main(["report", "--workspace", str(root), "--format", "markdown"]) == 0
    assert "Faithfulness of the anchor circuits against circuit size" in capsys.readouterr().out
    assert main(["faithfulness", "--workspace", str(root), "--model", str(tmp_path)]) == 2  # not a model folder


def test_faithfulness_rows_say_never_for_a_level_not_reached_also_after_a_json_round_trip():
    import json

    from cud_core.pipeline.faithfulness import rows
    from cud_core.report.document import nan_to_null, null_to_nan
    from cud_core.report.validation import TEXT_KEYS

    curve = {"sizes": [10, 75], "zero": [0.1, 0.6], "mean": [0.2, 0.3],
             "reaches": {"zero": {"0.5": 75, "0.8": None}, "mean": {"0.5": None, "0.8": None}}}
    report = {"easy": curve, "n_members": {"easy": 2}, "missing": [float("nan")]}
    back = null_to_nan(json.loads(json.dumps(nan_to_null(report))), TEXT_KEYS)  # what `report --from-json` reads
    assert back["easy"]["reaches"] == curve["reaches"]  # "never" stays None, not NaN
    assert back["missing"][0] != back["missing"][0]  # a missing number comes back as NaN
    for r in (report, back):
        assert [(x["n reaching 0.5"], x["n reaching 0.8"], x["faithfulness at 75 edges"]) for x in rows(r)] == \
            [(75, "never", "0.60"), ("never", "never", "0.30")]
