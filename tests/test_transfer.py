"""`transfer`: one calibration's anchors on another calibration's forget samples (cud_core/pipeline/transfer.py),
pinned to hand computations: cosine positions between the stored anchor circuits, Spearman's ρ from
scipy, the target's own out-of-fold ρ as its validation report states it."""
import json
import shutil

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def two_calibrations(app_setup, tmp_path_factory):
    """conftest's app calibration (anchors) and a second one on the same weights and attribution whose
    forget set is the first one's retain facts plus two of its forget facts (target)."""
    from cud_core.engine.models import load_model
    from cud_core.pipeline.calibration import CalibrationSettings, calibrate
    from cud_core.pipeline.context import RunContext
    from cud_core.pipeline.jobs import prepare_scenario
    from cud_core.pipeline.scoring import ScoreSettings
    from cud_core.store.workspace import Workspace

    root = tmp_path_factory.mktemp("transfer")
    shutil.copytree(app_setup["workspace"], root / "ws")
    ws = Workspace(root / "ws")
    lm = load_model(app_setup["model"], device="cpu")
    first = app_setup["forget"]
    everything = [json.loads(line)["id"] for line in open(app_setup["data"], encoding="utf-8")]
    forget_ids = [i for i in everything if i not in first] + first[:2]
    sc = prepare_scenario(RunContext(lm, dataset=app_setup["data"]), forget_ids=forget_ids)
    settings = CalibrationSettings(protocol=None, methods=("grad_diff", "npo", "simnpo"), steps=8, lr=1e-3,
                                   eval_every=2, q=0.5, score=ScoreSettings(steps=2, n_edges=20, generation=False))
    target = calibrate(RunContext(sc.lm, ws, app_setup["data"]), sc.forget, sc.retain, settings)
    assert ws.get_run(target)["status"] == "done"
    return ws, app_setup["calibration"], target, first[:2]


def test_transferred_cud_and_its_rho_by_hand(two_calibrations):
    from scipy.stats import rankdata, spearmanr

    from cud_core.difficulty.cud import Anchors
    from cud_core.pipeline.calibration import load_hidden
    from cud_core.pipeline.transfer import ARTIFACT, hardness, transfer
    from cud_core.store.score_files import load_circuits

    ws, source, target, shared = two_calibrations
    r = ws.load_artifact(transfer(ws, source, target, n_boot=300, n_permutations=50), ARTIFACT)
    results = ws.load_results(target)
    ids = sorted(set(results) - set(shared))
    # the two facts that were also in the anchors' calibration are left out: in-sample there
    assert r["left_out"] == sorted(shared) and r["n"] == len(ids) == 6
    # CUD by hand: d = 1 − cosine to each stored anchor circuit, position d_E / (d_E + d_H)
    anchors = Anchors.load(ws, source)
    circuits = load_circuits(ws, ws.load_artifact(target, "score_run"), anchors.easy.numel())

    def position(c):
        d = [1 - torch.nn.functional.cosine_similarity(c.double(), a.double(), dim=0).item()
             for a in (anchors.easy, anchors.hard)]
        return d[0] / (d[0] + d[1])
    cud = [position(circuits[i]) for i in ids]
    hard = [-np.mean([d["nll_after"] for d in results[i]["realised"].values()]) for i in ids]
    t = r["predictors"]["cud_transfer"]
    assert t["spearman"] == pytest.approx(spearmanr(cud, hard).statistic, abs=1e-9)
    assert t["n"] == 6 and 0 < t["permutation_p"] <= 1
    nll = [results[i]["predictors"]["original_nll"] for i in ids]
    assert r["predictors"]["original_nll"]["spearman"] == pytest.approx(spearmanr(nll, hard).statistic, abs=1e-9)
    own = [results[i]["cud_oof"] for i in ids]
    assert r["predictors"]["cud_own"]["spearman"] == pytest.approx(spearmanr(own, hard).statistic, abs=1e-9)
    assert "permutation_p" not in r["predictors"]["cud_own"]
    assert r["transfer_minus_own"]["difference"] == pytest.approx(
        spearmanr(cud, hard).statistic - spearmanr(own, hard).statistic, abs=1e-9)
    # partial ρ given the original NLL: correlation of the rank residuals after regressing on rank(NLL)
    def residual(v):
        rv, rz = rankdata(v), rankdata(nll)
        design = np.column_stack([np.ones_like(rz), rz])
        return rv - design @ np.linalg.lstsq(design, rv, rcond=None)[0]
    assert t["partial_spearman"] == pytest.approx(np.corrcoef(residual(cud), residual(hard))[0, 1], abs=1e-9)
    # AUROC over the labelled samples: the share of (hard, easy) pairs the score orders right, ties ½
    pairs = [(a, b) for i, a in zip(ids, cud) for j, b in zip(ids, cud)
             if results[i].get("label") == "hard" and results[j].get("label") == "easy"]
    assert pairs and t["auroc"] == pytest.approx(np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs]))
    # the hidden-state baseline: each calibration's features centred per layer on its own forget set and
    # scaled to unit root-mean-square norm, the source's labelled means, the position between them
    def features(run):
        hidden = load_hidden(ws, run)
        members = sorted(ws.load_results(run))
        x = torch.stack([hidden[i] for i in members]).double()
        x = x - x.mean(0)
        x = x / x.pow(2).sum(-1).mean(0).sqrt()[None, :, None]
        return dict(zip(members, x.reshape(len(members), -1)))
    fs, ft = features(source), features(target)
    source_results = ws.load_results(source)
    easy, hard_mean = (torch.stack([fs[i] for i, v in source_results.items() if v.get("label") == lab]).mean(0)
                       for lab in ("easy", "hard"))

    def between(v):
        d = [1 - torch.nn.functional.cosine_similarity(v, a, dim=0).item() for a in (easy, hard_mean)]
        return d[0] / (d[0] + d[1])
    rep = [between(ft[i]) for i in ids]
    assert r["predictors"]["representation_transfer"]["spearman"] == pytest.approx(
        spearmanr(rep, hard).statistic, abs=1e-9)
    assert r["anchors"] == source and r["target"] == target
    lo, hi = t["spearman_ci"]  # the verdict's words follow from the CI
    assert ("predicts" if lo > 0 else "wrong direction" if hi < 0 else "no detectable relation") in r["verdict"]
    # the hardness is the validation's primary target: over all the target's samples, its out-of-fold CUD has
    # the ρ its validation report states
    every = sorted(results)
    validation = ws.load_artifact(target, "validation_report")
    assert validation["predictors"]["cud"]["nll_after"]["spearman"] == pytest.approx(spearmanr(
        [results[i]["cud_oof"] for i in every], [hardness(results[i]) for i in every]).statistic, abs=1e-9)


def test_refusals_name_the_problem(two_calibrations):
    from cud_core.pipeline.transfer import transfer

    ws, source, target, _ = two_calibrations
    with pytest.raises(ValueError, match="in-sample"):
        transfer(ws, source, source)
    with pytest.raises(ValueError, match="--target 'calibrate-none': no calibration"):
        transfer(ws, source, "calibrate-none")
    with pytest.raises(ValueError, match="--permutations 0: .*at least one shuffle"):
        transfer(ws, source, target, n_permutations=0)
    running = ws.create_run("calibrate", "m", "d", {"model_fingerprint": "x"})
    with pytest.raises(ValueError, match=f"--target '{running}': the calibration is running, so it has no labelled"):
        transfer(ws, source, running)
    ws.delete_run(running)


def test_the_report_renders_and_reads_back(two_calibrations, tmp_path, capsys):
    from cud_core.cli import main

    ws, source, target, _ = two_calibrations
    assert main(["transfer", "--workspace", str(ws.root), "--anchors", source, "--target", target,
                 "--bootstrap", "200", "--permutations", "10", "--format", "json"]) == 0
    stored = tmp_path / "t.json"
    stored.write_text(capsys.readouterr().out)
    from cud_core.report.transfer import README

    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{README.begin}\nold\n{README.end}\nafter\n")
    assert main(["transfer", "--from-json", str(stored), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "\nold\n" not in text
    assert f"calibration {source}" in text and "| CUD, anchors from " in text
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 6 and len({line.count("|") for line in table}) == 1  # every row has the header's cells
    assert f"transfer --from-json {stored} --readme {readme}" in text
    assert main(["transfer", "--from-json", str(stored), "--anchors", source]) == 2
    assert "--from-json shows stored reports" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["transfer", "--from-json", str(tmp_path / "bad.json")]) == 2
    assert "bad.json: not a transfer report" in capsys.readouterr().err


def test_the_target_s_validation_page_shows_it(two_calibrations, app_setup, allow_test_folders):
    from pagetest import app, shown

    from cud_core.pipeline.transfer import ARTIFACT, transfer

    ws, source, target, _ = two_calibrations
    r = ws.load_artifact(transfer(ws, source, target, n_boot=200, n_permutations=10), ARTIFACT)
    at = app("views/6_Validation.py", model=app_setup["model"], data=app_setup["data"], workspace=str(ws.root),
             run=target).run()
    assert not at.exception and not at.error
    head = r["verdict"].split(" (ρ")[0].split("anchors ")[1]  # after the (escaped) file name
    assert any(head in m and m.startswith("**CUD from ") for m in shown(at.markdown))
    assert any(f"calibration {source}" in c for c in shown(at.caption))
