"""Unlearning regimes: efficacy and held-out utility by hand, the operating point, the learning-rate search,
and methods without a valid point kept out of the labels."""
import math

import pytest

from cud_core.cli import main
from cud_core.data.samples import Sample
from cud_core.difficulty import regimes
from cud_core.difficulty.regimes import COLLAPSED, INERT, VALID, Protocol
from cud_core.engine.tiny import tiny_model
from cud_core.pipeline.calibration import CalibrationSettings, calibrate, split_holdout
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.outcomes import curve_artifact, load_outcomes, load_regimes
from cud_core.pipeline.unlearning import curve_payload, protocol_search
from cud_core.report.validation import README as report_section
from cud_core.report.validation import regimes_only
from cud_core.store.workspace import Workspace
from cud_core.unlearn.runner import held_out_utility, run_unlearning

FACTS = [Sample(f"Where was person {i} born?", f"Person {i} was born in city {i}.", id=f"f{i}") for i in range(12)]


def curve(probs, holdout_nll, steps=None):
    """A stored curve of two samples a, b with answer probabilities `probs` per evaluation (NLL = −log p)."""
    steps = steps or list(range(0, 5 * len(probs), 5))
    return {"steps": steps, "settings": {"lr": 1e-5},
            "curve": [{k: -math.log(v) for k, v in p.items()} for p in probs], "prob_curve": probs,
            "holdout": [{"nll": h, "exact_match": 0.5} for h in holdout_nll]}


def test_efficacy_by_hand():
    nll0, prob0 = {"a": 0.5, "b": 1.0, "c": 2.0}, {"a": 0.6, "b": 0.4, "c": 0.2}
    nll, prob = {"a": 3.0, "b": 1.5, "c": 2.0}, {"a": 0.05, "b": 0.2, "c": 0.02}
    e = regimes.efficacy(nll, prob, nll0, prob0, threshold=0.1)
    # ratios 0.05/0.6 = 0.0833, 0.2/0.4 = 0.5, 0.02/0.2 = 0.1: median 0.1; a and c below 0.1: 2/3
    assert e["relative_prob"] == pytest.approx(0.1)
    assert e["share_forgotten"] == pytest.approx(2 / 3)
    assert e["mean_delta_nll"] == pytest.approx((2.5 + 0.5 + 0.0) / 3)
    # a sample below the threshold from the start was never forgotten: it leaves the share's denominator
    e = regimes.efficacy(nll, prob, nll0, {**prob0, "b": 0.05}, threshold=0.1)
    assert e["share_forgotten"] == pytest.approx(1.0)  # a and c, of the two known
    assert regimes.efficacy(nll, prob, nll0, {k: 0.01 for k in prob0}, 0.1)["share_forgotten"] == 0.0


def test_held_out_utility_by_hand():
    rows = [{"answer_nll": 0.5, "exact_match": 1.0}, {"answer_nll": 1.5, "exact_match": 0.25}]
    assert held_out_utility(rows) == {"nll": pytest.approx(1.0), "exact_match": pytest.approx(0.625)}


def test_the_operating_point_is_the_first_valid_evaluation():
    p = Protocol(efficacy=0.5, utility_bound=0.25, threshold=0.1)
    probs = [{"a": 0.9, "b": 0.9}, {"a": 0.5, "b": 0.9}, {"a": 0.05, "b": 0.9}, {"a": 0.01, "b": 0.01}]
    assert regimes.verdict(curve(probs, [1.0, 1.1, 1.2, 1.3]), p) == (VALID, 2)  # 1.2 ≤ 1.25
    # utility broken (1.3 > 1.25) before half the samples are forgotten: collapsed
    assert regimes.verdict(curve(probs, [1.0, 1.3, 1.0, 1.0]), p) == (COLLAPSED, None)
    assert regimes.verdict(curve(probs[:2], [1.0, 1.0]), p) == (INERT, None)
    point = regimes.point_summary(curve(probs, [1.0, 1.1, 1.2, 1.3]), 2, p)
    assert point["step"] == 10 and point["share_forgotten"] == 0.5 and point["holdout_nll"] == 1.2
    assert point["relative_prob"] == pytest.approx((0.05 / 0.9 + 1.0) / 2)


def test_the_utility_bound_by_hand_in_both_versions():
    """Version 2: at most ln(1.25) = 0.2231 nats above step 0's NLL; version 1 (reports stored before it,
    whose protocol has no "version"): at most 25% above it."""
    v2 = Protocol()
    assert v2.version == 2 and regimes.allowed_rise(0.046, v2) == pytest.approx(0.22314, abs=1e-5)
    assert regimes.within_bound(0.046 + 0.22, 0.046, v2) and not regimes.within_bound(0.046 + 0.23, 0.046, v2)
    v1 = Protocol.from_dict({k: v for k, v in v2.as_dict().items() if k != "version"})
    assert v1.version == 1 and regimes.allowed_rise(0.046, v1) == pytest.approx(0.0115)
    assert not regimes.within_bound(0.06, 0.046, v1) and regimes.within_bound(0.06, 0.046, v2)
    assert regimes.within_bound(0.97, 0.7785, v1) and not regimes.within_bound(0.98, 0.7785, v1)
    assert Protocol.from_dict(v2.as_dict()) == v2
    assert "0.22 nats" in regimes.bound_text(v2) and "80%" in regimes.bound_text(v2.as_dict())
    assert "+25%" in regimes.bound_text(v1)


def test_the_learning_rate_search_follows_the_stated_grid():
    p = Protocol(up=(2.5, 5.0), down=(0.4,))
    assert regimes.next_lr(1.0, [], p) == 1.0
    assert regimes.next_lr(1.0, [(1.0, INERT)], p) == 2.5
    assert regimes.next_lr(1.0, [(1.0, INERT), (2.5, INERT)], p) == 5.0
    assert regimes.next_lr(1.0, [(1.0, INERT), (2.5, INERT), (5.0, INERT)], p) is None  # grid used up
    assert regimes.next_lr(1.0, [(1.0, COLLAPSED)], p) == 0.4
    assert regimes.next_lr(1.0, [(1.0, COLLAPSED), (0.4, COLLAPSED)], p) is None
    assert regimes.next_lr(1.0, [(1.0, INERT), (2.5, COLLAPSED)], p) is None  # no valid window
    assert regimes.next_lr(1.0, [(1.0, VALID)], p) is None


def test_protocol_search_keeps_the_valid_try_and_records_every_one():
    inert = curve([{"a": 0.9, "b": 0.9}, {"a": 0.8, "b": 0.9}], [1.0, 1.0])
    valid = curve([{"a": 0.9, "b": 0.9}, {"a": 0.05, "b": 0.9}], [1.0, 1.1])
    tried = []

    def run_one(lr, k):
        tried.append((lr, k))
        return {**(inert if k == 0 else valid), "settings": {"lr": lr}}
    out = protocol_search(run_one, 1e-5, Protocol())
    assert tried == [(1e-5, 0), (2.5e-5, 1)]
    assert out["verdict"] == VALID and out["point"] == 1 and out["settings"]["lr"] == 2.5e-5
    assert [(s["lr"], s["verdict"]) for s in out["search"]] == [(1e-5, INERT), (2.5e-5, VALID)]
    # a later seed runs at the rate given, once, whatever it finds
    tried.clear()
    assert protocol_search(run_one, 1e-5, Protocol(), fixed=3e-5)["verdict"] == INERT and tried == [(3e-5, 0)]


def test_an_inert_run_ends_at_its_budget_and_a_found_point_ends_the_run():
    lm = tiny_model("llama", d_model=32, n_layers=1)
    forget, retain, holdout = FACTS[:4], FACTS[4:8], FACTS[8:]
    inert = run_unlearning(lm.model, lm.tokenizer, forget, retain, "grad_diff", steps=4, lr=0.0, eval_every=2,
                           holdout=holdout, stop_when=regimes.stop_rule())
    payload = curve_payload(inert)
    assert payload["steps"] == [0, 2, 4] and not payload["ended_early"] and len(payload["holdout"]) == 3
    assert regimes.verdict(payload) == (INERT, None)
    assert payload["holdout"][0] == pytest.approx(payload["holdout"][-1])  # lr 0 changes nothing
    assert 0 <= payload["holdout_rouge"] <= 1
    # a rule that is satisfied at the first evaluation past step 0 ends training there
    early = run_unlearning(lm.model, lm.tokenizer, forget, retain, "grad_diff", steps=8, lr=1e-3, eval_every=2,
                           holdout=holdout, stop_when=lambda r: True)
    assert early.steps == [0, 2] and early.ended_early and len(early.losses) == 2


def test_a_method_without_a_valid_point_does_not_vote(tmp_path):
    ws = Workspace(tmp_path)
    settings = CalibrationSettings(methods=("grad_diff", "npo"), seeds=(0, 1))
    config = settings.config()
    run = ws.create_run("calibrate", "m", "d", config)
    probs = [{"a": 0.9, "b": 0.8}, {"a": 0.05, "b": 0.5}, {"a": 0.01, "b": 0.01}]
    for seed in (0, 1):
        good = curve(probs, [1.0, 1.1, 1.2])
        ws.save_artifact(run, curve_artifact("grad_diff", seed, (0, 1)), {**good, "verdict": VALID, "point": 1})
    ws.save_artifact(run, curve_artifact("npo", 0, (0, 1)),
                     {**curve(probs[:2], [1.0, 2.0]), "verdict": COLLAPSED, "point": None, "search": []})
    ws.save_artifact(run, curve_artifact("npo", 1, (0, 1)), {"skipped": "npo found no valid operating point"})
    outcomes, _ = load_outcomes(ws, run, config)
    assert list(outcomes) == ["grad_diff"]
    # read at the operating point (step 5), not at the last evaluation: b is not forgotten by then
    assert outcomes["grad_diff"][0]["b"] == {"nll_after": pytest.approx(-math.log(0.5)),
                                             "delta_nll": pytest.approx(math.log(0.8 / 0.5)), "forgotten_at": 6}
    assert outcomes["grad_diff"][0]["a"]["forgotten_at"] == 5
    found = load_regimes(ws, run, config)
    assert found["grad_diff"]["functional"] and found["grad_diff"]["seeds"]["0"]["step"] == 5
    assert not found["npo"]["functional"] and found["npo"]["lr"] is None
    assert found["npo"]["seeds"]["1"]["verdict"] == "skipped"
    table = regimes.rows(found)  # one row per method and seed, every row with every column
    assert len(table) == 4 and len({tuple(r) for r in table}) == 1 and table[-1]["lr"] == "–"


def test_a_calibration_at_lr_0_has_no_functional_method_and_says_so(tmp_path, capsys):
    lm = tiny_model("llama", d_model=32, n_layers=1)
    from cud_core.pipeline.scoring import ScoreSettings
    settings = CalibrationSettings(methods=("grad_diff", "simnpo"), steps=2, lr=0.0, eval_every=1, q=0.25,
                                   seeds=(0,), score=ScoreSettings(steps=1, n_edges=10, generation=False))
    ws = Workspace(tmp_path)
    with pytest.raises(ValueError, match="no unlearning method reached a valid operating point"):
        calibrate(RunContext(lm, ws, "facts"), FACTS[:6], FACTS[6:], settings)
    run = ws.list_runs("calibrate")[0]["id"]
    found = ws.load_artifact(run, "validation_report")["regimes"]
    for method in settings.methods:  # lr 0 and every multiple of it: inert along the whole grid
        assert not found[method]["functional"]
        assert [s["verdict"] for s in found[method]["search"]] == [INERT] * 3
    assert ws.get_run(run)["status"] == "failed"
    # the negative result is a report of its own: the regimes, no labels (and only when asked for by --run)
    stored = ws.load_artifact(run, "validation_report")
    assert regimes_only(stored) and stored["voting_methods"] == []
    assert main(["report", "--workspace", str(tmp_path), "--run", run, "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "### Unlearning regimes" in out and "there are no labels" in out and "| grad_diff | 0 | inert |" in out
    assert main(["report", "--workspace", str(tmp_path), "--format", "markdown"]) == 2
    capsys.readouterr()
    assert main(["report", "--workspace", str(tmp_path), "--run", run, "--format", "json"]) == 0
    stored_json = tmp_path / "negative.json"
    stored_json.write_text(capsys.readouterr().out)
    readme = tmp_path / "README.md"
    readme.write_text(f"{report_section.begin}\n{report_section.end}\n")
    assert main(["report", "--from-json", str(stored_json), "--readme", str(readme), "--format", "markdown"]) == 0
    assert "there are no labels" in readme.read_text() and "| simnpo | 0 | inert |" in readme.read_text()


def test_the_holdout_is_a_seeded_quarter_of_the_retain_set_at_most_32():
    settings = CalibrationSettings()
    train, held = split_holdout(FACTS, settings)
    assert len(held) == 3 and len(train) == 9 and not {s.id for s in held} & {s.id for s in train}
    assert split_holdout(FACTS, settings) == (train, held)
    many = [Sample("q", "a", id=str(i)) for i in range(400)]
    assert len(split_holdout(many, settings)[1]) == 32
    assert split_holdout(FACTS, CalibrationSettings(protocol=None)) == (FACTS, [])
    with pytest.raises(ValueError, match="at least 4 retain samples"):
        split_holdout(FACTS[:3], settings)


def test_the_report_shows_every_method_its_point_and_the_methods_that_voted(tmp_path):
    from cud_core.report import charts
    from cud_core.report.validation import regime_rows, regimes_note, runs_in

    ws = Workspace(tmp_path)
    settings = CalibrationSettings(methods=("grad_diff", "npo"), seeds=(0,))
    run = ws.create_run("calibrate", "m", "d", settings.config())
    probs = [{"a": 0.9, "b": 0.8}, {"a": 0.05, "b": 0.5}, {"a": 0.01, "b": 0.01}]
    good = curve(probs, [1.0, 1.1, 1.2])
    ws.save_artifact(run, curve_artifact("grad_diff", 0, (0,)), {
        **good, "verdict": VALID, "point": 1, "holdout_rouge": 0.75,
        "search": [{"lr": 1e-5, "verdict": VALID, "point": 1, "trajectory": regimes.trajectory(good)}]})
    bad = curve(probs[:2], [1.0, 2.0])
    ws.save_artifact(run, curve_artifact("npo", 0, (0,)), {
        **bad, "verdict": COLLAPSED, "point": None,
        "search": [{"lr": 1e-5, "verdict": COLLAPSED, "point": None, "trajectory": regimes.trajectory(bad)}]})
    found = load_regimes(ws, run, settings.config())
    table = regime_rows(found)
    assert [(r["method"], r["verdict"], r["step"]) for r in table] == [("grad_diff", VALID, "5"),
                                                                        ("npo", COLLAPSED, "5")]
    assert table[0]["held-out NLL (step 0 → here)"] == "1.00 → 1.10" and table[0]["held-out ROUGE-L"] == "– → 0.75"
    assert regimes.sentence(found) == ("The labels rest on 1 of 2 unlearning methods, each at its operating point: "
                                       "grad_diff; not functional at this budget: npo (collapsed).")
    assert runs_in(found) == 2  # one rate tried by each first seed, no later seed
    frame = charts.regimes_frame(found)
    assert len(frame) == 5 and frame["operating point"].sum() == 1
    spec = charts.regimes(found, Protocol().as_dict()).to_dict()
    assert spec["facet"]["field"] == "method"
    at_point = frame[frame["operating point"]]["held-out NLL − step 0"]
    assert at_point.tolist() == pytest.approx([0.1])  # grad_diff's point: 1.00 → 1.10

    def data(node):  # every constant ("datum") the chart's encodings place: the two dashed rules
        if isinstance(node, dict):
            return ([node["datum"]] if "datum" in node else []) + [d for v in node.values() for d in data(v)]
        return [d for v in node for d in data(v)] if isinstance(node, list) else []
    assert sorted(data(spec)) == pytest.approx([0.22314, 0.5], abs=1e-5)
    assert "predate" in regimes_note({}) and "fixed-steps" in regimes_note({"regimes": {}})


def test_each_forget_set_s_run_is_its_own_line():
    """In a pooled calibration each method tried its rate on every set: one line per set's run, not one line
    through all of them."""
    from cud_core.difficulty.regimes import Protocol
    from cud_core.report import charts

    def trajectory(shares, rises):
        return [{"step": 5 * k, "share_forgotten": s, "holdout_nll": 1.0 + r, "holdout_nll_0": 1.0}
                for k, (s, r) in enumerate(zip(shares, rises))]
    found = {"npo": {"search": [
        {"lr": 2e-5, "verdict": "valid", "point": 1, "forget_set": 1, "trajectory": trajectory([0, .6], [0, .1])},
        {"lr": 2e-5, "verdict": "valid", "point": 2, "forget_set": 2,
         "trajectory": trajectory([0, .3, .7], [0, 0, .2])},
    ]}}
    frame = charts.regimes_frame(found)
    assert frame.groupby("attempt").size().to_dict() == {"0 · set 1": 2, "1 · set 2": 3}
    assert set(frame["forget set"]) == {"set 1", "set 2"} and set(frame["lr"]) == {"2e-05 (valid)"}
    spec = charts.regimes(found, Protocol().as_dict()).to_dict()
    lines = spec["spec"]["layer"][0]
    assert lines["mark"]["type"] == "line" and lines["encoding"]["detail"]["field"] == "attempt"


def test_a_single_runs_regime_is_read_from_its_evaluations():
    from cud_core.pipeline.unlearning import held_out, regime_of, regime_text

    def evaluations(probs, holdout_nll):
        c = curve(probs, holdout_nll)
        return [{"step": s, "forget_nll": n, "forget_prob": p, "holdout": h}
                for s, n, p, h in zip(c["steps"], c["curve"], c["prob_curve"], c["holdout"])]
    probs = [{"a": 0.9, "b": 0.9}, {"a": 0.05, "b": 0.9}, {"a": 0.01, "b": 0.01}]
    valid = regime_of(evaluations(probs, [1.0, 1.2, 2.0]))
    assert valid["verdict"] == VALID and valid["point"] == 1
    assert regime_text(valid).startswith("Operating point at step 5") and "1.00 → 1.20" in regime_text(valid)
    collapsed = regime_of(evaluations(probs, [1.0, 1.5, 1.0]))
    assert regime_text(collapsed).startswith("Collapsed at step 5: held-out NLL 1.00 → 1.50")
    assert regime_text(regime_of(evaluations(probs[:1] * 3, [1.0] * 3))).startswith("Inert")
    old = [{k: v for k, v in e.items() if k != "holdout"} for e in evaluations(probs, [1.0] * 3)]
    assert regime_of(old)["verdict"] is None and regime_text(regime_of(old)).startswith("No held-out facts")
    assert regime_of(old)["trajectory"][2]["share_forgotten"] == 1.0
    # a single run holds out the same seeded quarter a calibration does; none below 4 retain samples
    assert len(held_out(FACTS, 0)[1]) == 3 and held_out(FACTS[:3], 0) == (FACTS[:3], [])


def test_the_validation_page_shows_a_newer_negative_result_first(app_setup, tmp_path, allow_test_folders):
    import shutil
    import time

    from pagetest import app, shown

    root = tmp_path / "ws"
    shutil.copytree(app_setup["workspace"], root)
    ws = Workspace(root)
    done = ws.get_run(app_setup["calibration"])
    time.sleep(1.1)  # a newer run (created is in seconds)
    neg = ws.create_run("calibrate", done["model"], done["dataset"], {**done["config"], "steps": 99})
    probs = [{"a": 0.9, "b": 0.8}, {"a": 0.5, "b": 0.5}]
    bad = curve(probs, [1.0, 2.0])
    found = {"npo": {"functional": False, "lr": None, "search": [
        {"lr": 1e-5, "verdict": COLLAPSED, "point": None, "trajectory": regimes.trajectory(bad)}],
        "seeds": {"0": {"verdict": COLLAPSED, "lr": 1e-5, "holdout_rouge": None, "holdout_rouge_0": 0.9,
                        **regimes.point_summary(bad, 1)}}}}
    ws.save_artifact(neg, "validation_report", {"regimes": found, "protocol": Protocol().as_dict(), "verdict":
                                                "No unlearning method reached a valid operating point."})
    ws.set_status(neg, "failed", "no unlearning method reached a valid operating point")
    at = app("views/6_Validation.py", model=app_setup["model"], data=app_setup["data"], workspace=str(root)).run()
    assert not at.exception, at.exception
    assert any(neg in w and "No unlearning method reached" in w and app_setup["calibration"] in w
               for w in shown(at.warning))
    assert "Unlearning regimes: did each method forget, and what did it cost?" in [s.value for s in at.subheader]


def test_a_calibration_is_read_under_the_protocol_it_ran_under():
    from cud_core.difficulty.regimes import PROTOCOL
    from cud_core.pipeline.unlearning import run_protocol

    stored_v1 = {k: v for k, v in PROTOCOL.as_dict().items() if k != "version"}  # stored before versions existed
    assert run_protocol({"config": {"protocol": stored_v1}}).version == 1
    assert run_protocol({"config": {"protocol": PROTOCOL.as_dict()}}) == PROTOCOL
    assert run_protocol({"config": {"protocol": None}}) == PROTOCOL and run_protocol(None) == PROTOCOL
