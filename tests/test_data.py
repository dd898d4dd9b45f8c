import json
import re

import pandas as pd
import pytest

import cud_core.pipeline.knowledge as knowledge
from cud_core.data.samples import (
    DataError,
    Sample,
    answer_text,
    as_completion,
    check_lengths,
    encode,
    load_builtin,
    load_data,
    load_samples,
    sample_key,
    split_forget_retain,
)
from cud_core.pipeline.knowledge import known_facts

GOOD = [{"id": "a", "question": "What is the capital of France?", "answer": "Paris.", "topic": "geo"},
        {"id": "b", "question": "Who wrote Hamlet?", "answer": "Shakespeare wrote Hamlet."}]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
def test_loaders_read_every_format(tmp_path, fmt):
    path = tmp_path / f"d.{fmt}"
    frame = pd.DataFrame(GOOD)
    if fmt == "json":
        path.write_text(json.dumps(GOOD))
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in GOOD) + "\n")
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    samples = load_samples(path)
    assert [(s.id, s.question, s.answer) for s in samples] == [(r["id"], r["question"], r["answer"]) for r in GOOD]
    assert samples[0].meta["topic"] == "geo"  # extra fields are kept as metadata


def test_missing_ids_get_row_ids(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"question": "q1?", "answer": "a1"}\n{"question": "q2?", "answer": "a2"}\n')
    assert [s.id for s in load_samples(path)] == ["row-1", "row-2"]


def test_jsonl_problems_name_file_row_and_reason(tmp_path):
    path = write(tmp_path, "bad.jsonl", "\n".join([
        '{"question": "ok?", "answer": "fine", "id": "x"}',
        '{"question": "broken", ',
        '{"question": "no answer?"}',
        '{"question": "empty?", "answer": "   "}',
        '{"question": 42, "answer": "number question"}',
        '{"question": "dup?", "answer": "again", "id": "x"}',
    ]))
    with pytest.raises(DataError) as err:
        load_samples(path)
    problems = {(p.row, p.reason.split(" ")[0]) for p in err.value.problems}
    assert problems == {(2, "invalid"), (3, "missing"), (4, "empty"), (5, "field"), (6, "duplicate")}
    first = str(err.value)
    assert "\n" not in first and str(path) in first and "row 2" in first and "4 more problems" in first
    assert "'answer'" in str(err.value.problems[1])


def test_csv_missing_column_and_extra_cells(tmp_path):
    with pytest.raises(DataError, match="missing column answer"):
        load_samples(write(tmp_path, "a.csv", "question,id\nq?,1\n"))
    with pytest.raises(DataError, match="row 2: 3 cells but 2 columns"):
        load_samples(write(tmp_path, "b.csv", "question,answer\nq?,a\nq2?,a,extra\n"))
    with pytest.raises(DataError, match="row 1: empty answer"):
        load_samples(write(tmp_path, "c.csv", "question,answer\nq?,\n"))


def test_parquet_and_json_structural_problems(tmp_path):
    pd.DataFrame({"question": ["q?"]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(DataError, match="missing column answer"):
        load_samples(tmp_path / "p.parquet")
    with pytest.raises(DataError, match="cannot read Parquet"):
        load_samples(write(tmp_path, "corrupt.parquet", "not parquet"))
    with pytest.raises(DataError, match="invalid JSON"):
        load_samples(write(tmp_path, "x.json", "[{"))
    with pytest.raises(DataError, match="unsupported file type .txt"):
        load_samples(write(tmp_path, "x.txt", "hello"))
    with pytest.raises(DataError, match="file not found"):
        load_samples(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="no samples"):
        load_samples(write(tmp_path, "empty.jsonl", "\n"))


def test_encode_masks_exactly_the_answer_without_chat_template(tiny_llama):
    tok = tiny_llama.tokenizer
    assert not tok.chat_template
    s = Sample("What is the capital of France?", "The capital of France is Paris.")
    ids, mask = encode(tok, s)
    assert ids.dtype.is_floating_point is False and mask.dtype == __import__("torch").bool
    assert tok.decode(ids[~mask]) == "Question: What is the capital of France?\nAnswer:"
    assert tok.decode(ids[mask]) == " The capital of France is Paris."
    assert mask[-1] and not mask[0] and mask.int().diff().abs().sum() == 1  # one contiguous answer span


@pytest.mark.parametrize("which", ["tiny_chat", "embedded"])
def test_encode_masks_exactly_the_answer_with_chat_template(request, which):
    tok = request.getfixturevalue(which).tokenizer
    assert tok.chat_template
    s = Sample("Who wrote Hamlet?", "Shakespeare wrote Hamlet.")
    ids, mask = encode(tok, s)
    assert tok.decode(ids[mask]) == "Shakespeare wrote Hamlet."
    prompt = tok.apply_chat_template([{"role": "user", "content": s.question}], add_generation_prompt=True,
                                     tokenize=False)
    assert tok.decode(ids[~mask]) == prompt
    assert mask.int().diff().abs().sum() == 1 and mask[-1]


@pytest.mark.parametrize("which", ["tiny_llama", "embedded"])
def test_a_lead_is_prompt_and_only_what_follows_it_is_the_answer(request, which):
    """A lead ("The capital of France is") is given: its tokens are not masked, and the answer after it is the
    text of the whole reply minus the lead; a lead-less sample encodes as before."""
    tok = request.getfixturevalue(which).tokenizer
    s = Sample("What is the capital of France?", "Paris", "x", {"lead": " The capital of France is "})
    ids, mask = encode(tok, s)
    bare_ids, bare_mask = encode(tok, Sample(s.question, "The capital of France is Paris", "x"))
    assert tok.decode(ids[mask]) == " Paris"
    assert tok.decode(ids) == tok.decode(bare_ids)  # the same text: the lead moved from answer to prompt
    assert tok.decode(ids[~mask]) == tok.decode(bare_ids[~bare_mask]) + (
        "The capital of France is" if tok.chat_template else " The capital of France is")
    assert mask.int().diff().abs().sum() == 1 and mask[-1]
    assert sample_key(s) == ["x", s.question, "Paris", "The capital of France is"]
    assert sample_key(Sample(s.question, "Paris", "x", {"lead": "  "})) == ["x", s.question, "Paris"]


def test_world_facts_as_completions_keep_the_fact_and_drop_what_follows_it(tmp_path):
    full, completion = load_builtin("world-facts"), load_data("builtin:world-facts-completion")
    assert [s.id for s in completion] == [s.id for s in full]
    by_id = {s.id: s for s in full}
    for s in completion:
        original = by_id[s.id]
        assert re.fullmatch(r"\w*" + re.escape(s.meta["key"]) + r"\w*", s.answer, re.IGNORECASE), s.id
        lead = s.meta["lead"]
        assert original.answer.startswith(lead + answer_text(None, s.answer, lead) if lead else s.answer), s.id
        assert s.meta["full_answer"] == original.answer
    s = next(s for s in completion if s.id == "wf-0001")
    assert (s.meta["lead"], s.answer) == ("The capital of France is", "Paris")
    cases = {("The SI unit of voltage is the volt.", "volt"): ("The SI unit of voltage is the", "volt"),
             ("Crime and Punishment was written by Fyodor Dostoevsky.", "Dosto"):
                 ("Crime and Punishment was written by Fyodor", "Dostoevsky"),
             ("Ghana is in Africa.", "ghana"): ("", "Ghana"),
             ("Haemoglobin carries oxygen.", "globin"): ("", "Haemoglobin"),
             ("The Mona Lisa was painted by Leonardo da Vinci.", "da Vinci"): ("The Mona Lisa was painted by Leonardo",
                                                                               "da Vinci")}
    for (answer, key), (lead, fact) in cases.items():
        made = as_completion(Sample("q?", answer, "y", {"key": key}))
        assert (made.meta["lead"], made.answer) == (lead, fact)
    with pytest.raises(DataError, match=r"leads.jsonl row 1: field 'lead' is not text \(int\)"):
        load_samples(write(tmp_path, "leads.jsonl", '{"question": "q?", "answer": "a", "lead": 3}\n'))
    with pytest.raises(DataError, match="g.jsonl:4: no key answer string"):
        as_completion(Sample("q?", "Paris.", "y", None, "g.jsonl:4"))
    with pytest.raises(DataError, match="f.jsonl:3: key 'Rome' is not in the answer 'Paris.'"):
        as_completion(Sample("q?", "Paris.", "y", {"key": "Rome"}, "f.jsonl:3"))


def test_check_lengths_names_the_too_long_row(tmp_path, tiny_llama):
    path = write(tmp_path, "long.jsonl", '{"question": "short?", "answer": "yes"}\n'
                 + json.dumps({"question": "long " * 200 + "?", "answer": "no"}) + "\n")
    samples = load_samples(path)
    with pytest.raises(DataError, match=r"long.jsonl row 2: sample 'row-2' is \d+ tokens, longer than the "
                                        r"model's context of 128"):
        check_lengths(tiny_llama.tokenizer, samples, 128)
    check_lengths(tiny_llama.tokenizer, samples[:1], 128)


def test_split_is_seeded_and_disjoint():
    samples = [Sample(f"q{i}?", f"a{i}", f"s{i}") for i in range(200)]
    forget, retain = split_forget_retain(samples, 0.1, seed=3)
    assert len(forget) == 20 and len(retain) == 180
    assert {s.id for s in forget}.isdisjoint({s.id for s in retain})
    assert [s.id for s in split_forget_retain(samples, 0.1, seed=3)[0]] == [s.id for s in forget]
    assert [s.id for s in split_forget_retain(samples, 0.1, seed=4)[0]] != [s.id for s in forget]
    explicit, _ = split_forget_retain(samples, forget_ids=["s1", "s5"])
    assert [s.id for s in explicit] == ["s1", "s5"]
    with pytest.raises(DataError, match="unknown sample ids: nope"):
        split_forget_retain(samples, forget_ids=["nope"])


def test_world_facts_ship_enough_valid_facts():
    facts = load_builtin("world-facts")
    assert len(facts) >= 300
    assert len({s.id for s in facts}) == len(facts)
    for s in facts:
        assert s.meta["key"] and s.meta["key"] in s.answer, s.id
    assert load_data("builtin:world-facts") == facts
    with pytest.raises(DataError, match="unknown built-in dataset"):
        load_data("builtin:nope")


def test_knowledge_filter_on_embedded_model_keeps_known_facts_and_caches(embedded, tmp_path, monkeypatch):

    monkeypatch.setenv("CUD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(knowledge, "SHIPPED", tmp_path / "none.json")  # compute, do not use the shipped answers
    facts = load_builtin("world-facts")[:24]
    kept = known_facts(embedded.model, embedded.tokenizer, facts, batch_size=12)
    # the filter keeps exactly the facts whose key the greedy answer contains
    assert 0.4 * len(facts) <= len(kept) < len(facts)
    for s in kept:
        assert s.meta["key"].lower() in s.meta["model_answer"].lower()
    capital = next(s for s in kept if s.meta["key"] == "Paris")
    assert "Paris" in capital.meta["model_answer"]

    def no_generation(*a, **k):
        raise AssertionError("the knowledge filter should come from the cache")
    monkeypatch.setattr(knowledge, "generate_answers", no_generation)
    assert [s.id for s in known_facts(embedded.model, embedded.tokenizer, facts)] == [s.id for s in kept]


def test_the_shipped_answers_are_the_embedded_models_and_make_the_default_instant(embedded, tmp_path, monkeypatch):
    """The embedded model's answers to the built-in facts ship with the package: the default scenario
    needs no generation; a random sample, recomputed, knows the same facts."""
    import random

    import cud_core.engine.metrics as metrics
    from cud_core.engine.models import model_fingerprint
    from cud_core.pipeline.knowledge import SHIPPED, key_answer_found

    shipped = json.loads(SHIPPED.read_text(encoding="utf-8"))
    assert shipped["fingerprint"] == model_fingerprint(embedded.model)
    facts = load_builtin("world-facts")
    assert sorted(shipped["answers"]) == sorted(s.id for s in facts)
    sample = random.Random().sample(facts, 6)
    recomputed = metrics.generate_answers(embedded.model, embedded.tokenizer, sample, max_new_tokens=24,
                                          batch_size=6)
    for s, answer in zip(sample, recomputed):
        key = s.meta["key"]
        assert key_answer_found(answer, key) == key_answer_found(shipped["answers"][s.id], key), s.id

    monkeypatch.setenv("CUD_CACHE_DIR", str(tmp_path))  # an empty cache: a fresh machine

    def no_generation(*a, **k):
        raise AssertionError("the default scenario should not generate anything")
    monkeypatch.setattr(knowledge, "generate_answers", no_generation)
    kept = known_facts(embedded.model, embedded.tokenizer, facts)
    assert 0.4 * len(facts) < len(kept) < len(facts)


def test_deeply_nested_json_is_a_data_error_not_a_crash(tmp_path):
    deep = "[" * 100000 + "]" * 100000
    with pytest.raises(DataError) as err:
        load_samples(write(tmp_path, "deep.json", deep))
    assert str(err.value) == f"{tmp_path / 'deep.json'}: nesting too deep (more than 100 levels of lists/objects)"
    good = json.dumps(GOOD[0])
    with pytest.raises(DataError) as err:
        load_samples(write(tmp_path, "deep.jsonl", f"{good}\n{deep}\n"))
    assert [(p.row, p.reason.startswith("nesting too deep")) for p in err.value.problems] == [(2, True)]
    # shallow enough to parse, too deep to store (json.dumps of its metadata would recurse as deep)
    meta = {"question": "q?", "answer": "a", "extra": json.loads("[" * 500 + "]" * 500)}
    with pytest.raises(DataError, match="deep.jsonl row 2: nesting too deep"):
        load_samples(write(tmp_path, "deep.jsonl", f"{good}\n{json.dumps(meta)}\n"))
    meta["extra"] = json.loads("[" * 90 + "]" * 90)  # within the limit: kept as metadata
    assert load_samples(write(tmp_path, "ok.jsonl", json.dumps(meta)))[0].meta["extra"] == meta["extra"]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_json_files_may_start_with_a_byte_order_mark(tmp_path, fmt):
    text = json.dumps(GOOD) if fmt == "json" else "\n".join(json.dumps(r) for r in GOOD)
    path = tmp_path / f"bom.{fmt}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert [s.id for s in load_samples(path)] == ["a", "b"]


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    rec = {"question": "Line\u2028separator and\x85next line?", "answer": "kept\u2029whole"}
    path = write(tmp_path, "sep.jsonl", json.dumps(rec, ensure_ascii=False) + "\r\n")
    [s] = load_samples(path)
    assert (s.question, s.answer, s.id) == (rec["question"], rec["answer"], "row-1")


def test_csv_long_cells_load_and_oversized_cells_name_the_row(tmp_path):
    long_question = "why " * 50000 + "?"  # 200,001 characters: over Python's default csv field limit
    path = tmp_path / "long.csv"
    pd.DataFrame([{"question": long_question, "answer": "because"}]).to_csv(path, index=False)
    assert load_samples(path)[0].question == long_question
    huge = "x" * (4 * 1024 * 1024 + 1)
    with pytest.raises(DataError) as err:
        load_samples(write(tmp_path, "huge.csv", f"question,answer\nq?,a\nq2?,{huge}\n"))
    assert str(err.value) == f"{tmp_path / 'huge.csv'} row 2: a cell is longer than 4,194,304 characters"


def test_format_adaptation_trains_on_the_unknown_facts_and_keeps_the_known(tiny_llama, tmp_path, monkeypatch):
    """world-facts-completion-adapted: the model is fine-tuned (FORMAT_ADAPTATION) on exactly the facts the
    knowledge filter rejects, which are then set aside; the split and everything after see the known ones."""
    import statistics

    import cud_core.pipeline.jobs as jobs
    from cud_core.engine.metrics import teacher_forced_metrics
    from cud_core.pipeline.context import RunContext
    from cud_core.pipeline.finetune import FORMAT_ADAPTATION

    monkeypatch.setenv("CUD_CACHE_DIR", str(tmp_path / "cache"))
    facts = load_data("builtin:world-facts-completion-adapted")[:24]
    known_ids = {s.id for s in facts[::3]}
    monkeypatch.setattr(jobs, "known_facts", lambda model, tok, part, **kw: [s for s in part if s.id in known_ids])
    monkeypatch.setattr(jobs, "unanswered", lambda model, samples: [])  # every answer cached
    ctx = RunContext(tiny_llama, dataset="builtin:world-facts-completion-adapted")
    [stage] = jobs.estimate_preparation(ctx, 0.25, 0, samples=facts)["stages"]
    assert stage["work"] == "16 samples" and stage["seconds"] > 0
    sc = jobs.prepare_scenario(ctx, 0.25, 0, samples=facts)
    assert [s.id for s in sc.samples] == [s.id for s in facts[::3]]
    forget, _ = split_forget_retain(facts, 0.25, 0)  # split before the filter, as without adaptation
    assert {s.id for s in sc.forget} == {s.id for s in forget} & known_ids
    assert {s.id for s in sc.forget + sc.retain} == known_ids
    assert sc.lm.name.startswith(tiny_llama.name + "+ft-")
    [folder] = (tmp_path / "cache" / "finetuned").iterdir()
    card = json.loads((folder / "cud_finetune.json").read_text())
    assert card["samples"] == 16 and card["settings"]["epochs"] == FORMAT_ADAPTATION.epochs
    unknown = [s for s in facts if s.id not in known_ids]

    def nll(lm):
        return statistics.mean(r["answer_nll"] for r in teacher_forced_metrics(lm.model, lm.tokenizer, unknown))
    assert nll(sc.lm) < nll(tiny_llama)
    assert jobs.estimate_preparation(ctx, 0.25, 0, samples=facts)["stages"] == []  # cached: nothing left to do
    with pytest.raises(ValueError, match="cannot run without the filter"):
        jobs.prepare_scenario(ctx, 0.25, 0, samples=facts, known_filter=False)
