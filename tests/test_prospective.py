"""The prospective validation end to end on a memorised tiny model (fixed steps: every method votes)."""
import numpy as np
import pytest
import torch
from test_unlearning import FACTS

from cud_core.difficulty.cud import build_anchors, label_easy_hard
from cud_core.difficulty.prospective import extremes, matched_extremes, split_halves
from cud_core.engine.graph import Graph
from cud_core.engine.tiny import tiny_model
from cud_core.pipeline.calibration import CalibrationSettings
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.finetune import FinetuneSettings, finetune
from cud_core.pipeline.outcomes import load_outcomes, load_units
from cud_core.pipeline.prospective import PHASE_KIND, ProspectiveSettings, estimate, validate_prospective
from cud_core.pipeline.scoring import ScoreSettings
from cud_core.report.prospective import markdown
from cud_core.store.score_files import load_circuits, load_edge_scores
from cud_core.store.workspace import Workspace


def test_prospective_validation_scores_b_from_a_and_unlearns_the_groups_separately(tmp_path):
    lm = tiny_model("llama", d_model=64, n_layers=2)
    lm.model = finetune(lm.model, lm.tokenizer, FACTS, FinetuneSettings(epochs=60, lr=3e-3, batch_size=12))
    forget, retain = FACTS[:8], FACTS[8:]
    settings = CalibrationSettings(protocol=None, methods=("grad_diff", "npo"), steps=4, lr=1e-3, eval_every=2,
                                   q=0.5, seeds=(0,), folds=2, n_boot=200, n_permutations=10,
                                   score=ScoreSettings(steps=2, n_edges=20, generation=False))
    ws = Workspace(tmp_path)
    p = ProspectiveSettings(k=1, strata=2, seed=0)
    with pytest.raises(ValueError, match="--k 3"):
        validate_prospective(RunContext(lm, ws, "facts"), forget, retain, settings, ProspectiveSettings(k=3))
    run = validate_prospective(RunContext(lm, ws, "facts"), forget, retain, settings, p)
    r = ws.load_artifact(run, "prospective_report")
    assert ws.get_run(run)["status"] == "done" and (r["n_a"], r["n_b"]) == (4, 4)

    # independent recomputation: the split, A's labels and anchors, B's CUD before B was unlearned
    score_id = ws.load_artifact(r["calibration"], "score_run")
    scored = ws.load_results(score_id)
    nll0 = {s.id: scored[s.id]["answer_nll"] for s in forget}
    a_ids, b_ids = split_halves(list(nll0), nll0, 0)
    phases = {ws.get_run(x["id"])["config"]["phase"]: x["id"] for x in ws.list_runs(PHASE_KIND)}
    assert set(phases) == {"A", "B", "easy", "hard", "easy_matched", "hard_matched"}
    assert sorted(s.id for s in ws.load_samples(phases["A"])) == sorted(a_ids)
    out_a, _ = load_outcomes(ws, phases["A"], ws.get_run(phases["A"])["config"])
    labels = label_easy_hard({m: {i: v[0][i]["nll_after"] for i in a_ids} for m, v in out_a.items()}, 0.5)
    graph = Graph.from_model(lm.model)
    anchors = build_anchors(load_edge_scores(ws, score_id, graph.n_edges), labels, graph, "greedy", 20)
    circuits = load_circuits(ws, score_id, graph.n_edges)
    cud_b = {i: float(anchors.score(circuits[i])) for i in b_ids}
    out_b, _ = load_outcomes(ws, phases["B"], ws.get_run(phases["B"])["config"])
    hard_b = np.mean([[-out_b[m][0][i]["nll_after"] for i in b_ids] for m in out_b], 0)
    from scipy.stats import spearmanr
    assert r["prospective"]["cud"]["spearman"] == pytest.approx(
        spearmanr([cud_b[i] for i in b_ids], hard_b).statistic, abs=1e-9)
    # the groups: B's CUD extremes, and the same within NLL strata, each unlearned on its own
    easy, hard = extremes(cud_b, 1)
    easy_m, hard_m = matched_extremes(cud_b, nll0, 1, 2)
    for name, ids in (("easy", easy), ("hard", hard), ("easy_matched", easy_m), ("hard_matched", hard_m)):
        assert [s.id for s in ws.load_samples(phases[name])] == ids
    # ΔNLL of each group at the methods' step (fixed steps: the last), averaged over methods
    step = r["at_step"]["npo"]
    assert step == 4
    units = load_units(ws, phases["hard"], ws.get_run(phases["hard"])["config"])
    by_hand = np.mean([u[0]["curve"][-1][hard[0]] - u[0]["curve"][0][hard[0]] for u in units.values()])
    assert r["interventional"]["plain"]["measures"]["delta_nll"]["hard"] == pytest.approx(by_hand)
    text = markdown(r)
    assert "Interventional" in text and "hard − easy" in text and r["verdict"] in text
    assert torch.is_tensor(circuits[b_ids[0]])
    # the estimate: six phases per (method, seed), the calibration's unit times scaled by the samples
    e = estimate(ws, r["calibration"], len(forget), p)
    t = ws.load_artifact(r["calibration"], "timings")
    assert e["runs"] == 12 and e["methods"] == ["grad_diff", "npo"]
    assert e["seconds"] == pytest.approx((t["unlearn_grad_diff_seed0_s"] + t["unlearn_npo_seed0_s"]) * (8 + 4) / 8)
    # a rerun finds the finished run and unlearns nothing again
    import cud_core.pipeline.unlearning as unlearning
    original = unlearning.run_unlearning
    unlearning.run_unlearning = lambda *a, **k: pytest.fail("unlearning ran again")
    try:
        assert validate_prospective(RunContext(lm, ws, "facts"), forget, retain, settings, p) == run
    finally:
        unlearning.run_unlearning = original
