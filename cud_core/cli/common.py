"""What the commands share: progress lines, loading the model and workspace, the scenario, the
executor, estimates and small flag parsers."""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

from cud_core.data.samples import load_data, needs_format_adaptation, needs_knowledge_filter
from cud_core.engine.models import load_model, resolve_device
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.executor import ExecutorSettings, make
from cud_core.pipeline.jobs import prepare_scenario
from cud_core.pipeline.scoring import ScoreSettings
from cud_core.report.validation import regimes_only
from cud_core.store.atomic import atomic_write_text
from cud_core.store.workspace import Workspace


def estimate_workers(args) -> int:
    """How many workers a cost estimate spreads the units over (--workers on Ray, else 1)."""
    return (args.workers or 1) if args.executor == "ray" else 1


def executor_settings(args):
    """The executor flags as ExecutorSettings, checked (a Ray address that does not answer included):
    called before any model is loaded, so a bad flag costs nothing."""
    settings = ExecutorSettings(args.executor, args.ray_address, args.workers, args.num_gpus, args.num_cpus)
    settings.validate()
    settings.check_reachable()
    return settings


@contextmanager
def make_executor(args, lm):
    """The executor the flags ask for (None: this process), closed when the command ends."""
    executor = make(executor_settings(args), lm)
    try:
        yield executor
    finally:
        if executor is not None:
            executor.close()


def progress_printer(label: str, every: float = 2.0):
    """Progress lines on stderr, at most one per `every` seconds (plus the last one)."""
    import time

    last = [0.0]

    def report(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] >= every or fraction >= 1.0:
            last[0] = now
            print(f"[{label} {fraction:4.0%}] {message}", file=sys.stderr, flush=True)
    return report


def load_lm(args):
    return load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
                      allow_download=args.allow_download, progress=progress_printer("model"),
                      allow_pickle=args.allow_pickle)


def open_workspace(args):
    """The workspace, opened (and checked) before any model work; runs whose process died are marked
    interrupted."""
    ws = Workspace(args.workspace)
    for run_id in ws.mark_interrupted():
        print(f"run {run_id} was interrupted (its process ended); rerun its command to resume", file=sys.stderr)
    return ws


def scenario(args, split: bool = False):
    """Settings and data first (cheap to validate), then the model, fine-tuning / knowledge filter,
    length check."""
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    fraction = getattr(args, "forget_fraction", 0.1)
    if split and not args.forget_ids and not 0 < fraction < 1:  # also false for NaN
        raise ValueError(f"--forget-fraction must be between 0 and 1, got {fraction}")
    resolve_device(args.device)
    if hasattr(args, "executor"):
        executor_settings(args)
    samples = load_data(args.data)
    lm = load_lm(args)
    forget_ids = read_forget_ids(args) if split else None
    sc = prepare_scenario(RunContext(lm, dataset=args.data, progress=progress_printer("prepare")),
                          getattr(args, "forget_fraction", 0.1), getattr(args, "seed", 0), forget_ids, args.limit,
                          not args.no_known_filter, samples=samples)
    if sc.lm is not lm:
        how = "adapted to the answer format" if needs_format_adaptation(args.data) else \
            f"fine-tuned on {len(sc.samples)} samples"
        print(f"using {sc.lm.name}, {how}", file=sys.stderr)
    if needs_knowledge_filter(args.data) and not args.no_known_filter:
        print(f"{len(sc.samples)} facts are known to {lm.name}", file=sys.stderr)
    return sc


def read_forget_ids(args):
    if not getattr(args, "forget_ids", None):
        return None
    path = Path(args.forget_ids)
    text = path.read_text() if path.is_file() else args.forget_ids.replace(",", "\n")
    return [line.strip() for line in text.splitlines() if line.strip()]


def int_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated whole numbers, got {text!r}") from None


def parse_hyper(pairs: list[str]) -> dict:
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


def print_estimate(make) -> None:
    """Print a cost estimate before a run; one that fails says so and never stops the run."""
    try:
        print(make(), file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - an estimate is advice
        print(f"estimate unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)


def score_settings_like(ws, run_id):
    """The attribution settings of a score or calibration run (default ScoreSettings without one)."""
    if run_id is None:
        return ScoreSettings(generation=False)
    run = ws.get_run(run_id)
    if run is None or run["kind"] not in ("score", "calibrate"):
        raise ValueError(f"--like {run_id!r}: no score or calibration run with this id in {ws.root}")
    return ScoreSettings.of_run(run)


def finished_calibration(args, negative: bool = False):
    """The workspace and the finished calibration run that --run names (default: the newest). `negative`:
    also a calibration that failed because no unlearning method reached an operating point (its report
    holds the regimes alone)."""
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
    if run["status"] != "done" and not (negative and regimes_only(ws.load_artifact(run_id, "validation_report"))):
        raise ValueError(f"--run {run_id!r}: the calibration is {run['status']}, not done; rerun it to finish")
    return ws, run


def calibration_scenario(args, ws, run, **kwargs):
    """The calibration's model (fine-tuned scenarios come back from the fine-tuning cache) and its forget
    set, rebuilt from the --model flags; refused when they give another model than the calibration's."""
    if hasattr(args, "executor"):
        executor_settings(args)
    forget = ws.load_samples(run["id"])
    scenario = prepare_scenario(RunContext(load_lm(args), dataset=run["dataset"]), forget_ids=[s.id for s in forget],
                                **kwargs)
    if scenario.lm.name != run["model"]:
        raise ValueError(f"--model gives {scenario.lm.name!r}, but calibration {run['id']} ran on {run['model']!r}")
    return scenario


def show_reports(args, reports: list[dict], module, command: str, flags: str) -> int:
    """Print `reports` (`--format`) and, with `--readme`, regenerate their README section; `module` is their
    report module (`markdown`, `readme_section`, `README`), `flags` what reruns `command` when no
    `--from-json` file was given."""
    if args.format == "json":
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=1, default=float))
    else:
        print("\n".join(module.markdown(r) for r in reports))
    if args.readme:
        path = Path(args.readme)
        source = " ".join(f"--from-json {f}" for f in args.from_json) or flags
        section = module.readme_section(reports, f"python -m cud_core {command} {source} --readme {args.readme}")
        atomic_write_text(path, module.README.replace(path.read_text(encoding="utf-8"), section))
        print(f"updated the {module.README.name} section of {path}", file=sys.stderr)
    return 0
