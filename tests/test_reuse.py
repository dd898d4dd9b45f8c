"""A calibration that differs from an earlier one only in what unlearning does not depend on reuses
its unlearning curves, after rerunning their first steps; a stored curve the code does not
reproduce is run again (cud_core/pipeline/reuse.py)."""
import shutil

import pytest


@pytest.fixture()
def copy_of_app_workspace(app_setup, tmp_path):
    from cud_core.engine.models import load_model
    from cud_core.pipeline.context import RunContext
    from cud_core.pipeline.jobs import prepare_scenario
    from cud_core.store.workspace import Workspace

    shutil.copytree(app_setup["workspace"], tmp_path / "ws")
    sc = prepare_scenario(RunContext(load_model(app_setup["model"], device="cpu"), dataset=app_setup["data"]),
                          forget_fraction=0.5, seed=0)
    return sc, Workspace(tmp_path / "ws")


def _settings(**overrides):
    """conftest's app calibration with other labels, anchors and circuits (same unlearning)."""
    from cud_core.pipeline.calibration import CalibrationSettings
    from cud_core.pipeline.scoring import ScoreSettings

    return CalibrationSettings(**{"protocol": None,
                                  "methods": ("grad_diff", "npo", "simnpo"), "steps": 8, "lr": 1e-3, "eval_every": 2,
                                  "q": 0.5, "folds": 2, "n_boot": 200, "n_permutations": 0, "anchors": "per-method",
                                  "score": ScoreSettings(steps=2, n_edges=10, generation=False), **overrides})


def _unlearning_calls(monkeypatch):
    import cud_core.pipeline.unlearning as unlearning

    calls, original = [], unlearning.run_unlearning

    def counted(model, tokenizer, forget, retain, method, **kw):
        calls.append((method, kw["seed"]))
        return original(model, tokenizer, forget, retain, method, **kw)
    monkeypatch.setattr(unlearning, "run_unlearning", counted)
    return calls


def test_a_second_calibration_reuses_the_checked_curves(copy_of_app_workspace, app_setup, monkeypatch,
                                                        allow_test_folders):
    from cud_core.pipeline.calibration import calibrate
    from cud_core.pipeline.context import RunContext
    from cud_core.pipeline.reuse import TOLERANCE

    sc, ws = copy_of_app_workspace
    calls = _unlearning_calls(monkeypatch)
    # before: nothing of this calibration exists, but every unlearning run can be reused; the estimate
    # counts only the two-step checks for them
    from cud_core.pipeline.calibration import pending
    from cud_core.pipeline.estimate import describe_run, estimate_calibrate, probe_calibrate

    before = pending(sc.lm, sc.forget, sc.retain, _settings(), ws, app_setup["data"])
    assert before["scored"] == 0 and before["stored"] == [] and before["to_run"] == [] and not before["done"]
    assert sorted(before["reusable"]) == sorted((m, s) for m in ("grad_diff", "npo", "simnpo") for s in (0, 1))
    timing = probe_calibrate(sc.lm, sc.forget, _settings())  # one probe: the estimates differ only in what they count
    fresh = estimate_calibrate(sc.lm, sc.forget, sc.retain, _settings(), timing=timing)
    left = estimate_calibrate(sc.lm, sc.forget, sc.retain, _settings(), pending=before, timing=timing)
    assert 0 < left["stages"]["unlearning_s"] < fresh["stages"]["unlearning_s"] / 2
    assert "0 unlearning runs to run (0 stored, 6 reusable" in describe_run(left)
    run = calibrate(RunContext(sc.lm, ws, app_setup["data"]), sc.forget, sc.retain, _settings())
    after = pending(sc.lm, sc.forget, sc.retain, _settings(), ws, app_setup["data"])
    assert after["done"] and after["scored"] == len(sc.forget) and len(after["stored"]) == 6
    assert estimate_calibrate(sc.lm, sc.forget, sc.retain, _settings(), pending=after)["seconds"] == 0
    # MRD stored under an older definition: not done; the estimate counts MRD (not gradient norms or
    # hidden states) and the validation
    definitions = ws.load_artifact(run, "predictor_definitions")
    ws.save_artifact(run, "predictor_definitions", {**definitions, "mrd": "old"})
    stale = pending(sc.lm, sc.forget, sc.retain, _settings(), ws, app_setup["data"])
    assert stale["stale"] == ["mrd"] and not stale["done"] and not stale["predictors"]
    e = estimate_calibrate(sc.lm, sc.forget, sc.retain, _settings(), pending=stale, timing=timing)
    assert 0 < e["stages"]["predictors_s"] < fresh["stages"]["predictors_s"] and e["stages"]["validation_s"] > 0
    assert e["stages"]["scoring_s"] == e["stages"]["unlearning_s"] == 0
    assert "predictors stored under an older definition or missing (mrd)" in describe_run(e)
    ws.save_artifact(run, "predictor_definitions", definitions)
    donor = app_setup["calibration"]
    assert run != donor and ws.get_run(run)["status"] == "done" and calls == []
    for method in ("grad_diff", "npo", "simnpo"):
        for name in (f"curve-{method}", f"curve-{method}.seed1"):
            mine, theirs = ws.load_artifact(run, name), ws.load_artifact(donor, name)
            check = mine.pop("reuse_check")
            assert mine.pop("reused_from") == donor and mine == theirs
            assert check["steps"] == 2 and 0 <= check["max_relative_difference"] <= TOLERANCE
    # new samples are predicted with the headline's (per-method) anchors: for the calibration's own
    # samples that is their in-sample CUD
    from cud_core.pipeline.predict import predict

    predicted = predict(ws, ws.load_artifact(run, "score_run"), run)
    results = ws.load_results(run)
    assert predicted["anchors"] == "per-method" and set(predicted["cud"]) == set(results)
    for i, v in predicted["cud"].items():
        assert v == pytest.approx(results[i]["cud_in_sample"], abs=1e-6)
    timings = ws.load_artifact(run, "timings")
    assert set(timings["reused_unlearning"].values()) == {donor} and len(timings["reused_unlearning"]) == 6
    # other unlearning settings: nothing to reuse
    other = calibrate(RunContext(sc.lm, ws, app_setup["data"]), sc.forget, sc.retain,
                      _settings(steps=4, methods=("npo",), seeds=(0,)))
    assert "reused_unlearning" not in ws.load_artifact(other, "timings") and calls == [("npo", 0)]
    # the pages show the calibration the URL's `run` names (default: the newest); the sidebar offers
    # every finished one, and an unknown id is named
    from pagetest import app, shown

    def validation(**run):
        at = app("views/6_Validation.py", model=app_setup["model"], data=app_setup["data"], workspace=str(ws.root),
                 **run).run()
        assert not at.exception and not at.error
        return at, " ".join(shown(at.caption))
    at, text = validation()
    assert f"run `{other}`" in text
    picker = [b for b in at.sidebar.selectbox if b.label == "Shown calibration"][0]
    assert picker.options[0].startswith("default · eap-ig-inputs · ") and len(picker.options) == 3
    assert other in shown(at.sidebar.caption)
    at = picker.set_value(run).run()  # choosing one in the sidebar puts it into the URL
    assert f"run `{run}`" in " ".join(shown(at.caption))
    at, text = validation(run=donor)
    assert f"run `{donor}`" in text and not at.warning
    picker = [b for b in at.sidebar.selectbox if b.label == "Shown calibration"][0]
    at = picker.set_value(other).run()  # back to the newest: the URL pins nothing, so later ones show
    assert f"run `{other}`" in " ".join(shown(at.caption)) and "run" not in at.query_params
    at, text = validation(run="calibrate-none")
    assert f"run `{other}`" in text and "No finished calibration calibrate-none" in shown(at.warning)[0]


def test_a_stored_curve_the_code_does_not_reproduce_runs_again(copy_of_app_workspace, app_setup, monkeypatch):
    from cud_core.pipeline.calibration import calibrate
    from cud_core.pipeline.context import RunContext

    sc, ws = copy_of_app_workspace
    donor = app_setup["calibration"]
    curve = ws.load_artifact(donor, "curve-npo")
    curve["losses"][1] *= 1.001  # as if the loss had changed since
    ws.save_artifact(donor, "curve-npo", curve)
    calls = _unlearning_calls(monkeypatch)
    run = calibrate(RunContext(sc.lm, ws, app_setup["data"]), sc.forget, sc.retain, _settings())
    assert calls == [("npo", 0)]
    fresh = ws.load_artifact(run, "curve-npo")
    assert "reused_from" not in fresh and fresh["losses"][1] == pytest.approx(curve["losses"][1] / 1.001, rel=1e-5)
    assert ws.load_artifact(run, "curve-npo.seed1")["reused_from"] == donor
