"""Several disjoint forget sets, each unlearned on its own, outcomes pooled (`forget_sets`): the split, the
join of stored outcomes and regimes, and a tiny calibration end to end against runs of each set alone."""
import json
import math
from dataclasses import replace

import pytest
from test_regimes import curve
from test_unlearning import FACTS

from cud_core.cli import main
from cud_core.difficulty.prospective import split_parts
from cud_core.difficulty.regimes import COLLAPSED, VALID
from cud_core.engine.tiny import tiny_model
from cud_core.pipeline.calibration import CalibrationSettings, calibrate
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.finetune import FinetuneSettings, finetune
from cud_core.pipeline.outcomes import (
    PART_KIND,
    SETS_ARTIFACT,
    curve_artifact,
    kept,
    left,
    load_outcomes,
    load_regimes,
)
from cud_core.pipeline.prospective import PHASE_KIND, ProspectiveSettings, estimate, validate_prospective
from cud_core.pipeline.scoring import ScoreSettings
from cud_core.report.prospective import README
from cud_core.report.validation import runs_in, settings_line, timings_line
from cud_core.store.workspace import Workspace
from cud_core.unlearn.runner import run_unlearning


def test_split_parts_deals_each_nll_block_across_the_sets():
    nll = {f"s{i}": float((7 * i) % 23) for i in range(23)}
    parts = split_parts(list(nll), nll, 4, seed=0)
    assert sorted(i for p in parts for i in p) == sorted(nll) and sorted(map(len, parts)) == [5, 6, 6, 6]
    order = sorted(nll, key=lambda i: (nll[i], i))
    where = {i: k for k, p in enumerate(parts) for i in p}
    for j in range(0, 20, 4):  # each full block of 4 in NLL order has one sample in every set
        assert sorted(where[i] for i in order[j:j + 4]) == [0, 1, 2, 3]
    assert all(p == sorted(p, key=lambda i: (nll[i], i)) for p in parts)
    assert split_parts(list(nll), nll, 4, seed=0) == parts != split_parts(list(nll), nll, 4, seed=1)
    with pytest.raises(ValueError, match="3 samples cannot be cut into 4"):
        split_parts(["a", "b", "c"], nll, 4)


def test_pooled_outcomes_and_regimes_join_the_sets(tmp_path):
    ws = Workspace(tmp_path)
    settings = CalibrationSettings(methods=("grad_diff", "npo"), seeds=(0, 1), forget_sets=2)
    config = settings.config()
    assert config["forget_sets"] == 2 and "forget_sets" not in CalibrationSettings().config()  # old keys kept
    parent = ws.create_run("calibrate", "m", "d", config)
    single = CalibrationSettings(methods=("grad_diff", "npo"), seeds=(0, 1)).config()
    runs = []
    for k, (a, b) in enumerate((("a", "b"), ("c", "d"))):
        run = ws.create_run(PART_KIND, "m", "d", {**single, "forget_set": k + 1})
        probs = [{a: 0.9, b: 0.8}, {a: 0.05, b: 0.5}, {a: 0.01, b: 0.01}]
        for seed in (0, 1):
            ws.save_artifact(run, curve_artifact("grad_diff", seed, (0, 1)), {
                **curve(probs, [1.0, 1.1, 1.2]), "verdict": VALID, "point": 1 + k,
                "search": [{"lr": 1e-5, "verdict": VALID}] if seed == 0 else []})
            # npo works on the first set only: the second set is left out of the pool
            ws.save_artifact(run, curve_artifact("npo", seed, (0, 1)), {
                **curve(probs, [1.0, 1.1, 1.2]), "verdict": VALID if k == 0 else COLLAPSED, "point": 1 if k == 0
                else None, "search": [{"lr": 1e-5, "verdict": VALID if k == 0 else COLLAPSED}] if seed == 0 else []})
        runs.append(run)
    ws.save_artifact(parent, SETS_ARTIFACT, [{"ids": ["a", "b"], "run": runs[0]}, {"ids": ["c", "d"], "run": runs[1]}])
    assert kept(ws, parent, ["grad_diff", "npo"]) == [True, False] and kept(ws, parent, ["grad_diff"]) == [True, True]
    outcomes, steps = load_outcomes(ws, parent, config)
    assert list(outcomes) == ["grad_diff", "npo"] and sorted(outcomes["grad_diff"][1]) == ["a", "b"]
    assert outcomes["grad_diff"][0]["b"]["nll_after"] == pytest.approx(-math.log(0.5))  # set 1 at its point (step 5)
    found = load_regimes(ws, parent, config)
    assert found["grad_diff"]["functional"] and found["npo"]["functional"] and found["npo"]["sets"] == [True, False]
    # with grad_diff alone both sets count, each read at its own point: set 2 at step 10 (d forgotten by then)
    alone = {**config, "methods": ["grad_diff"]}
    joined = load_outcomes(ws, parent, alone)[0]["grad_diff"][0]
    assert sorted(joined) == ["a", "b", "c", "d"] and joined["d"]["nll_after"] == pytest.approx(-math.log(0.01))
    # no set where every method is valid: no labels
    ws.save_artifact(parent, SETS_ARTIFACT, [{"ids": ["c", "d"], "run": runs[1]}])
    assert load_outcomes(ws, parent, config)[0] == {} and not load_regimes(ws, parent, config)["npo"]["functional"]
    ws.save_artifact(parent, SETS_ARTIFACT, [{"ids": ["a", "b"], "run": runs[0]}, {"ids": ["c", "d"], "run": runs[1]}])
    assert list(found["grad_diff"]["seeds"]) == ["0 · set 1", "1 · set 1", "0 · set 2", "1 · set 2"]
    assert [x["forget_set"] for x in found["npo"]["search"]] == [1, 2]
    assert runs_in(found) == 8  # per method: one try per set, plus each set's second seed
    assert left(ws, parent, settings) == []


def test_a_calibration_of_two_forget_sets_unlearns_each_alone(tmp_path, capsys):
    lm = tiny_model("llama", d_model=64, n_layers=2)
    lm.model = finetune(lm.model, lm.tokenizer, FACTS, FinetuneSettings(epochs=60, lr=3e-3, batch_size=12))
    forget, retain = FACTS[:8], FACTS[8:]
    settings = CalibrationSettings(protocol=None, methods=("grad_diff", "npo"), steps=4, lr=1e-3, eval_every=2,
                                   q=0.5, seeds=(0,), folds=2, n_boot=200, n_permutations=10, forget_sets=2,
                                   score=ScoreSettings(steps=2, n_edges=20, generation=False))
    ws = Workspace(tmp_path)
    with pytest.raises(ValueError, match="4 forget samples per forget set"):
        calibrate(RunContext(lm, ws, "facts"), forget[:7], retain, settings)
    run = validate_prospective(RunContext(lm, ws, "facts"), forget, retain, settings,
                               ProspectiveSettings(k=1, strata=2))
    r = ws.load_artifact(run, "prospective_report")
    cal = r["calibration"]
    sets = ws.load_artifact(cal, SETS_ARTIFACT)
    scored = ws.load_results(ws.load_artifact(cal, "score_run"))
    nll = {s.id: scored[s.id]["answer_nll"] for s in forget}
    assert [p["ids"] for p in sets] == split_parts([s.id for s in forget], nll, 2, settings.seed)
    by_id = {s.id: s for s in forget}
    for p in sets:  # each set's run is that set unlearned alone, bit for bit
        assert sorted(s.id for s in ws.load_samples(p["run"])) == sorted(p["ids"])
        for method in settings.methods:
            stored = ws.load_artifact(p["run"], curve_artifact(method, 0, (0,)))
            alone = run_unlearning(lm.model, lm.tokenizer, [by_id[i] for i in p["ids"]], retain, method, steps=4,
                                   lr=1e-3, eval_every=2, seed=0, batch_size=settings.batch_size)
            assert stored["curve"] == alone.curve
    report = ws.load_artifact(cal, "validation_report")
    assert report["n_forget"] == 8 and ws.get_run(cal)["status"] == "done"
    assert report["forget_sets"] == [{"n": 4, "kept": True}, {"n": 4, "kept": True}]  # fixed steps: every run votes
    assert "pooled over 2 of 2 disjoint forget sets (4/4 samples" in settings_line(report)
    t = ws.load_artifact(cal, "timings")  # each set's unlearning time counts as unlearning
    sets_s = [v for k, v in t.items() if k.startswith("forget_set_")]
    assert len(sets_s) == 2 and f"unlearning {sum(sets_s):.0f} (" in timings_line(t)
    # the prospective test takes the sets as its halves: only the four groups are unlearned anew
    assert (r["n_a"], r["n_b"]) == (4, 4)
    assert sorted(ws.get_run(x["id"])["config"]["phase"] for x in ws.list_runs(PHASE_KIND)) == [
        "easy", "easy_matched", "hard", "hard_matched"]
    assert r["forget_sets"] == {"a": [1], "b": [2], "sizes": [4, 4]}
    e = estimate(ws, cal, 8, ProspectiveSettings(k=1))  # from the sets' own unit times: only the groups are left
    assert e["phases"] == "four groups" and e["runs"] == 4 * 2 and e["seconds"] > 0
    assert sorted(r["prospective"]["cud"]) and r["n_b"] == len(sets[1]["ids"])

    # another attribution setting over the same sets reuses each set's unlearning runs (checked, not rerun)
    again = calibrate(RunContext(lm, ws, "facts"), forget, retain,
                      replace(settings, score=replace(settings.score, n_edges=10)))
    for old, new in zip(sets, ws.load_artifact(again, SETS_ARTIFACT)):
        assert new["ids"] == old["ids"] and new["run"] != old["run"]
        assert ws.load_artifact(new["run"], curve_artifact("npo", 0, (0,)))["reused_from"] == old["run"]

    # the stored report rendered into a README section, without running anything
    stored, readme = tmp_path / "p.json", tmp_path / "README.md"
    stored.write_text(json.dumps(r, default=float))
    readme.write_text(f"intro\n\n{README.begin}\nold\n{README.end}\n\nrest\n")
    assert main(["validate-prospective", "--from-json", str(stored), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro") and text.endswith("rest\n") and "old" not in text
    assert "Half A: 4 samples (forget sets 1 of the calibration)" in text and r["verdict"] in text
    assert f"Prospective validation of {r['calibration']} (facts on {lm.name})" in text
    # several stored reports: one section holding each, in the order given
    other = tmp_path / "q.json"
    other.write_text(json.dumps({**r, "calibration": "calibrate-other", "data": "other-facts"}, default=float))
    assert main(["validate-prospective", "--from-json", str(stored), "--from-json", str(other), "--readme",
                 str(readme)]) == 0
    text = readme.read_text()
    assert text.index(f"of {r['calibration']} (facts") < text.index("of calibrate-other (other-facts")
    assert f"--from-json {stored} --from-json {other}" in text
    stored.write_text("{}")
    assert main(["validate-prospective", "--from-json", str(stored)]) != 0
    assert "p.json: not a prospective validation report" in capsys.readouterr().err


def test_the_pages_show_a_pooled_calibration_per_forget_set(app_setup, tmp_path, allow_test_folders):
    from pagetest import ready, shown

    from cud_core.engine.models import load_model
    from cud_core.pipeline.jobs import prepare_scenario
    from cud_core.pipeline.outcomes import first_seed_curves, shown_units

    lm = load_model(app_setup["model"], device="cpu")
    sc = prepare_scenario(RunContext(lm, dataset=app_setup["data"]), forget_fraction=0.75, seed=0)
    ws = Workspace(tmp_path / "ws")
    settings = CalibrationSettings(protocol=None, methods=("grad_diff", "npo"), steps=4, lr=1e-3, eval_every=2,
                                   q=0.25, forget_sets=2, score=ScoreSettings(steps=2, n_edges=20, generation=False))
    cal = calibrate(RunContext(sc.lm, ws, app_setup["data"]), sc.forget, sc.retain, settings)
    units = shown_units(ws, cal)
    assert [u[0] for u in units] == ["grad_diff · set 1", "npo · set 1", "grad_diff · set 2", "npo · set 2"]
    joined = first_seed_curves(ws, cal)["npo"]  # every forget sample at each evaluation, from its own set's run
    assert joined["steps"] == [0, 2, 4] and all(set(e) == {s.id for s in sc.forget} for e in joined["curve"])
    setup = {**app_setup, "workspace": str(ws.root)}
    for page in ("views/1_Rankings.py", "views/5_Annotations.py", "views/6_Validation.py"):
        at = ready(setup, page)
        assert not at.exception and not at.error, page
    assert any("pooled over 2 of 2 disjoint forget sets (5/4 samples" in m for m in shown(at.caption))  # Validation
    rankings = ready(setup, "views/1_Rankings.py").dataframe[0].value
    assert sorted(rankings["id"]) == sorted(s.id for s in sc.forget)
    assert all(len(c) >= 2 for c in rankings["curve"])  # each sample's curve, from its own set's run
    at = ready(setup, "views/4_Unlearning.py")
    assert not at.exception
    options = at.selectbox[-1].options
    assert sum("calibration run · set" in o for o in options) == 4
    # a bundle carries the sets' runs: unpacked elsewhere, the outcomes and curves read back the same
    from cud_core.store.bundle import pack, unpack
    pack(ws, cal, tmp_path / "sets.cudpack")
    other = Workspace(tmp_path / "other")
    unpack(other, tmp_path / "sets.cudpack")
    config = ws.get_run(cal)["config"]
    assert load_outcomes(other, cal, config) == load_outcomes(ws, cal, config)
    assert first_seed_curves(other, cal) == first_seed_curves(ws, cal)
    at.selectbox[-1].select_index(len(options) - 1).run()  # a set's stored curve, read from that set's run
    assert not at.exception and any("evaluations" in m.value for m in at.markdown)


def test_the_verdict_says_when_a_group_left_the_utility_bound():
    from cud_core.pipeline.prospective import verdict
    from cud_core.report.prospective import utility_rows

    diff = {"difference": 5.0, "ci": [1.0, 9.0]}
    utility = {"easy": {"npo.seed0": {"step": 10, "holdout_nll_0": 0.31, "holdout_nll": 0.33}},
               "hard": {"npo.seed0": {"step": 10, "holdout_nll_0": 0.31, "holdout_nll": 2.22}}}
    r = {"k": 20, "prospective": {"cud": {"spearman": 0.2, "spearman_ci": [0.01, 0.4], "n": 94},
                                  "original_nll": {"spearman": -0.8}},
         "interventional": {kind: {"measures": {"delta_nll": diff}, "utility": utility,
                                   "within_bound": {"easy": True, "hard": False}} for kind in ("plain", "matched")}}
    text = verdict(r)
    assert text.count("the CUD-hard group forgot more; but there the CUD-hard group's runs had left the held-out "
                      "utility bound (held-out NLL up to 2.22)") == 2 and "The same within NLL strata" in text
    # 0.31 → 0.33 is inside ln 1.25 = 0.22 nats, 0.31 → 2.22 is not
    assert [row["within the utility bound"] for row in utility_rows(r)] == ["yes", "no", "yes", "no"]


def test_groups_read_at_matched_utility_cost_by_hand(tmp_path):
    from cud_core.difficulty.prospective import budget_index
    from cud_core.difficulty.regimes import PROTOCOL
    from cud_core.pipeline.prospective import _group_measures, verdict
    from cud_core.report.prospective import markdown

    # the bound is ln 1.25 = 0.223 nats over step 0: 0.31 + 0.223 = 0.533
    assert budget_index([0.31, 0.40, 0.52, 0.60, 0.50], PROTOCOL) == 2  # back inside later does not count
    assert budget_index([0.31, 0.90, 0.40], PROTOCOL) == 0 and budget_index([0.31], PROTOCOL) == 0
    assert budget_index([0.31, float("nan")], PROTOCOL) == 0
    ws = Workspace(tmp_path)
    run = ws.create_run(PHASE_KIND, "m", "d", {"methods": ["npo"], "seeds": [0]})
    probs = [{"a": 0.9, "b": 0.8}, {"a": 0.05, "b": 0.5}, {"a": 0.01, "b": 0.2}, {"a": 0.01, "b": 0.01}]
    ws.save_artifact(run, curve_artifact("npo", 0, [0]), curve(probs, [0.31, 0.40, 0.52, 0.90]))
    read = lambda m, c: budget_index([h["nll"] for h in c["holdout"]], PROTOCOL)  # noqa: E731
    got = _group_measures(ws, run, {"npo": 10}, read, 0.1, whole_run=False)
    # read at step 10 (index 2): ΔNLL ln(0.9/0.01) and ln(0.8/0.2); a forgotten at step 5, b never within it
    assert got["per_sample"]["delta_nll"] == pytest.approx([math.log(90), math.log(4)])
    assert list(got["per_sample"]["forgotten"]) == [1.0, 0.0] and list(got["per_sample"]["forgotten_at"]) == [5, 16]
    assert got["utility"] == {"npo.seed0": {"step": 10, "holdout_nll_0": 0.31, "holdout_nll": 0.52}}
    # over the whole run b is forgotten at step 15; a method outside `at_step` is not read
    whole = _group_measures(ws, run, {"npo": 10}, read, 0.1)
    assert list(whole["per_sample"]["forgotten_at"]) == [5, 15]
    assert _group_measures(ws, run, {}, read, 0.1, whole_run=False) is None  # nothing to read
    ws.save_artifact(run, curve_artifact("npo", 0, [0]), {**curve(probs, [0.3] * 4), "holdout": []})
    assert _group_measures(ws, run, {"npo": 10}, read, 0.1, whole_run=False) is None  # no held-out curve
    # the verdict and the tables carry the reading
    d = {"difference": -1.0, "ci": [-2.0, -0.5], "easy": 2.0, "hard": 1.0}
    budget = {"measures": {m: d for m in ("delta_nll", "forgotten", "forgotten_at")},
              "utility": {"easy": {"npo.seed0": {"step": 30, "holdout_nll_0": 0.31, "holdout_nll": 0.50}},
                          "hard": {"npo.seed0": {"step": 5, "holdout_nll_0": 0.31, "holdout_nll": 0.45}}}}
    r = {"calibration": "c", "k": 20, "strata": 4, "n_a": 40, "n_b": 40, "labels_a": {"easy": 5, "hard": 5},
         "methods": ["npo"], "rates": {"npo": 2e-5}, "steps": 30, "at_step": {"npo": 10},
         "prospective": {"cud": {"spearman": 0.2, "spearman_ci": [0.01, 0.4], "n": 40},
                         "original_nll": {"spearman": -0.8, "spearman_ci": [-0.9, -0.7], "n": 40}},
         "interventional": {kind: {"measures": budget["measures"], "nll_easy": 0.8,
                                   "utility": {g: {"npo.seed0": {**u["npo.seed0"], "step": 10}}
                                               for g, u in budget["utility"].items()},
                                   "nll_hard": 0.3, "within_bound": {"easy": True, "hard": True}, "budget": budget}
                            for kind in ("plain", "matched")}}
    assert verdict(r).count("Read at matched utility cost instead (each run at its last evaluation inside the bound: "
                            "easy at step 30, hard at 5): ΔNLL hard − easy = -1.00 [-2.00, -0.50], share forgotten "
                            "-1.00 [-2.00, -0.50], the CUD-hard group forgot less.") == 2
    r["verdict"] = verdict(r)
    text = markdown(r)
    assert "The same groups at matched utility cost" in text and text.count("| matched | hard | npo.seed0 | 5 |") == 1
    del r["interventional"]["plain"]["budget"], r["interventional"]["matched"]["budget"]  # a report from before it
    r["verdict"] = verdict(r)
    assert "matched utility cost" not in markdown(r)
