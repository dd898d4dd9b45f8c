import math

import pytest
import torch
import torch.nn.functional as F

from cud_core.data.samples import Sample, encode
from cud_core.engine.metrics import (
    compute_metrics,
    extraction_strength,
    generate_answers,
    rouge_l_recall,
    teacher_forced_metrics,
)

SAMPLES = [Sample("What is the capital of France?", "The capital of France is Paris.", "a"),
           Sample("Who wrote Hamlet?", "Shakespeare.", "b"),
           Sample("Where was Alice born?", "Alice was born in Lisbon in 1961 and writes mystery novels.", "c")]


def hand_metrics(model, tokenizer, sample):
    """Reference: one unpadded sequence, cross-entropy by hand on answer positions."""
    ids, mask = encode(tokenizer, sample)
    with torch.no_grad():
        logits = model(ids[None]).logits[0]
    pos = mask.nonzero().squeeze(1)  # answer tokens; predicted from the position before
    pred_logits, targets = logits[pos - 1], ids[pos]
    nll = F.cross_entropy(pred_logits, targets).item()
    correct = (pred_logits.argmax(-1) == targets).tolist()
    n = len(correct)  # open-unlearning's loop: the first k whose suffix is all right, else k = n − 1
    k = next((k for k in range(n) if all(correct[k:])), n - 1)
    return nll, sum(correct) / n, 1 - k / n


def test_teacher_forced_metrics_match_hand_computation_and_batching(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    batched = teacher_forced_metrics(model, tok, SAMPLES, batch_size=3)
    for s, row in zip(SAMPLES, batched):
        nll, em, es = hand_metrics(model, tok, s)
        assert row["answer_nll"] == pytest.approx(nll, abs=1e-5)
        assert row["answer_prob"] == pytest.approx(math.exp(-nll), rel=1e-5)
        assert row["exact_match"] == pytest.approx(em)
        assert row["extraction_strength"] == pytest.approx(es)
    single = teacher_forced_metrics(model, tok, SAMPLES, batch_size=1)
    assert [r["answer_nll"] for r in single] == pytest.approx([r["answer_nll"] for r in batched], abs=1e-5)


def test_extraction_strength_definition():
    t, f = True, False
    assert extraction_strength(torch.tensor([t, t, t, t])) == 1.0
    assert extraction_strength(torch.tensor([f, t, t, t])) == 0.75
    assert extraction_strength(torch.tensor([t, f, t, t])) == 0.5
    assert extraction_strength(torch.tensor([t, t, t, f])) == 0.25  # no suffix matches: 1/|y| (open-unlearning)
    assert extraction_strength(torch.tensor([f])) == 1.0 - 0 / 1  # k stops at |y| − 1 = 0
    assert extraction_strength(torch.tensor([], dtype=torch.bool)) == 0.0


def test_rouge_l_recall():
    # LCS("paris is the capital", "the capital of france is paris") = "the capital": 2 of 4 reference words
    assert rouge_l_recall("The capital of France is Paris.", "Paris is the capital.") == pytest.approx(0.5)
    assert rouge_l_recall("Paris is the capital of France", "Paris is the capital.") == pytest.approx(1.0)
    assert rouge_l_recall("", "Paris") == 0.0


def test_greedy_generation_batched_equals_single(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    batched = generate_answers(model, tok, SAMPLES, max_new_tokens=6, batch_size=3)
    single = [generate_answers(model, tok, [s], max_new_tokens=6)[0] for s in SAMPLES]
    assert batched == single


def test_generation_continues_from_the_lead(tiny_llama):
    """A sample with a lead is answered from the prompt plus its lead (what follows the lead); with
    with_lead=False, from the bare question, as the knowledge filter asks."""
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    bare = Sample("What is the capital of France?", "Paris", "a")
    led = Sample(bare.question, "Paris", "a", {"lead": "The capital of France is"})
    ids, mask = encode(tok, led)
    prompt = ids[~mask]  # the prompt and the lead, as teacher forcing sees them
    expected = model.generate(input_ids=prompt[None], attention_mask=torch.ones_like(prompt)[None], do_sample=False,
                              max_new_tokens=5, pad_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    assert generate_answers(model, tok, [led], max_new_tokens=5) == [
        tok.decode(expected[0, len(prompt):], skip_special_tokens=True).strip()]
    assert generate_answers(model, tok, [led], max_new_tokens=5, with_lead=False) == generate_answers(
        model, tok, [bare], max_new_tokens=5)
    assert generate_answers(model, tok, [led], max_new_tokens=5) != generate_answers(model, tok, [bare],
                                                                                     max_new_tokens=5)


def test_compute_metrics_on_embedded_model(embedded):
    rows = compute_metrics(embedded.model, embedded.tokenizer,
                           [Sample("What is the capital of France?", "The capital of France is Paris.", "fr"),
                            Sample("What is the capital of France?", "The capital of France is Berlin.", "wrong")])
    right, wrong = rows
    assert right["id"] == "fr" and "Paris" in right["generation"]
    assert right["rouge_l_recall"] > 0.8 and right["extraction_strength"] == 1.0
    assert wrong["answer_nll"] > right["answer_nll"] + 0.5
    # only the final "." after the wrong " Berlin" is predicted right: 1 of 7 answer tokens
    assert wrong["answer_tokens"] == 7 and wrong["extraction_strength"] == pytest.approx(1 / 7)
