"""Unlearning methods on a tiny model that has really memorised a handful of facts."""
import math

import pytest
import torch

from cud_core.data.samples import Sample
from cud_core.engine.metrics import teacher_forced_metrics
from cud_core.pipeline.finetune import FinetuneSettings, finetune, finetuned
from cud_core.unlearn import LABEL_METHODS, METHODS, run_unlearning

NAMES = ["Alice", "Bruno", "Chen", "Dara", "Emil", "Fatou", "Goran", "Hana", "Ivo", "Jun", "Kofi", "Lena"]
CITIES = ["Lisbon", "Oslo", "Quito", "Hanoi", "Lima", "Accra", "Perth", "Riga", "Baku", "Turin", "Cairo", "Dakar"]
FACTS = [Sample(f"Where was {n} born?", f"{n} was born in {c}.", f"f{i}") for i, (n, c) in
         enumerate(zip(NAMES, CITIES))]
LR = {"grad_ascent": 3e-4}  # plain ascent collapses everything at the larger rate


@pytest.fixture(scope="module")
def memorised():
    from cud_core.engine.tiny import tiny_model

    lm = tiny_model("llama", d_model=64, n_layers=2)
    lm.model = finetune(lm.model, lm.tokenizer, FACTS, FinetuneSettings(epochs=60, lr=3e-3, batch_size=12))
    return lm


def mean_nll(model, tok, samples):
    return sum(r["answer_nll"] for r in teacher_forced_metrics(model, tok, samples)) / len(samples)


def test_finetuning_memorises_the_facts(memorised):
    assert mean_nll(memorised.model, memorised.tokenizer, FACTS) < 0.2


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_forgets_more_than_it_damages_and_leaves_the_original_untouched(memorised, method):
    model, tok = memorised.model, memorised.tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forget, retain = FACTS[:4], FACTS[4:]
    result = run_unlearning(model, tok, forget, retain, method, steps=10, lr=LR.get(method, 1e-3), eval_every=5,
                            seed=0, batch_size=4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{method} modified the original's {k}"
    assert result.model is not model and result.steps == [0, 5, 10]
    forget_rise = mean_nll(result.model, tok, forget) - mean_nll(model, tok, forget)
    retain_rise = mean_nll(result.model, tok, retain) - mean_nll(model, tok, retain)
    assert forget_rise > retain_rise and forget_rise > 0.02, (method, forget_rise, retain_rise)
    # the curve's first point is the original model, the last is the returned copy
    assert result.curve[0] == pytest.approx({s.id: r["answer_nll"] for s, r in
                                             zip(forget, teacher_forced_metrics(model, tok, forget))}, abs=1e-5)
    assert sum(result.curve[-1].values()) / 4 == pytest.approx(mean_nll(result.model, tok, forget), abs=1e-5)
    assert result.prob_curve[-1]["f0"] == pytest.approx(math.exp(-result.curve[-1]["f0"]), rel=1e-5)


def test_callback_streams_every_evaluation_and_stop_keeps_what_was_logged(memorised):
    seen = []
    result = run_unlearning(memorised.model, memorised.tokenizer, FACTS[:4], FACTS[4:], "npo", steps=20, lr=1e-3,
                            eval_every=3, callback=seen.append,
                            should_stop=lambda: bool(seen) and seen[-1]["step"] >= 6)
    assert result.stopped and len(result.losses) == 6
    assert [e["step"] for e in seen] == [0, 3, 6] == result.steps
    assert set(seen[-1]) == {"step", "elapsed", "forget_nll", "forget_prob", "retain_nll"}


def test_before_after_metrics(memorised):
    result = run_unlearning(memorised.model, memorised.tokenizer, FACTS[:2], FACTS[2:6], "grad_diff", steps=6,
                            lr=1e-3, eval_every=3, final_metrics=True)
    b, a = result.before["forget"]["f0"], result.after["forget"]["f0"]
    assert b["exact_match"] == 1.0 and a["answer_nll"] > b["answer_nll"]
    assert {"answer_nll", "exact_match", "extraction_strength", "rouge_l_recall"} <= set(a)
    assert set(result.before["retain"]) == {"f2", "f3", "f4", "f5"}


def test_bad_unlearning_requests(memorised):
    m, tok = memorised.model, memorised.tokenizer
    with pytest.raises(ValueError, match="unknown unlearning method 'dpo'"):
        run_unlearning(m, tok, FACTS[:2], FACTS[2:], "dpo")
    with pytest.raises(ValueError, match="npo has no hyper-parameter delta; it takes beta, alpha, gamma"):
        run_unlearning(m, tok, FACTS[:2], FACTS[2:], "npo", delta=1)
    with pytest.raises(ValueError, match="needs retain samples"):
        run_unlearning(m, tok, FACTS[:2], [], "npo")
    with pytest.raises(ValueError, match="forget set is empty"):
        run_unlearning(m, tok, [], FACTS, "npo")
    assert set(LABEL_METHODS) == set(METHODS) - {"grad_ascent"}


def test_finetuned_models_are_cached_by_content(tmp_path, monkeypatch):
    import cud_core.pipeline.finetune as ft
    from cud_core.engine.tiny import tiny_model

    monkeypatch.setenv("CUD_CACHE_DIR", str(tmp_path))
    lm = tiny_model("llama")
    settings = FinetuneSettings(epochs=2, lr=1e-3)
    first = finetuned(lm, FACTS[:4], settings)
    monkeypatch.setattr(ft, "finetune", lambda *a, **k: pytest.fail("trained twice"))
    again = finetuned(lm, FACTS[:4], settings)
    assert first.name == again.name and first.name.startswith("tiny-llama+ft-")
    for (k, v), (_, w) in zip(first.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(v, w), k
    monkeypatch.undo()
    monkeypatch.setenv("CUD_CACHE_DIR", str(tmp_path))
    other = finetuned(lm, FACTS[:5], settings)  # different content, different model
    assert other.name != first.name
