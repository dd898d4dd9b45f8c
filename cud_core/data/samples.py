"""Question/answer samples: loading, validation, encoding and forget/retain splits.

Every problem in an input file is reported with the file, the row and the reason (`DataError`);
nothing is silently dropped.
"""
from __future__ import annotations

import csv
import io
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cud_core.data.fictitious import fictitious_records

BUILTIN_DIR = Path(__file__).parent / "builtin"
WORLD_FACTS = BUILTIN_DIR / "world_facts.jsonl"
# name -> description; `fictitious-authors:N` picks the number of invented authors (default 20)
BUILTINS = {"world-facts": "1,210 common-knowledge facts, filtered to those the model knows",
            "world-facts-completion": "the same facts as completions: the answer's lead-in is given and only the "
                                      "fact (its key) is scored and unlearned",
            "world-facts-completion-adapted": "the completions, with the model first adapted to their format on "
                                              "the facts it does not know (which are then set aside)",
            "fictitious-authors": "invented author profiles (6 questions each); the model is fine-tuned on them first",
            "fictitious-authors-completion": "the invented authors' facts as completions (the lead-in is given, the "
                                             "fact is the answer); the model is fine-tuned on them first"}
SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
MAX_NESTING = 100  # levels of lists/objects in one record; deeper data is rejected, not recursed into
TOO_DEEP = f"nesting too deep (more than {MAX_NESTING} levels of lists/objects)"
CSV_FIELD_LIMIT = 4 * 1024 * 1024  # characters in one CSV cell (Python's default, 131,072, is too small)
csv.field_size_limit(CSV_FIELD_LIMIT)
NON_CHAT_PROMPT = "Question: {question}\nAnswer:"
OPENERS = "([{‘“/-"  # a lead ending in one of these is followed by the answer without a space


@dataclass
class Sample:
    question: str
    answer: str
    id: str | None = None
    meta: dict | None = None
    source: str | None = field(default=None, compare=False)  # "file:row", for error messages


@dataclass
class Problem:
    file: str
    row: int | None
    reason: str

    def __str__(self):
        return f"{self.file} row {self.row}: {self.reason}" if self.row is not None else f"{self.file}: {self.reason}"


class DataError(Exception):
    """One or more problems in input data; `str()` is a one-line summary, `.problems` the full list."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        more = f" (and {len(problems) - 1} more problem{'s' * (len(problems) > 2)})" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}")

    def report(self, limit: int = 20) -> str:
        lines = [str(p) for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"... {len(self.problems) - limit} more")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- encoding

def prompt_text(tokenizer, question: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                             add_generation_prompt=True, tokenize=False)
    return NON_CHAT_PROMPT.format(question=question)


def encode_prompt(tokenizer, question: str) -> list[int]:
    text = prompt_text(tokenizer, question)
    # a chat template already carries its special tokens (e.g. BOS) as text
    return tokenizer(text, add_special_tokens=not getattr(tokenizer, "chat_template", None))["input_ids"]


def lead_of(sample: Sample) -> str:
    """The sample's lead: text the answer starts with that is given to the model as part of the prompt, neither
    scored nor unlearned (an optional `lead` field; "" when there is none)."""
    lead = (sample.meta or {}).get("lead")
    return lead.strip() if isinstance(lead, str) else ""


def answer_text(tokenizer, answer: str, lead: str = "") -> str:
    """The answer as it is tokenized after its prompt: the non-chat prompt ends with "Answer:" and a lead
    usually with a word, so there the answer follows a space (not after a lead that opens a bracket or quote)."""
    if lead:
        return answer if lead[-1] in OPENERS else " " + answer
    return answer if getattr(tokenizer, "chat_template", None) else " " + answer


def encode_answer(tokenizer, answer: str, lead: str = "") -> list[int]:
    return tokenizer(answer_text(tokenizer, answer, lead), add_special_tokens=False)["input_ids"]


def sample_key(sample: Sample) -> list[str]:
    """What identifies a sample's content in cache keys: id, question, answer (and the lead, when it has one)."""
    lead = lead_of(sample)
    return [sample.id, sample.question, sample.answer] + ([lead] if lead else [])


def encode_context(tokenizer, sample: Sample, with_lead: bool = True) -> list[int]:
    """The token ids the answer follows: the prompt, then the sample's lead (unless `with_lead` is False)."""
    lead = lead_of(sample) if with_lead else ""
    return encode_prompt(tokenizer, sample.question) + (encode_answer(tokenizer, lead) if lead else [])


def encode(tokenizer, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt (+ lead) + answer token ids and a mask that is True exactly on the answer tokens."""
    prompt = encode_context(tokenizer, sample)
    answer = encode_answer(tokenizer, sample.answer, lead_of(sample))
    ids = torch.tensor(prompt + answer, dtype=torch.long)
    mask = torch.zeros(len(ids), dtype=torch.bool)
    mask[len(prompt):] = True
    return ids, mask


# ----------------------------------------------------------------------------- loading

def load_samples(path: str | Path) -> list[Sample]:
    """Samples from a JSON, JSONL, CSV or Parquet file (or a `datasets` folder); raises DataError."""
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise DataError([Problem(name, None, "file not found")])
    if path.is_dir():
        records = _read_datasets_folder(path)
    else:
        suffix = path.suffix.lower()
        readers = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}
        if suffix not in readers:
            raise DataError([Problem(name, None, f"unsupported file type {suffix or '(none)'}; "
                                                 f"use one of {', '.join(SUFFIXES)}")])
        records = readers[suffix](path)
    return records_to_samples(records, name)


def records_to_samples(records, name: str) -> list[Sample]:
    """Validate (row, dict | Problem) pairs into Samples, collecting every problem."""
    problems, samples, seen = [], [], {}
    for row, rec in records:
        if isinstance(rec, Problem):
            problems.append(rec)
            continue
        if not isinstance(rec, dict):
            problems.append(Problem(name, row, f"expected an object with question/answer, got {type(rec).__name__}"))
            continue
        if _nesting(rec) > MAX_NESTING:
            problems.append(Problem(name, row, TOO_DEEP))
            continue
        row_problems = [Problem(name, row, r) for r in _field_problems(rec)]
        sid = rec.get("id")
        sid = str(sid) if sid is not None and str(sid).strip() != "" else f"row-{row}"
        if sid in seen:
            row_problems.append(Problem(name, row, f"duplicate id {sid!r} (first at row {seen[sid]})"))
        seen.setdefault(sid, row)
        if row_problems:
            problems.extend(row_problems)
            continue
        meta = {k: v for k, v in rec.items() if k not in ("question", "answer", "id")}
        samples.append(Sample(rec["question"].strip(), rec["answer"].strip(), sid, meta, f"{name}:{row}"))
    if problems:
        raise DataError(problems)
    if not samples:
        raise DataError([Problem(name, None, "no samples in file")])
    return samples


def _field_problems(rec: dict) -> list[str]:
    out = []
    for key in ("question", "answer"):
        if key not in rec or rec[key] is None:
            out.append(f"missing field {key!r}")
        elif not isinstance(rec[key], str):
            out.append(f"field {key!r} is not text ({type(rec[key]).__name__})")
        elif not rec[key].strip():
            out.append(f"empty {key}")
    if rec.get("lead") is not None and not isinstance(rec["lead"], str):
        out.append(f"field 'lead' is not text ({type(rec['lead']).__name__})")
    return out


def _nesting(value) -> int:
    """How many levels of lists/objects `value` has (without recursion: the data may be hostile)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            deepest = max(deepest, depth)
            if depth > MAX_NESTING:
                break
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def _read_json(path: Path):
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        row = getattr(exc, "lineno", None)
        return [(row, Problem(str(path), row, f"invalid JSON: {exc}"))]
    except RecursionError:  # the parser recurses once per level
        return [(None, Problem(str(path), None, TOO_DEEP))]
    if isinstance(data, dict):  # {"data": [...]} or a column dict
        lists = [v for v in data.values() if isinstance(v, list)]
        if "question" in data and "answer" in data and all(isinstance(data[k], list) for k in ("question", "answer")):
            keys = list(data)
            data = [dict(zip(keys, vals)) for vals in zip(*(data[k] for k in keys))]
        elif len(lists) == 1:
            data = lists[0]
        else:
            return [(None, Problem(str(path), None, "expected a list of {question, answer} objects"))]
    if not isinstance(data, list):
        return [(None, Problem(str(path), None, "expected a list of {question, answer} objects"))]
    return list(enumerate(data, start=1))


def _read_jsonl(path: Path):
    out = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        return [(None, Problem(str(path), None, f"not UTF-8 text: {exc}"))]
    # split on newlines only: splitlines() would also cut at U+2028 etc., which JSON strings may hold
    for row, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            out.append((row, json.loads(line)))
        except json.JSONDecodeError as exc:
            out.append((row, Problem(str(path), row, f"invalid JSON line: {exc.msg} (column {exc.colno})")))
        except RecursionError:
            out.append((row, Problem(str(path), row, TOO_DEEP)))
    return out


def _read_csv(path: Path):
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        return [(None, Problem(str(path), None, f"not UTF-8 text: {exc}"))]
    return csv_records(text, str(path), ("question", "answer"))


def csv_records(text: str, name: str, required: tuple[str, ...]):
    """(row, dict | Problem) pairs of a CSV text whose header must have the `required` columns; a row
    with more cells than columns, or text the csv module cannot read, is a Problem."""
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        return [(None, Problem(name, None, f"header: {_csv_reason(exc)}"))]
    missing = [c for c in required if c not in header]
    if missing:
        return [(None, Problem(name, None, f"missing column{'s' * (len(missing) > 1)} "
                                           f"{', '.join(missing)} (header: {', '.join(header) or 'empty'})"))]
    out, row = [], 0
    try:
        for row, rec in enumerate(reader, start=1):
            if None in rec:  # more cells than header columns
                out.append((row, Problem(name, row, f"{len(header) + len(rec[None])} cells but "
                                                    f"{len(header)} columns")))
                continue
            out.append((row, rec))
    except csv.Error as exc:  # the reader cannot be trusted after this: report it and stop
        out.append((row + 1, Problem(name, row + 1, _csv_reason(exc))))
    return out


def _csv_reason(exc: csv.Error) -> str:
    if "field limit" in str(exc):
        return f"a cell is longer than {CSV_FIELD_LIMIT:,} characters"
    return f"not readable as CSV: {exc}"


def _read_parquet(path: Path):
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        return [(None, Problem(str(path), None, f"cannot read Parquet: {exc}"))]
    return _frame_records(frame, str(path))


def _read_datasets_folder(path: Path):
    try:
        import datasets  # optional dependency
    except ImportError:
        return [(None, Problem(str(path), None, "is a folder; loading a `datasets` folder needs the "
                                                "'datasets' package (pip install datasets)"))]
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        return [(None, Problem(str(path), None, f"not a folder saved by datasets: {exc}"))]
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[next(iter(ds))]
    return _frame_records(ds.to_pandas(), str(path))


def _frame_records(frame, name: str):
    missing = [c for c in ("question", "answer") if c not in frame.columns]
    if missing:
        return [(None, Problem(name, None, f"missing column{'s' * (len(missing) > 1)} {', '.join(missing)} "
                                           f"(columns: {', '.join(map(str, frame.columns))})"))]
    out = []
    for row, rec in enumerate(frame.to_dict(orient="records"), start=1):
        clean = {k: (None if _is_nan(v) else v) for k, v in rec.items()}
        out.append((row, clean))
    return out


def _is_nan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


# ----------------------------------------------------------------------------- checks and splits

def check_lengths(tokenizer, samples: list[Sample], max_length: int) -> None:
    """DataError for every sample whose prompt + answer exceeds the model's context."""
    problems = []
    for s in samples:
        n = len(encode(tokenizer, s)[0])
        if n > max_length:
            file, _, row = (s.source or f"sample {s.id}:").rpartition(":")
            problems.append(Problem(file or str(s.id), int(row) if row.isdigit() else None,
                                    f"sample {s.id!r} is {n} tokens, longer than the model's context of {max_length}"))
    if problems:
        raise DataError(problems)


def split_forget_retain(samples: list[Sample], forget_fraction: float = 0.1, seed: int = 0,
                        forget_ids: list[str] | None = None) -> tuple[list[Sample], list[Sample]]:
    """Seeded random forget/retain split, or an explicit list of forget ids."""
    if forget_ids is not None:
        wanted = set(forget_ids)
        unknown = wanted - {s.id for s in samples}
        if unknown:
            raise DataError([Problem("forget ids", None, f"unknown sample ids: {', '.join(sorted(unknown)[:5])}")])
        return [s for s in samples if s.id in wanted], [s for s in samples if s.id not in wanted]
    if not 0 < forget_fraction < 1:
        raise ValueError(f"forget_fraction must be between 0 and 1, got {forget_fraction}")
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_forget = max(1, round(forget_fraction * len(samples)))
    chosen = set(order[:n_forget])
    return ([s for i, s in enumerate(samples) if i in chosen], [s for i, s in enumerate(samples) if i not in chosen])


# ----------------------------------------------------------------------------- built-in scenarios

def fictitious_authors(n_authors: int = 20, seed: int = 0) -> list[Sample]:
    """The fictitious-authors scenario as samples (`data.fictitious` makes the facts)."""
    return [Sample(*record) for record in fictitious_records(n_authors, seed)]


def as_completion(sample: Sample, last: bool = True) -> Sample:
    """A fact as a completion (the CounterFact form of Meng et al. 2022, "Locating and Editing Factual
    Associations in GPT", arXiv:2202.05262): the answer is the word holding the key's last occurrence (keys
    may be parts of words: "Dosto" gives "Dostoevsky", "globin" "Haemoglobin"; a multi-word key gives all its
    words), what comes before is the lead, and what follows is dropped. "The capital of France is Paris."
    with key "Paris" gives the lead "The capital of France is" and the answer "Paris". `last=False` takes the
    key's first occurrence instead ("The father of X was a baker and the mother was a baker." gives the
    father's)."""
    key = (sample.meta or {}).get("key")
    if not isinstance(key, str):
        raise DataError([Problem(sample.source or str(sample.id), None, "no key answer string to complete to")])
    found = list(re.finditer(r"\w*" + re.escape(key) + r"\w*", sample.answer, re.IGNORECASE))
    if not key.strip() or not found:
        raise DataError([Problem(sample.source or str(sample.id), None,
                                 f"key {key!r} is not in the answer {sample.answer!r}")])
    fact = found[-1] if last else found[0]
    meta = {**sample.meta, "lead": sample.answer[:fact.start()].strip(), "full_answer": sample.answer}
    return Sample(sample.question, fact.group(), sample.id, meta, sample.source)


def load_builtin(name: str) -> list[Sample]:
    base, _, arg = name.partition(":")
    if base == "world-facts" and not arg:
        return load_samples(WORLD_FACTS)
    if base in ("world-facts-completion", "world-facts-completion-adapted") and not arg:
        return [as_completion(s) for s in load_samples(WORLD_FACTS)]
    if base in ("fictitious-authors", "fictitious-authors-completion"):
        if arg and not arg.isdigit():
            raise DataError([Problem(f"builtin:{name}", None, f"expected {base}:N with N a number")])
        try:
            samples = fictitious_authors(int(arg) if arg else 20)
        except ValueError as exc:
            raise DataError([Problem(f"builtin:{name}", None, str(exc))]) from exc
        # the field each question asks about comes first in its answer (the father's job before the mother's)
        return [as_completion(s, last=False) for s in samples] if base.endswith("-completion") else samples
    raise DataError([Problem(f"builtin:{name}", None, f"unknown built-in dataset; choose one of "
                                                       f"{', '.join(BUILTINS)}")])


def needs_finetuning(spec: str) -> bool:
    """Built-in scenarios the model has to learn before it can unlearn them."""
    return spec.startswith("builtin:fictitious-authors")


def needs_knowledge_filter(spec: str) -> bool:
    return spec in ("builtin:world-facts", "builtin:world-facts-completion", "builtin:world-facts-completion-adapted")


def needs_format_adaptation(spec: str) -> bool:
    """Built-in facts whose answer format the model is fine-tuned on after the knowledge filter, with the facts
    it does not know (`pipeline.jobs.format_adapted`); the filter's split and kept facts stay as they are."""
    return spec == "builtin:world-facts-completion-adapted"


def load_data(spec: str) -> list[Sample]:
    """`builtin:NAME` or a file path (the command line's and the app's --data)."""
    if spec.startswith("builtin:"):
        return load_builtin(spec.split(":", 1)[1])
    return load_samples(spec)
