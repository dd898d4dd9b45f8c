"""CUD formulas, labels, anchors, predictors and the calibration job end to end."""
import csv
import io
import math

import numpy as np
import pytest
import torch

from cud_core.difficulty.cud import (
    Anchors,
    bucket,
    build_anchors,
    cud_score,
    label_easy_hard,
    realised_difficulty,
    similarity,
    tercile_buckets,
)
from cud_core.engine.graph import Graph
from cud_core.pipeline.context import RunContext


def test_similarities_by_hand():
    a, b = [1, 1, 0, 0], [1, 0, 1, 0]
    assert similarity(a, b, "cosine") == pytest.approx(0.5)
    assert similarity(a, b, "jaccard") == pytest.approx(1 / 3)
    assert similarity(a, b, "hamming") == pytest.approx(0.5)
    assert similarity(torch.tensor([3.0, 4.0]), np.array([3.0, 4.0])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown similarity 'dice'"):
        similarity(a, b, "dice")
    with pytest.raises(ValueError, match="differ in length"):
        similarity(a, [1, 0], "cosine")


def test_cud_score_formula():
    easy, hard = torch.tensor([1, 1, 0, 0]), torch.tensor([0, 0, 1, 1])
    assert cud_score(easy, easy, hard) == pytest.approx(0.0, abs=1e-12)
    assert cud_score(hard, easy, hard) == pytest.approx(1.0, abs=1e-12)
    assert cud_score(torch.tensor([1, 0, 1, 0]), easy, hard) == pytest.approx(0.5)
    # cosine: sim(q,E) = 2/√6, sim(q,H) = 1/√6 → d_E = 1 − 2/√6, d_H = 1 − 1/√6
    q = torch.tensor([1, 1, 1, 0])
    d_e, d_h = 1 - 2 / math.sqrt(6), 1 - 1 / math.sqrt(6)
    assert cud_score(q, easy, hard) == pytest.approx(d_e / (d_e + d_h))
    # jaccard: |q∧E|/|q∨E| = 2/3, |q∧H|/|q∨H| = 1/4
    assert cud_score(q, easy, hard, "jaccard") == pytest.approx((1 / 3) / (1 / 3 + 3 / 4))
    # hamming: 1 − 1/4 and 1 − 3/4
    assert cud_score(q, easy, hard, "hamming") == pytest.approx(0.25 / (0.25 + 0.75))
    assert cud_score(easy, easy, easy) == 0.5  # both distances zero
    assert bucket(0.1) == "easy" and bucket(0.5) == "medium" and bucket(0.9) == "hard"
    assert tercile_buckets({"a": 0.1, "b": 0.5, "c": 0.9}) == {"a": "easy", "b": "medium", "c": "hard"}


def test_realised_difficulty():
    curve = [{"a": 0.1, "b": 0.2}, {"a": 1.0, "b": 0.3}, {"a": 3.0, "b": 0.4}]
    probs = [{k: math.exp(-v) for k, v in c.items()} for c in curve]
    r = realised_difficulty(curve, probs, [0, 5, 10], threshold=0.3)
    assert r["a"] == {"nll_after": 3.0, "delta_nll": pytest.approx(2.9), "forgotten_at": 10}
    assert r["b"]["forgotten_at"] == 11 and r["b"]["nll_after"] == 0.4  # never forgotten: last step + 1


def test_labels_need_majority_agreement():
    # 8 samples, q = 0.25 → each method votes its top-2 easy and bottom-2 hard
    m1 = {"s1": 9, "s2": 8, "s3": 7, "s4": 6, "s5": 5, "s6": 4, "s7": 3, "s8": 2}
    m2 = {"s1": 9, "s3": 8, "s2": 7, "s4": 6, "s5": 5, "s8": 4, "s6": 3, "s7": 2}
    m3 = {"s4": 9, "s1": 8, "s2": 7, "s3": 6, "s5": 5, "s6": 4, "s8": 3, "s7": 2}
    labels = label_easy_hard({"a": m1, "b": m2, "c": m3}, q=0.25)
    # easy votes: s1 ×3, s2 ×1, s3 ×1, s4 ×1 → s1; hard votes: s8 ×1, s7 ×3, s6 ×1, s8 … → s7 (and s8 ×2)
    assert labels == {"s1": "easy", "s7": "hard", "s8": "hard"}
    # a sample voted easy by one method and hard by another, with K = 2 (need 1 vote): dropped
    assert "x" not in label_easy_hard({"a": {"x": 9, "y": 1}, "b": {"x": 1, "y": 9}}, q=0.5)


def test_anchors_are_binarised_means_and_roundtrip(tmp_path):
    from cud_core.store.workspace import Workspace

    g = Graph(n_layers=2, n_heads=2)
    torch.manual_seed(0)
    scores = {f"s{i}": torch.randn(g.n_edges) for i in range(6)}
    labels = {"s0": "easy", "s1": "easy", "s2": "hard", "s3": "hard", "s4": "hard"}
    anchors = build_anchors(scores, labels, g, "top-n", 10)
    mean_easy = (scores["s0"] + scores["s1"]) / 2
    assert torch.allclose(anchors.easy_scores, mean_easy)
    assert set(anchors.easy.nonzero().flatten().tolist()) == set(mean_easy.abs().topk(10).indices.tolist())
    assert anchors.easy_ids == ["s0", "s1"] and anchors.hard_ids == ["s2", "s3", "s4"]
    ws = Workspace(tmp_path)
    anchors.save(ws, "run1")
    again = Anchors.load(ws, "run1")
    assert torch.equal(again.easy, anchors.easy) and torch.equal(again.hard, anchors.hard)
    assert again.hard_ids == anchors.hard_ids and again.n_edges == 10
    assert again.score(anchors.easy) == pytest.approx(0, abs=1e-12) and again.score(anchors.hard) == pytest.approx(1)
    with pytest.raises(ValueError, match="at least one easy and one hard"):
        build_anchors(scores, {"s0": "easy"}, g)
    with pytest.raises(FileNotFoundError, match="run `calibrate` first"):
        Anchors.load(ws, "nope")


def test_gradient_norm_and_mrd(tiny_llama):
    from cud_core.data.samples import Sample
    from cud_core.difficulty.predictors import gradient_norms, mrd
    from cud_core.engine.metrics import collate

    s = [Sample("Where was Alice born?", "Alice was born in Lisbon.", "a")]
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    got = gradient_norms(model, tok, s)["a"]
    import copy
    twin = copy.deepcopy(model)
    for p in twin.parameters():
        p.requires_grad_(True)
    b = collate(tok, s)
    twin(input_ids=b.input_ids, labels=b.input_ids.masked_fill(~b.answer_mask, -100)).loss.backward()
    expected = torch.sqrt(sum((p.grad ** 2).sum() for p in twin.parameters() if p.grad is not None))
    assert got == pytest.approx(float(expected), rel=1e-4)
    assert all(p.grad is None for p in model.parameters())
    assert mrd(model, tok, s, sigma=0.0)["mrd"]["a"] == pytest.approx(0.0, abs=1e-9)


def test_mrd_formula_by_hand():
    """Feng et al. (2025)'s MRD as their code computes it: |mean over draws of Σ_t (ℓ_t − ℓ_t^k)/ℓ_t|,
    tokens with ℓ_t = 0 and padding skipped, capped at 2."""
    from cud_core.difficulty.predictors import mrd_from_logprobs

    clean = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -4.0, -9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])   # sample 2's last token is padding
    noisy = torch.tensor([[[-1.1, -2.2, -0.3], [-0.6, -3.0, -1.0]],
                          [[-0.9, -2.0, -0.7], [-0.5, -4.4, -5.0]]])
    # sample 1: draw 1 (−1+1.1)/−1 + (−2+2.2)/−2 = −0.2 (the ℓ = 0 token is skipped); draw 2: 0.1 + 0 = 0.1
    #   → |(−0.2 + 0.1)/2| = 0.05
    # sample 2: draw 1 (−0.5+0.6)/−0.5 + (−4+3)/−4 = −0.2 + 0.25 = 0.05; draw 2: 0 + (−4+4.4)/−4 = −0.1
    #   → |(0.05 − 0.1)/2| = 0.025
    assert mrd_from_logprobs(clean, noisy, mask).tolist() == pytest.approx([0.05, 0.025], abs=1e-6)
    assert mrd_from_logprobs(clean, noisy * 10, mask).tolist() == pytest.approx([2.0, 2.0])   # the cap
    # ×10: sample 1: (−20 − 17)/2 → 18.5; sample 2: (−11 − 6.5 − 9 − 10)/2 → 18.25
    assert mrd_from_logprobs(clean, noisy * 10, mask, cap=100).tolist() == pytest.approx([18.5, 18.25], rel=1e-6)


def test_mrd_on_a_model_matches_a_token_by_token_recomputation(tiny_llama):
    """`mrd` on a padded batch of two samples against the same definition computed one sample and one
    token at a time from HF logits, with the same seeded noise (draw k: generator seed + k, N(0, σ²) in
    parameter order)."""
    import copy

    from cud_core.data.samples import Sample, encode
    from cud_core.difficulty.predictors import mrd

    model, tok = tiny_llama.model, tiny_llama.tokenizer
    samples = [Sample("Where was Alice born?", "Alice was born in Lisbon.", "a"),
               Sample("Capital of France?", "Paris, the capital of France since long ago.", "b")]
    sigma, draws, seed = 1e-3, 3, 11

    def token_logps(m, s):
        ids = encode(tok, s)[0].unsqueeze(0)
        with torch.no_grad():
            logits = m(input_ids=ids).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        return [float(logp[t - 1, ids[0, t]]) for t in range(1, ids.shape[1])]

    expected, expected_answer = {}, {}
    for s in samples:
        on_answer = encode(tok, s)[1].tolist()[1:]  # token t (t ≥ 1) is an answer token
        clean, total, total_answer = token_logps(model, s), 0.0, 0.0
        for k in range(draws):
            gen, noisy = torch.Generator().manual_seed(seed + k), copy.deepcopy(model)
            with torch.no_grad():
                for p in noisy.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * sigma)
            terms = [((a - b) / a, ans) for a, b, ans in zip(clean, token_logps(noisy, s), on_answer) if a != 0]
            total += sum(t for t, _ in terms)
            total_answer += sum(t for t, ans in terms if ans)
        expected[s.id] = min(abs(total / draws), 2.0)
        expected_answer[s.id] = min(abs(total_answer / draws), 2.0)
    got = mrd(model, tok, samples, sigma=sigma, draws=draws, seed=seed, batch_size=2)
    assert got["mrd"]["a"] > 0 and got["mrd"]["b"] > 0
    # float32 batches vs float64 per-token sums (seen: 6e-5 relative)
    assert got["mrd"] == pytest.approx(expected, rel=1e-3)
    assert got["mrd_answer"] == pytest.approx(expected_answer, rel=1e-3)
    assert got["mrd_answer"] != pytest.approx(got["mrd"], rel=1e-3)  # the template tokens count in the first


def test_hidden_state_means_match_one_sample_forward_passes(tiny_llama):
    """Per layer, the mean of HF's hidden states over the answer tokens, from a padded batch, equals the
    same mean from each sample alone (no padding)."""
    from cud_core.data.samples import Sample, encode
    from cud_core.difficulty.predictors import hidden_state_means

    model, tok = tiny_llama.model, tiny_llama.tokenizer
    samples = [Sample("Where was Alice born?", "Alice was born in Lisbon.", "a"),
               Sample("Capital of France?", "Paris, the capital of France since long ago.", "b")]
    got = hidden_state_means(model, tok, samples, batch_size=2)
    n_layers = model.config.num_hidden_layers
    for s in samples:
        ids, answer = encode(tok, s)
        with torch.no_grad():
            hs = model(input_ids=ids.unsqueeze(0), output_hidden_states=True).hidden_states
        expected = torch.stack([h[0, answer.bool()].mean(0) for h in hs[1:]])
        assert got[s.id].shape == (n_layers, model.config.hidden_size)
        assert torch.allclose(got[s.id], expected, atol=1e-5)


def test_calibration_end_to_end_on_a_memorised_tiny_model(tmp_path):
    from test_unlearning import FACTS

    from cud_core.difficulty.analysis import PREDICTORS
    from cud_core.engine.tiny import tiny_model
    from cud_core.pipeline.calibration import (
        PREDICTOR_DEFINITIONS,
        CalibrationSettings,
        calibrate,
        export_rows,
        format_table,
        load_hidden,
        stale_predictors,
    )
    from cud_core.pipeline.finetune import FinetuneSettings, finetune
    from cud_core.pipeline.scoring import ScoreSettings
    from cud_core.report.validation import summary_rows
    from cud_core.store.workspace import Workspace

    lm = tiny_model("llama", d_model=64, n_layers=2)
    lm.model = finetune(lm.model, lm.tokenizer, FACTS, FinetuneSettings(epochs=60, lr=3e-3, batch_size=12))
    forget, retain = FACTS[:8], FACTS[8:]
    settings = CalibrationSettings(protocol=None,
                                   methods=("grad_diff", "npo", "simnpo"), steps=4, lr=1e-3, eval_every=2, q=0.25,
                                   score=ScoreSettings(steps=2, n_edges=20, generation=False))
    ws = Workspace(tmp_path)
    messages = []
    run = calibrate(RunContext(lm, ws, "facts", progress=lambda f, m: messages.append((f, m))), forget, retain,
                    settings)
    assert ws.get_run(run)["status"] == "done" and messages[-1][0] == 1.0
    table = ws.load_artifact(run, "validation")
    assert [r["predictor"] for r in table] == list(PREDICTORS)
    assert {"ρ nll_after", "partial ρ given original NLL", "AUROC (expected direction)"} <= set(table[0])
    assert "cud" in format_table(table)
    # every method ran with both seeds, the first seed's curve under the plain name
    names = set(ws.artifact_names(run))
    assert {f"curve-{m}" for m in settings.methods} | {f"curve-{m}.seed1" for m in settings.methods} <= names
    rows = export_rows(ws, run)
    assert sorted(r["id"] for r in rows) == sorted(s.id for s in forget)
    for r in rows:
        assert 0 <= r["cud_oof"] <= 1 and 0 <= r["cud_in_sample"] <= 1 and r["bucket"] in ("easy", "medium", "hard")
        assert r["fold"] in range(settings.folds)
        assert r["nll_after_npo"] > 0 and r["mrd"] is not None and r["gradient_norm"] > 0
    assert Anchors.load(ws, run).n_edges == 20
    # a second call finds the finished run and redoes nothing
    import cud_core.pipeline.unlearning as unlearning
    original = unlearning.run_unlearning
    unlearning.run_unlearning = lambda *a, **k: pytest.fail("unlearning ran again")
    try:
        assert calibrate(RunContext(lm, ws, "facts"), forget, retain, settings) == run
        # a run whose MRD was stored under another definition recomputes it (only it) when rerun
        stored = ws.load_artifact(run, "predictors")
        assert ws.load_artifact(run, "predictor_definitions") == PREDICTOR_DEFINITIONS
        assert ws.load_artifact(run, "validation_report")["predictors"]["mrd"]["high_means"] == "easy"
        hidden = load_hidden(ws, run)
        assert sorted(hidden) == sorted(s.id for s in forget)
        ws.save_artifact(run, "predictor_definitions", {**PREDICTOR_DEFINITIONS, "mrd": "old"})
        ws.save_artifact(run, "predictors", {"mrd": {i: 9.0 for i in stored["mrd"]}, "mrd_answer": stored["mrd_answer"],
                                             "gradient_norm": {i: 1.0 for i in stored["gradient_norm"]}})
        old_table = summary_rows({**ws.load_artifact(run, "validation_report"), "predictor_definitions": {}})
        other_mrd = "mrd (ΔLL/LL, relative σ: not its authors' definition)"
        assert any(r["predictor"].startswith(other_mrd) for r in old_table)
        assert stale_predictors(ws, run) == ["mrd"]
        assert calibrate(RunContext(lm, ws, "facts"), forget, retain, settings) == run
    finally:
        unlearning.run_unlearning = original
    again = ws.load_artifact(run, "predictors")
    assert again["mrd"] == pytest.approx(stored["mrd"]) and set(again["gradient_norm"].values()) == {1.0}
    assert "predictors_recomputed_s" in ws.load_artifact(run, "timings")
    assert all(torch.equal(hidden[i], load_hidden(ws, run)[i]) for i in hidden)  # kept, not recomputed
    assert [r["predictor"] for r in ws.load_artifact(run, "validation")] == list(PREDICTORS)


def test_calibrate_and_export_command_line(tmp_path, tiny_folder, capsys):
    import json

    from cud_core.cli import main

    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is item {i}?",
                                        "answer": f"Item {i} is a city."}) + "\n" for i in range(12)))
    ws = tmp_path / "ws"
    args = ["calibrate", "--model", str(tiny_folder), "--data", str(data), "--workspace", str(ws),
            "--forget-fraction", "0.5", "--methods", "grad_diff,simnpo", "--steps", "2", "--eval-every", "1",
            "--q", "0.25", "--edges", "10", "--folds", "3", "--permutations", "20", "--bootstrap", "200",
            "--fixed-steps"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "predictor" in out and "ρ nll_after" in out and "timings" in out
    assert main(["export", "--workspace", str(ws)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 6 and {"id", "question", "cud_oof", "cud_in_sample", "fold", "bucket", "nll_after_simnpo",
                               "mrd"} <= set(rows[0])
    assert main(["export", "--workspace", str(ws), "--validation"]) == 0
    assert main(["calibrate", "--model", str(tiny_folder), "--data", str(data), "--methods", "dpo"]) == 2
    assert "unknown unlearning method(s) dpo" in capsys.readouterr().err
    assert main(["export", "--workspace", str(tmp_path / "empty")]) == 2


def test_loading_missing_consensus_anchors_names_the_per_method_ones(tmp_path):
    from cud_core.store.workspace import Workspace

    ws = Workspace(tmp_path)
    run = ws.create_run("calibrate", "m", "d", {})
    v = torch.tensor([True, False, True])
    Anchors(v, ~v, v.float(), (~v).float(), ["a"], ["b"], "greedy", 2).save(ws, run, "anchors-npo")
    assert Anchors.load(ws, run, "anchors-npo").easy_ids == ["a"]
    with pytest.raises(FileNotFoundError, match="no consensus anchors"):
        Anchors.load(ws, run)
    with pytest.raises(FileNotFoundError, match="run `calibrate` first"):
        Anchors.load(Workspace(tmp_path / "other"), run)


def test_a_per_method_headline_without_every_method_anchors_names_the_fix(tmp_path):
    """A calibration whose headline uses per-method anchors but lacks a method's pair (an older CUD Explorer
    stored only the consensus pair) is refused with the fix, not read as consensus."""
    from cud_core.pipeline.predict import headline_anchors
    from cud_core.store.workspace import Workspace

    ws = Workspace(tmp_path)
    run = ws.create_run("calibrate", "m", "d", {"anchors": "per-method", "methods": ["npo", "rmu"]})
    ws.set_status(run, "done")
    v = torch.tensor([True, False, True])
    for name in ("anchors", "anchors-npo"):
        Anchors(v, ~v, v.float(), (~v).float(), ["a"], ["b"], "greedy", 2).save(ws, run, name)
    with pytest.raises(ValueError, match=f"calibration {run} uses per-method anchors but has no anchors-rmu: an "
                                         "older CUD Explorer wrote it; run its `calibrate` command again"):
        headline_anchors(ws, run)
    Anchors(v, ~v, v.float(), (~v).float(), ["c"], ["b"], "greedy", 2).save(ws, run, "anchors-rmu")
    kind, anchors = headline_anchors(ws, run)
    assert kind == "per-method" and [a.easy_ids for a in anchors] == [["a"], ["c"]]
