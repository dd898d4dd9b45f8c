"""Command line: `python -m cud_core {info,score,unlearn,calibrate,report,export} ...` (SPEC §10).

Errors in user input end the program with exit status 2 and one line on stderr naming the
problem (no traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import replace

from .attribution import BASELINES, METHODS, METRICS
from .circuits import BINARISE
from .cud import SIMILARITIES
from .unlearn import LABEL_METHODS
from .unlearn import METHODS as UNLEARN_METHODS
from .data import DataError
from .models import ModelLoadError
from .store import DEFAULT_WORKSPACE, WorkspaceError
from .unlearn.runner import NonFiniteLoss, check_settings

USER_ERRORS = (DataError, ModelLoadError, WorkspaceError, FileNotFoundError, ValueError)
# calibrate's default forget share: about 125 known facts of world-facts for the embedded model
# (≥ 100 evaluated forget samples, SPEC §6 power)
CALIBRATE_FORGET_FRACTION = 0.2


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="embedded",
                   help="'embedded' (SmolLM2-135M-Instruct, offline), a local model folder or a hub id")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint")
    p.add_argument("--allow-download", action="store_true", help="allow fetching a hub id over the network")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow loading pickled weights (.bin/.pt), which can run code; safetensors only otherwise")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cud_core",
                                     description="CUD Explorer engine: circuit-guided unlearning difficulty.")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = sub.choices  # name -> its parser (presets change their defaults)

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
    _executor_args(p)
    p.add_argument("--anchors", default=None, metavar="RUN",
                   help="score the samples against the saved anchors of calibration RUN (its attribution and "
                        "circuit settings replace the flags above): CUD for new samples, before any unlearning")
    p = sub.add_parser("unlearn", help="run one unlearning method and store its forgetting curves")
    _model_args(p)
    _data_args(p)
    _split_args(p)
    p.add_argument("--method", default="npo", choices=list(UNLEARN_METHODS))
    _unlearn_args(p)
    p.add_argument("--hyper", action="append", default=[], metavar="NAME=VALUE",
                   help="method hyper-parameter, e.g. --hyper beta=0.2 (repeatable)")
    p.add_argument("--diff-circuits", action="store_true",
                   help="re-attribute the forget samples in the unlearned copy and store the circuit diff")
    p.add_argument("--like", default=None, metavar="RUN",
                   help="with --diff-circuits: attribute as this score or calibration run did (default: the "
                        "score command's defaults)")

    p = sub.add_parser("calibrate", help="unlearn with K methods, label easy/hard, build anchors, score and "
                                         "validate CUD")
    _model_args(p)
    _data_args(p)
    _split_args(p)
    p.add_argument("--methods", default=",".join(LABEL_METHODS),
                   help=f"comma-separated unlearning methods (default {','.join(LABEL_METHODS)})")
    _unlearn_args(p)
    p.set_defaults(forget_fraction=CALIBRATE_FORGET_FRACTION, eval_every=10)
    p.add_argument("--q", type=float, default=0.25,
                   help="top/bottom fraction each method labels easy/hard (default 0.25: ≥ 20 per class at the "
                        "default size; the paper uses 0.125)")
    p.add_argument("--seeds", default="0,1",
                   help="unlearning seeds (data order, retain batches), comma-separated; ≥ 2 give the reliability "
                        "ceiling (default 0,1; three or more on a GPU)")
    p.add_argument("--folds", type=int, default=5, help="cross-fitting folds for out-of-fold CUD (default 5)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for CIs (default 2000)")
    p.add_argument("--permutations", type=int, default=200, help="permutations for CUD's null (default 200)")
    p.add_argument("--similarity", default="cosine", choices=list(SIMILARITIES))
    p.add_argument("--anchors", default="consensus", choices=["consensus", "per-method"],
                   help="the headline CUD: anchors from the methods' consensus labels, or each method's own "
                        "top/bottom-q sets (the paper's code; CUD = mean over methods); both are always reported")
    p.add_argument("--attribution-method", default="eap-ig-inputs", choices=list(METHODS),
                   help="edge attribution of the circuits (default eap-ig-inputs)")
    p.add_argument("--metric", default="logprob", choices=list(METRICS), help="attribution metric")
    p.add_argument("--baseline", default="zero", choices=list(BASELINES), help="attribution baseline")
    p.add_argument("--edges", type=int, default=75, help="circuit size n")
    p.add_argument("--ig-steps", type=int, default=5, help="integration steps of the attribution (EAP-IG)")
    _executor_args(p)
    p.add_argument("--diff-circuits", action="store_true",
                   help="also re-attribute each method's unlearned copy (first seed) and store the circuit diff "
                        "(about one scoring of the forget set per method); adds to a finished calibration")
    p.add_argument("--preset", default=None, choices=["demo", "paper"],
                   help="demo: every page filled in a few minutes on a laptop CPU (the first 120 facts, about 20 "
                        "of them forgotten, 3 methods x 8 steps; its numbers carry no evidence). paper: the published "
                        "CUD pipeline (eap-ig-activations, 5 steps, zero baseline, kl, 75 edges, cosine, q 0.125, "
                        "per-method anchors). Flags given explicitly win.")

    p = sub.add_parser("report", help="a calibration's validation: offline HTML + Markdown, or JSON")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    p.add_argument("--run", default=None, help="calibration run id (default: the newest finished one)")
    p.add_argument("--format", default="files", choices=["files", "json", "markdown"],
                   help="files: write RUN.html and RUN.md (see --out); json/markdown: print to stdout")
    p.add_argument("--out", default=None, help="folder for the files (default: WORKSPACE/reports)")
    p.add_argument("--readme", default=None, metavar="README.md",
                   help="also replace the generated results section of this README with the report(s)")
    p.add_argument("--from-json", action="append", default=[], metavar="FILE",
                   help="a stored report (`--format json` output) instead of a workspace run; repeatable, "
                        "for a README section covering several runs")

    p = sub.add_parser("faithfulness", help="faithfulness of a calibration's anchor circuits against circuit size "
                                            "(n = 10 … 10,000; zero and mean ablation), stored for the report")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    p.add_argument("--run", default=None, help="calibration run id (default: the newest finished one)")
    p.add_argument("--members", type=int, default=None, help="at most this many members per anchor (default: all)")
    _model_args(p)
    _executor_args(p)

    p = sub.add_parser("ablate", help="re-score a finished calibration under the ablation grid (attribution × "
                                      "metric × baseline × circuit size × similarity × anchors; resumes) and "
                                      "validate every cell out-of-fold")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    p.add_argument("--run", default=None, help="calibration run id (default: the newest finished one)")
    p.add_argument("--attribution", default=None,
                   help="comma-separated attribution methods to run (default: all four); the others are "
                        "reported as not run (EAP-IG-activations costs ~53 s per sample on a 2-core CPU)")
    p.add_argument("--limit", type=int, default=None,
                   help="the --limit the calibration was run with (to rebuild its retain set)")
    p.add_argument("--format", default="markdown", choices=["markdown", "json"],
                   help="print the summary as Markdown or JSON (e.g. > results/ablation-world-facts.json)")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="a stored summary (`--format json` output) instead of running anything")
    p.add_argument("--readme", default=None, metavar="README.md",
                   help="also replace the generated ablation section of this README with the summary")
    _model_args(p)
    _executor_args(p)

    p = sub.add_parser("circuit-diff", help="circuit change after unlearning (a run made with --diff-circuits), "
                                            "per calibration label and CUD bucket, with CIs and its correlation "
                                            "with realised hardness")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    p.add_argument("--run", required=True, help="an unlearning run with a stored circuit diff, or a calibration "
                                                "(then --method picks its diff)")
    p.add_argument("--method", default=None, help="with a calibration --run: whose unlearned copy")
    p.add_argument("--calibration", default=None, help="the calibration whose labels and CUD buckets group the "
                                                       "samples (default: --run when it is one, else the newest)")
    p.add_argument("--bootstrap", type=int, default=2000)

    p = sub.add_parser("export", help="print a calibration's per-sample table as CSV")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    p.add_argument("--run", default=None, help="calibration run id (default: the newest)")
    p.add_argument("--validation", action="store_true", help="print the validation table instead")
    return parser


def _executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="where the units of work (scoring batches, unlearning runs, ablation cells, faithfulness "
                        "curves) run: here (default) or on a Ray cluster (the same results; see README)")
    p.add_argument("--ray-address", default="local-cluster",
                   help="with --executor ray: auto (a running cluster), HOST:PORT, or local-cluster (a private "
                        "Ray instance on this machine)")
    p.add_argument("--workers", type=int, default=None, help="Ray actors holding the model (default: one per GPU "
                                                              "slot, else one per CPU slot)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per Ray worker (a fraction shares one GPU)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per Ray worker")


def _estimate_workers(args) -> int:
    """How many workers a cost estimate spreads the units over (--workers on Ray, else 1)."""
    return (args.workers or 1) if args.executor == "ray" else 1


@contextmanager
def _executor(args, lm):
    """The executor the flags ask for (None: this process), closed when the command ends."""
    from .executor import ExecutorSettings, make

    executor = make(ExecutorSettings(args.executor, args.ray_address, args.workers, args.num_gpus, args.num_cpus), lm)
    try:
        yield executor
    finally:
        if executor is not None:
            executor.close()


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--forget-fraction", type=float, default=0.1, help="share of samples to forget (default 0.1)")
    p.add_argument("--forget-ids", default=None, help="explicit forget ids: comma-separated or a file, one per line")
    p.add_argument("--seed", type=int, default=0)


def _unlearn_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=30, help="optimizer steps")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 2e-5 below 500M parameters, 1e-5 above, as open-unlearning)")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                   help="save the unlearned copy and optimizer state every N evaluations (less often where "
                        "saving would take over 10%% of the time), so that a rerun of an interrupted run "
                        "continues from there (0: never; removed when the run finishes)")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="builtin:world-facts",
                   help="builtin:world-facts or a .json/.jsonl/.csv/.parquet file with question/answer")
    p.add_argument("--limit", type=int, default=None, help="use only the first N samples of the file (before the knowledge filter)")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    p.add_argument("--no-known-filter", action="store_true",
                   help="for built-in facts: keep facts the model gets wrong too")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments, with a `--preset`'s values as the defaults of the flags not given explicitly."""
    args = build_parser().parse_args(argv)
    if getattr(args, "preset", None):
        from .presets import cli_defaults

        parser = build_parser()
        parser.commands[args.command].set_defaults(**cli_defaults(args.preset))
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return {"info": cmd_info, "score": cmd_score, "unlearn": cmd_unlearn, "calibrate": cmd_calibrate,
                "report": cmd_report, "faithfulness": cmd_faithfulness, "ablate": cmd_ablate,
                "circuit-diff": cmd_circuit_diff, "export": cmd_export}[args.command](args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLoss as exc:
        print(f"failed: {exc}; the run is marked failed in the workspace", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished samples are kept in the workspace, rerun to resume", file=sys.stderr)
        return 130


def _progress_printer(label: str, every: float = 2.0):
    """Progress lines on stderr, at most one per `every` seconds (plus the last one)."""
    import time

    last = [0.0]

    def report(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] >= every or fraction >= 1.0:
            last[0] = now
            print(f"[{label} {fraction:4.0%}] {message}", file=sys.stderr, flush=True)
    return report


def _load(args):
    from .models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
                      allow_download=args.allow_download, progress=_progress_printer("model"),
                      allow_pickle=args.allow_pickle)


def _workspace(args):
    """The workspace, opened (and checked) before any model work; runs whose process died are marked
    interrupted."""
    from .store import Workspace

    ws = Workspace(args.workspace)
    for run_id in ws.mark_interrupted():
        print(f"run {run_id} was interrupted (its process ended); rerun its command to resume", file=sys.stderr)
    return ws


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


def scenario(args, split: bool = False):
    """Settings and data first (cheap to validate), then the model, fine-tuning / knowledge filter,
    length check."""
    from .data import load_data
    from .jobs import prepare_scenario
    from .models import resolve_device

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    fraction = getattr(args, "forget_fraction", 0.1)
    if split and not args.forget_ids and not 0 < fraction < 1:  # also false for NaN
        raise ValueError(f"--forget-fraction must be between 0 and 1, got {fraction}")
    resolve_device(args.device)
    samples = load_data(args.data)
    lm = _load(args)
    forget_ids = _forget_ids(args) if split else None
    sc = prepare_scenario(lm, args.data, getattr(args, "forget_fraction", 0.1), getattr(args, "seed", 0), forget_ids,
                          args.limit, not args.no_known_filter, progress=_progress_printer("prepare"),
                          samples=samples)
    if sc.lm is not lm:
        print(f"using {sc.lm.name}, fine-tuned on {len(sc.samples)} samples", file=sys.stderr)
    if args.data == "builtin:world-facts" and not args.no_known_filter:
        print(f"{len(sc.samples)} facts are known to {sc.lm.name}", file=sys.stderr)
    return sc


def cmd_score(args) -> int:
    from tqdm import tqdm

    from .scoring import ScoreSettings, score_run

    settings = ScoreSettings(method=args.method, steps=args.steps, baseline=args.baseline, metric=args.metric,
                             batch_size=args.batch_size, binarise=args.binarise, n_edges=args.edges,
                             store=args.store, faithfulness=args.faithfulness, generation=not args.no_generation)
    ws = _workspace(args)
    if args.anchors:
        from .predict import anchor_settings

        settings = replace(anchor_settings(ws, args.anchors), store=args.store, faithfulness=args.faithfulness,
                           generation=not args.no_generation)
        print(f"attribution as calibration {args.anchors}: {settings.method}, {settings.steps} steps, "
              f"{settings.baseline} baseline, {settings.metric} metric, {settings.n_edges} edges", file=sys.stderr)
    settings.validate()
    sc = scenario(args)
    lm, samples = sc.lm, sc.samples
    extra = {"limit": args.limit, "known_filter": not args.no_known_filter, "dtype": args.dtype}
    with tqdm(total=len(samples), desc="scoring", unit="sample", file=sys.stderr,
              disable=os.environ.get("CUD_NO_PROGRESS") == "1") as bar:
        def progress(fraction, message):
            if message.startswith("resuming"):
                print(message, file=sys.stderr)
            bar.n = round(fraction * len(samples))
            bar.set_postfix_str(message.split(", ")[-1])
            bar.refresh()
        from .estimate import describe, estimate_score

        print(describe(estimate_score(lm, samples, settings, workers=_estimate_workers(args))), file=sys.stderr)
        with _executor(args, lm) as executor:
            run_id = score_run(lm, samples, settings, ws, args.data, progress=progress, extra_config=extra,
                               executor=executor)
    print(f"scored {len(samples)} samples into {ws.root} (run {run_id})")
    if args.anchors:
        from .predict import predict

        p = predict(ws, run_id, args.anchors)
        seen = set(p["in_calibration"])
        print(f"CUD predicted with the anchors of {args.anchors} ({p['similarity']}; 0 = like the easy anchor, "
              "1 = like the hard one):")
        for sid, v in sorted(p["cud"].items(), key=lambda kv: -kv[1]):
            print(f"  {v:.3f}  {sid}" + ("  (in that calibration: in-sample)" if sid in seen else ""))
    return 0


def _forget_ids(args):
    from pathlib import Path

    if not getattr(args, "forget_ids", None):
        return None
    path = Path(args.forget_ids)
    text = path.read_text() if path.is_file() else args.forget_ids.replace(",", "\n")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated whole numbers, got {text!r}") from None


def _hyper(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--hyper expects NAME=VALUE, got {pair!r}")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def cmd_unlearn(args) -> int:
    from .jobs import unlearn_into_workspace

    hyper = _hyper(args.hyper)
    check_settings(args.method, args.steps, args.lr, args.eval_every, args.batch_size, hyper, args.checkpoint_every)
    ws = _workspace(args)
    sc = scenario(args, split=True)
    diff = _score_settings_like(ws, args.like) if args.diff_circuits else None
    from .estimate import describe_run, estimate_unlearning

    _print_estimate(lambda: describe_run(estimate_unlearning(sc.lm, sc.forget, sc.retain, args.method, args.steps,
                                                             args.eval_every, args.batch_size, hyper)))
    run_id = unlearn_into_workspace(sc.lm, sc.forget, sc.retain, ws, args.data, args.method, args.steps, args.lr,
                                    args.eval_every, args.seed, args.batch_size, hyper,
                                    progress=_progress_printer(args.method), checkpoint_every=args.checkpoint_every,
                                    diff_circuits=diff, reference=sc.forget + sc.retain)
    run = ws.get_run(run_id)
    if run["status"] != "done":
        print(f"unlearning run {run_id} {run['status']}: {run['message']}", file=sys.stderr)
        return 1
    print(f"unlearned {len(sc.forget)} samples with {args.method} (run {run_id} in {ws.root})")
    d = ws.load_artifact(run_id, "circuit_diff")
    if d:
        from .circuit_diff import SUMMARY

        ps = d["per_sample"].values()
        print("circuit diff (mean over samples): " + ", ".join(
            f"{k} {sum(x[k] for x in ps) / len(ps):.3f}" for k in SUMMARY))
    return 0


def _print_estimate(make) -> None:
    """Print a cost estimate before a run; one that fails says so and never stops the run."""
    try:
        print(make(), file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - an estimate is advice
        print(f"estimate unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)


def _score_settings_like(ws, run_id):
    """The attribution settings of a score or calibration run (default ScoreSettings without one)."""
    from .scoring import ScoreSettings

    if run_id is None:
        return ScoreSettings(generation=False)
    run = ws.get_run(run_id)
    if run is None or run["kind"] not in ("score", "calibrate"):
        raise ValueError(f"--like {run_id!r}: no score or calibration run with this id in {ws.root}")
    return ScoreSettings.of_run(run)


def cmd_calibrate(args) -> int:
    from .calibration import CalibrationSettings, calibrate, format_table
    from .scoring import ScoreSettings

    settings = CalibrationSettings(
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), steps=args.steps, lr=args.lr,
        eval_every=args.eval_every, batch_size=args.batch_size, seed=args.seed, q=args.q,
        seeds=_int_list("--seeds", args.seeds), folds=args.folds, n_boot=args.bootstrap,
        n_permutations=args.permutations, similarity=args.similarity, anchors=args.anchors,
        checkpoint_every=args.checkpoint_every, preset=args.preset or "", diff_circuits=args.diff_circuits,
        score=ScoreSettings(method=args.attribution_method, metric=args.metric, baseline=args.baseline,
                            batch_size=args.batch_size, n_edges=args.edges, steps=args.ig_steps, generation=False))
    settings.validate()
    ws = _workspace(args)
    sc = scenario(args, split=True)
    from .calibration import pending
    from .estimate import describe_run, estimate_calibrate

    _print_estimate(lambda: describe_run(estimate_calibrate(
        sc.lm, sc.forget, sc.retain, settings, _estimate_workers(args),
        pending=pending(sc.lm, sc.forget, sc.retain, settings, ws, args.data))))
    with _executor(args, sc.lm) as executor:
        run_id = calibrate(sc.lm, sc.forget, sc.retain, settings, ws, args.data, progress=_progress_printer("calibrate"),
                           executor=executor)
    run = ws.get_run(run_id)
    if run["status"] != "done":
        print(f"calibration {run_id} {run['status']}: {run['message']}", file=sys.stderr)
        return 1
    if settings.preset == "demo":
        print("DEMO run: a dozen labelled samples and a few steps; these numbers carry no evidence "
              "(see docs/method.md for the validation protocol)", file=sys.stderr)
    print(format_table(ws.load_artifact(run_id, "validation")))
    print(ws.load_artifact(run_id, "validation_report")["verdict"])
    print(f"timings (s): {json.dumps(ws.load_artifact(run_id, 'timings'))}")
    print(f"calibration run {run_id} in {ws.root}; `python -m cud_core export --workspace {ws.root}` for the table")
    return 0


def _finished_calibration(args):
    """The workspace and the finished calibration run that --run names (default: the newest)."""
    from .store import Workspace

    ws = Workspace(args.workspace)
    run_id = args.run
    if run_id is None:
        done = [r for r in ws.list_runs("calibrate") if r["status"] == "done"]
        if not done:
            raise ValueError(f"no finished calibration in {ws.root}; run `python -m cud_core calibrate` first")
        run_id = done[0]["id"]
    run = ws.get_run(run_id)
    if run is None or run["kind"] != "calibrate":
        raise ValueError(f"--run {run_id!r}: no calibration run with this id in {ws.root}" +
                         (f" (it is a {run['kind']} run)" if run else ""))
    if run["status"] != "done":
        raise ValueError(f"--run {run_id!r}: the calibration is {run['status']}, not done; rerun it to finish")
    return ws, run


def cmd_report(args) -> int:
    from pathlib import Path

    from .atomic import atomic_write_text
    from .validation import report

    if args.from_json:
        reports = [report.from_json(Path(f)) for f in args.from_json]
    else:
        ws, run = _finished_calibration(args)
        r = ws.load_artifact(run["id"], "validation_report")
        if r is None:
            raise ValueError(f"--run {run['id']!r} predates out-of-fold validation (no validation_report); "
                             "rerun `calibrate` with this version")
        config = run.get("config") or {}
        extra = {"timings": ws.load_artifact(run["id"], "timings", {}),
                 "attribution": {k: config.get("score", {}).get(k) for k in report.ATTRIBUTION_KEYS},
                 "preset": config.get("preset") or "default"}
        faithful = ws.load_artifact(run["id"], "faithfulness_anchors")
        if faithful:  # `python -m cud_core faithfulness` stored it
            extra["faithfulness_anchors"] = faithful
        reports = [({**r, **extra}, run)]
    for r, run in reports:
        if args.format == "json":
            print(report.as_json(r, run))
        elif args.format == "markdown":
            print(report.markdown(r, run))
        else:
            out = Path(args.out) if args.out else Path(args.workspace) / "reports"
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / f"{run['id']}.html", report.html_report(r, run))
            atomic_write_text(out / f"{run['id']}.md", report.markdown(r, run))
            atomic_write_text(out / f"{run['id']}.json", report.as_json(r, run))
            print(f"wrote {out / run['id']}.html, .md and .json")
        print(r["verdict"], file=sys.stderr)
    if args.readme:
        path = Path(args.readme)
        source = " ".join(f"--from-json {f}" for f in args.from_json) or \
            f"--workspace {args.workspace} --run {reports[0][1]['id']}"
        section = report.readme_section(reports, f"python -m cud_core report {source} --readme {args.readme}")
        atomic_write_text(path, report.replace_readme_section(path.read_text(encoding="utf-8"), section))
        print(f"updated the results section of {path}", file=sys.stderr)
    return 0


def _calibration_scenario(args, ws, run, **kwargs):
    """The calibration's model (fine-tuned scenarios come back from the fine-tuning cache) and its forget
    set, rebuilt from the --model flags; refused when they give another model than the calibration's."""
    from .jobs import prepare_scenario

    forget = ws.load_samples(run["id"])
    scenario = prepare_scenario(_load(args), run["dataset"], forget_ids=[s.id for s in forget], **kwargs)
    if scenario.lm.name != run["model"]:
        raise ValueError(f"--model gives {scenario.lm.name!r}, but calibration {run['id']} ran on {run['model']!r}")
    return scenario


def cmd_faithfulness(args) -> int:
    from .validation.faithfulness import anchor_faithfulness, rows
    from .validation.report import markdown_table

    ws, run = _finished_calibration(args)
    lm = _calibration_scenario(args, ws, run, need_retain=False).lm
    with _executor(args, lm) as executor:
        f = anchor_faithfulness(lm, ws, run["id"], max_members=args.members,
                                progress=_progress_printer("faithfulness"), executor=executor)
    print(markdown_table(rows(f)))
    return 0


def cmd_ablate(args) -> int:
    from pathlib import Path

    from .atomic import atomic_write_text
    from .validation import ablation_report

    if args.from_json:
        summary, run = ablation_report.from_json(Path(args.from_json))
    else:
        from .ablation import ablate

        ws, run = _finished_calibration(args)
        scenario = _calibration_scenario(args, ws, run, limit=args.limit)
        attribution = [a.strip() for a in args.attribution.split(",") if a.strip()] if args.attribution else None
        from .ablation import remaining_settings
        from .estimate import describe_run, estimate_ablate
        from .scoring import ScoreSettings

        todo = remaining_settings(ws, run["id"], attribution)
        _print_estimate(lambda: describe_run(estimate_ablate(scenario.lm, scenario.forget, ScoreSettings.of_run(run),
                                                             todo, run["config"]["n_boot"], _estimate_workers(args))))
        with _executor(args, scenario.lm) as executor:
            summary = ablate(scenario.lm, scenario.forget, scenario.retain, ws, run["id"], attribution=attribution,
                             progress=_progress_printer("ablate"), executor=executor)
    print(ablation_report.as_json(summary, run) if args.format == "json" else ablation_report.markdown(summary, run))
    print(ablation_report.headline(summary), file=sys.stderr)
    if args.readme:
        path = Path(args.readme)
        source = f"--from-json {args.from_json}" if args.from_json else f"--workspace {args.workspace} --run {run['id']}"
        section = ablation_report.readme_section(summary, run, f"python -m cud_core ablate {source} --readme {args.readme}")
        atomic_write_text(path, ablation_report.replace_readme_section(path.read_text(encoding="utf-8"), section))
        print(f"updated the ablation section of {path}", file=sys.stderr)
    return 0


def cmd_circuit_diff(args) -> int:
    from .circuit_diff import SUMMARY, aggregate
    from .store import Workspace
    from .validation.report import markdown_table

    ws = Workspace(args.workspace)
    run = ws.get_run(args.run)
    if run is None:
        raise ValueError(f"--run {args.run!r}: no run with this id in {ws.root}")
    if run["kind"] == "calibrate":
        if not args.method:
            raise ValueError("--run is a calibration: say whose unlearned copy with --method")
        d = ws.load_artifact(run["id"], f"circuit_diff-{args.method}")
        results = ws.load_results(run["id"])
        hardness = {i: -r["realised"][args.method]["nll_after"] for i, r in results.items()
                    if args.method in (r.get("realised") or {})}
        cal_id = args.calibration or run["id"]
    else:
        d = ws.load_artifact(run["id"], "circuit_diff")
        hardness = {i: -r["nll_after"] for i, r in ws.load_results(run["id"]).items()}
        done = [r for r in ws.list_runs("calibrate") if r["status"] == "done" and r["dataset"] == run["dataset"]]
        cal_id = args.calibration or (done[0]["id"] if done else None)
    if d is None:
        raise ValueError(f"run {run['id']} has no stored circuit diff: run it with --diff-circuits")
    groups = {}
    if cal_id:
        cal = ws.load_results(cal_id)
        groups = {"label": {i: r.get("label") for i, r in cal.items()}, "CUD bucket": {i: r["bucket"] for i, r in cal.items()}}
    agg = aggregate(d["per_sample"], groups, hardness, n_boot=args.bootstrap)
    fmt = lambda v: f"{v['mean']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]"  # noqa: E731
    print(f"Circuit change at {d['n_edges']} edges, {len(d['per_sample'])} samples (run {run['id']}; groups from "
          f"{cal_id or 'no calibration'}); means with 95% bootstrap CIs\n")
    for grouping, table in agg["groups"].items():
        print(f"By {grouping}:\n")
        print(markdown_table([{grouping: g, "n": v["n"], **{k: fmt(v[k]) for k in SUMMARY}} for g, v in table.items()]))
        print()
    print("Spearman with realised hardness (−NLL after unlearning):\n")
    print(markdown_table([{"statistic": k, "ρ": f"{v['spearman']:.3f} [{v['spearman_ci'][0]:.3f}, "
                                                f"{v['spearman_ci'][1]:.3f}]", "n": v["n"]}
                          for k, v in agg["with_hardness"].items()]))
    return 0


def cmd_export(args) -> int:
    import csv

    from .calibration import export_rows, format_table

    ws, run = _finished_calibration(args)
    run_id = run["id"]
    if args.validation:
        print(format_table(ws.load_artifact(run_id, "validation", [])))
        return 0
    rows = export_rows(ws, run_id)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(sys.stdout, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return 0
