"""The knowledge filter (SPEC §4): keep the built-in facts the loaded model actually knows.

Kept apart from `data` (which stays at the bottom of the import graph): it generates answers with
`metrics` and caches them with `store`, both of which import `data`.
"""
from __future__ import annotations

import json

from .data import Sample


def key_answer_found(generated: str, key: str) -> bool:
    return key.strip().lower() in generated.lower()


def known_facts(model, tokenizer, samples: list[Sample], batch_size: int = 16, use_cache: bool = True,
                progress=None) -> list[Sample]:
    """The samples whose key answer string appears in the model's greedy answer (cached per model)."""
    from .metrics import generate_answers
    from .models import cache_dir, model_fingerprint

    cache_file = cache_dir() / "known_facts" / f"{model_fingerprint(model)}.json"
    cached = json.loads(cache_file.read_text()) if use_cache and cache_file.is_file() else {}
    todo = [s for s in samples if s.id not in cached]
    if todo:
        answers = generate_answers(model, tokenizer, todo, max_new_tokens=24, batch_size=batch_size,
                                   progress=progress)
        cached.update({s.id: a for s, a in zip(todo, answers)})
        if use_cache:
            from .store import atomic_write_text
            atomic_write_text(cache_file, json.dumps(cached, indent=0))
    kept = []
    for s in samples:
        key = (s.meta or {}).get("key") or s.answer
        if key_answer_found(cached[s.id], key):
            kept.append(Sample(s.question, s.answer, s.id, {**(s.meta or {}), "model_answer": cached[s.id]}, s.source))
    return kept
