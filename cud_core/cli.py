"""Command line: `python -m cud_core {info,score} ...` (SPEC §10).

Errors in user input end the program with exit status 2 and one line on stderr naming the
problem (no traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .attribution import BASELINES, METHODS, METRICS
from .circuits import BINARISE
from .data import DataError
from .models import ModelLoadError
from .store import DEFAULT_WORKSPACE, WorkspaceError

USER_ERRORS = (DataError, ModelLoadError, WorkspaceError, FileNotFoundError, ValueError)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="embedded",
                   help="'embedded' (SmolLM2-135M-Instruct, offline), a local model folder or a hub id")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint")
    p.add_argument("--allow-download", action="store_true", help="allow fetching a hub id over the network")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cud_core",
                                     description="CUD Explorer engine: circuit-guided unlearning difficulty.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print facts about a model")
    _model_args(p)
    p.add_argument("--json", action="store_true", help="end with one JSON object on the last line")

    p = sub.add_parser("score", help="score every sample of a dataset into the workspace (resumes)")
    _model_args(p)
    _data_args(p)
    p.add_argument("--method", default="eap-ig-inputs", choices=list(METHODS))
    p.add_argument("--steps", type=int, default=5, help="integration steps for the IG methods")
    p.add_argument("--baseline", default="zero", choices=list(BASELINES))
    p.add_argument("--metric", default="logprob", choices=list(METRICS))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--binarise", default="greedy", choices=list(BINARISE), help="how a sample's circuit is cut")
    p.add_argument("--edges", type=int, default=75, help="circuit size n")
    p.add_argument("--store", default="float16", help="edge score storage: float16 (all edges) or topk:K")
    p.add_argument("--faithfulness", action="store_true", help="also measure each circuit's faithfulness")
    p.add_argument("--no-generation", action="store_true", help="skip greedy generation (no ROUGE-L)")
    return parser


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="builtin:world-facts",
                   help="builtin:world-facts or a .json/.jsonl/.csv/.parquet file with question/answer")
    p.add_argument("--limit", type=int, default=None, help="use only the first N samples")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    p.add_argument("--no-known-filter", action="store_true",
                   help="for built-in facts: keep facts the model gets wrong too")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"info": cmd_info, "score": cmd_score}[args.command](args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished samples are kept in the workspace, rerun to resume", file=sys.stderr)
        return 130


def _progress_printer(label: str):
    def report(fraction: float, message: str) -> None:
        print(f"[{label} {fraction:4.0%}] {message}", file=sys.stderr, flush=True)
    return report


def _load(args):
    from .models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
                      allow_download=args.allow_download, progress=_progress_printer("model"))


def cmd_info(args) -> int:
    lm = _load(args)
    info = dict(lm.info, name=lm.name, source=lm.source)
    try:
        from .graph import Graph
        info["n_edges"] = Graph.from_model(lm.model).n_edges
    except ImportError:  # the graph module arrives with the circuit engine
        pass
    if args.json:
        print(json.dumps(info))
    else:
        width = max(map(len, info))
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


def load_inputs(args):
    """Data first (cheap to validate), then the model, then the length check; returns (lm, samples)."""
    from .data import check_lengths, known_facts, load_data
    from .models import context_length

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    samples = load_data(args.data)
    lm = _load(args)
    if args.data.startswith("builtin:") and not args.no_known_filter:
        n_all = len(samples)
        samples = known_facts(lm.model, lm.tokenizer, samples, progress=_progress_printer("knowledge filter"))
        print(f"{len(samples)} of {n_all} facts are known to {lm.name}", file=sys.stderr)
    samples = samples[: args.limit] if args.limit else samples
    check_lengths(lm.tokenizer, samples, context_length(lm.model))
    return lm, samples


def cmd_score(args) -> int:
    from tqdm import tqdm

    from .scoring import ScoreSettings, score_run
    from .store import Workspace

    settings = ScoreSettings(method=args.method, steps=args.steps, baseline=args.baseline, metric=args.metric,
                             batch_size=args.batch_size, binarise=args.binarise, n_edges=args.edges,
                             store=args.store, faithfulness=args.faithfulness, generation=not args.no_generation)
    settings.validate()
    lm, samples = load_inputs(args)
    ws = Workspace(args.workspace)
    extra = {"limit": args.limit, "known_filter": not args.no_known_filter, "dtype": args.dtype}
    with tqdm(total=len(samples), desc="scoring", unit="sample", file=sys.stderr,
              disable=os.environ.get("CUD_NO_PROGRESS") == "1") as bar:
        def progress(fraction, message):
            bar.n = round(fraction * len(samples))
            bar.set_postfix_str(message.split(", ")[-1])
            bar.refresh()
        existing = ws.find_run("score", lm.name, args.data, {**settings.config(), **extra})
        if existing and ws.done_sample_ids(existing):
            print(f"resuming run {existing}: {len(ws.done_sample_ids(existing))} samples already scored",
                  file=sys.stderr)
        run_id = score_run(lm, samples, settings, ws, args.data, progress=progress, extra_config=extra)
    print(f"scored {len(samples)} samples into {ws.root} (run {run_id})")
    return 0
