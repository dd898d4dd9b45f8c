"""Per-sample answer metrics, batched: answer NLL and probability, teacher-forced exact
match, extraction strength, and ROUGE-L recall of a greedy generation.

All losses are over answer tokens only; the prompt is context.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cud_core.data.samples import Sample, encode, encode_context


@dataclass
class Batch:
    input_ids: torch.Tensor       # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T]
    answer_mask: torch.Tensor     # [B, T] True on answer tokens

    def to(self, device):
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.answer_mask.to(device))


def pad_token_id(tokenizer) -> int:
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return 0 if pid is None else int(pid)


def collate(tokenizer, samples: list[Sample]) -> Batch:
    encoded = [encode(tokenizer, s) for s in samples]
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(samples), width), pad_token_id(tokenizer), dtype=torch.long)
    attn = torch.zeros((len(samples), width), dtype=torch.long)
    ans = torch.zeros((len(samples), width), dtype=torch.bool)
    for i, (x, m) in enumerate(encoded):
        ids[i, : len(x)], attn[i, : len(x)], ans[i, : len(x)] = x, 1, m
    return Batch(ids, attn, ans)


def chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i: i + size]


def answer_token_logprobs(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each next token [B, T-1] and the mask of answer targets [B, T-1]."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = batch.input_ids[:, 1:]
    return logp.gather(-1, target.unsqueeze(-1)).squeeze(-1), batch.answer_mask[:, 1:]


def answer_nll(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean answer-token negative log-likelihood per sample, [B]."""
    token_logp, mask = answer_token_logprobs(logits, batch)
    return -(token_logp * mask).sum(1) / mask.sum(1).clamp(min=1)


def extraction_strength(correct: torch.Tensor) -> float:
    """Extraction strength (Carlini et al., 2021; as open-unlearning's `extraction_strength` in
    `src/evals/metrics/memorization.py` computes it): 1 − k/|y| for the smallest k whose answer suffix
    y[k:] is predicted exactly (teacher-forced argmax). open-unlearning's loop stops at k = |y| − 1 when
    no suffix matches, so a wrong last token gives 1/|y|, not 0 (and a one-token answer always 1); an
    empty answer gives 0."""
    n = len(correct)
    if n == 0:
        return 0.0
    wrong = (~correct).nonzero()
    k = 0 if len(wrong) == 0 else min(int(wrong[-1]) + 1, n - 1)
    return 1.0 - k / n


@torch.no_grad()
def teacher_forced_metrics(model, tokenizer, samples: list[Sample], batch_size: int = 8) -> list[dict]:
    """answer_nll, answer_prob, exact_match (teacher-forced token accuracy), extraction_strength."""
    device = next(model.parameters()).device
    out = []
    for group in chunks(samples, batch_size):
        batch = collate(tokenizer, group).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        token_logp, mask = answer_token_logprobs(logits, batch)
        nll = -(token_logp * mask).sum(1) / mask.sum(1)
        correct = logits[:, :-1].argmax(-1) == batch.input_ids[:, 1:]
        for i in range(len(group)):
            c = correct[i][mask[i]].cpu()
            out.append({"answer_nll": float(nll[i]), "answer_prob": math.exp(-float(nll[i])),
                        "exact_match": float(c.float().mean()), "extraction_strength": extraction_strength(c),
                        "answer_tokens": int(mask[i].sum())})
    return out


@torch.no_grad()
def generate_answers(model, tokenizer, samples: list[Sample], max_new_tokens: int = 32, batch_size: int = 8,
                     progress=None, with_lead: bool = True) -> list[str]:
    """Greedy answers to each sample's question (left-padded batches; stops at EOS), continued from its lead
    where it has one (the text after the lead; `with_lead=False`: answers to the bare question)."""
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    answers = []
    for n_done, group in enumerate(chunks(samples, batch_size)):
        prompts = [encode_context(tokenizer, s, with_lead) for s in group]
        width = max(map(len, prompts))
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        attn = torch.zeros((len(group), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):], attn[i, width - len(p):] = torch.tensor(p), 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                             temperature=None, top_p=None, top_k=None)
        answers += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in gen]
        if progress:
            progress(min(1.0, (n_done + 1) * batch_size / len(samples)), f"generated {len(answers)}/{len(samples)}")
    return answers


def rouge_l_recall(generated: str, reference: str) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return scorer.score(reference, generated)["rougeL"].recall


def compute_metrics(model, tokenizer, samples: list[Sample], batch_size: int = 8, generate: bool = True,
                    max_new_tokens: int | None = None, progress=None) -> list[dict]:
    """All per-sample metrics, one dict per sample (same order), keyed by the sample id."""
    rows = teacher_forced_metrics(model, tokenizer, samples, batch_size)
    if generate:
        longest = max(r["answer_tokens"] for r in rows)
        texts = generate_answers(model, tokenizer, samples, max_new_tokens or longest + 8, batch_size, progress)
        for r, s, t in zip(rows, samples, texts):
            r["generation"], r["rouge_l_recall"] = t, rouge_l_recall(t, s.answer)
    for r, s in zip(rows, samples):
        r["id"] = s.id
    return rows
