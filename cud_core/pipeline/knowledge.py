"""The knowledge filter: keep the built-in facts the loaded model actually knows.

Kept apart from `data` (which stays at the bottom of the import graph): it generates answers with
`metrics`, which imports `data`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cud_core.data.samples import BUILTIN_DIR, Sample, load_builtin
from cud_core.engine.metrics import generate_answers
from cud_core.engine.models import EMBEDDED_NAME, cache_dir, legacy_fingerprints, load_model, model_fingerprint
from cud_core.engine.stopping import Interrupted, Stopped, interruptible
from cud_core.store.atomic import atomic_write_text


def key_answer_found(generated: str, key: str) -> bool:
    return key.strip().lower() in generated.lower()


# The embedded model's answers to the built-in facts, shipped so that the default scenario is ready at
# once (`python -m cud_core.pipeline.knowledge --ship` writes it; a test recomputes a sample and compares).
ANSWER_TOKENS = 24
SHIPPED = BUILTIN_DIR / "world_facts_answers.json"


def shipped_answers(fingerprint: str) -> dict[str, str]:
    """The shipped greedy answers when they were computed for the model with this fingerprint."""
    if not SHIPPED.is_file():
        return {}
    data = json.loads(SHIPPED.read_text(encoding="utf-8"))
    return data["answers"] if data.get("fingerprint") == fingerprint else {}


def _answer_cache(model, use_cache: bool = True) -> tuple[Path, dict[str, str]]:
    """The model's answer cache file and the answers known so far (shipped ones included); a cache
    written under a legacy fingerprint of the model is adopted (renamed) first."""
    fingerprint = model_fingerprint(model)
    folder = cache_dir() / "known_facts"
    cache_file = folder / f"{fingerprint}.json"
    for old in sorted(legacy_fingerprints(model)) if use_cache and not cache_file.is_file() else ():
        if (folder / f"{old}.json").is_file():
            os.replace(folder / f"{old}.json", cache_file)
            break
    if not use_cache:
        return cache_file, {}
    cached = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    return cache_file, {**shipped_answers(fingerprint), **cached}


def unanswered(model, samples: list[Sample]) -> list[Sample]:
    """The samples the knowledge filter would still have to generate an answer for (no cached or shipped one)."""
    _, cached = _answer_cache(model)
    return [s for s in samples if s.id not in cached]


def known_facts(model, tokenizer, samples: list[Sample], batch_size: int = 16, use_cache: bool = True,
                progress=None, should_stop=None) -> list[Sample]:
    """The samples whose key answer string appears in the model's greedy answer (cached per model) to the bare
    question: a lead is not given, so a fact and its completion form (same id) share one answer.

    Answers are generated batch by batch and the cache is written after each batch, so a stopped or
    killed filter resumes where it was; `should_stop()` is checked between batches (raises Stopped)."""
    cache_file, cached = _answer_cache(model, use_cache)
    todo = [s for s in samples if s.id not in cached]
    t0, n_cached = time.time(), len(samples) - len(todo)
    for i in range(0, len(todo), batch_size):
        stopped = Stopped(f"stopped while checking which facts the model knows ({n_cached + i}/{len(samples)} "
                          "done and cached)")
        if should_stop and should_stop():
            raise stopped
        group = todo[i: i + batch_size]
        try:
            with interruptible(model, should_stop):  # a Stop also ends a batch part-way
                answers = generate_answers(model, tokenizer, group, max_new_tokens=ANSWER_TOKENS,
                                           batch_size=batch_size, with_lead=False)
        except Interrupted:
            raise stopped from None
        cached.update(zip((s.id for s in group), answers))
        if use_cache:
            atomic_write_text(cache_file, json.dumps(cached, indent=0))
        if progress:
            done = i + len(group)
            eta = (time.time() - t0) / done * (len(todo) - done)
            progress((n_cached + done) / len(samples), f"answered {n_cached + done}/{len(samples)} questions, "
                                                        f"about {eta:.0f} s left")
    kept = []
    for s in samples:
        key = (s.meta or {}).get("key") or s.answer
        if key_answer_found(cached[s.id], key):
            kept.append(Sample(s.question, s.answer, s.id, {**(s.meta or {}), "model_answer": cached[s.id]}, s.source))
    return kept


def ship_embedded_answers() -> Path:
    """Compute the embedded model's answers to every built-in fact and write them to SHIPPED."""
    lm = load_model("embedded", device="cpu")
    facts = load_builtin("world-facts")
    answers = generate_answers(lm.model, lm.tokenizer, facts, max_new_tokens=ANSWER_TOKENS, batch_size=16,
                               with_lead=False)
    atomic_write_text(SHIPPED, json.dumps({"model": EMBEDDED_NAME, "fingerprint": model_fingerprint(lm.model),
                                           "max_new_tokens": ANSWER_TOKENS,
                                           "answers": {s.id: a for s, a in zip(facts, answers)}}, indent=0,
                                          ensure_ascii=False))
    return SHIPPED


if __name__ == "__main__":
    print(ship_embedded_answers())
