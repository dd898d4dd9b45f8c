"""Commands that compute: info, score, unlearn, calibrate."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from cud_core.cli.common import (
    estimate_workers,
    int_list,
    load_lm,
    make_executor,
    open_workspace,
    parse_hyper,
    print_estimate,
    progress_printer,
    scenario,
    score_settings_like,
    show_reports,
)
from cud_core.difficulty.circuit_diff import SUMMARY
from cud_core.difficulty.regimes import PROTOCOL
from cud_core.engine.graph import Graph
from cud_core.pipeline.calibration import CalibrationSettings, calibrate, format_table, pending, run_config
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.estimate import describe, describe_run, estimate_calibrate, estimate_score, estimate_unlearning
from cud_core.pipeline.predict import anchor_settings, score_and_predict
from cud_core.pipeline.prospective import ProspectiveSettings, validate_prospective
from cud_core.pipeline.prospective import estimate as prospective_estimate
from cud_core.pipeline.scoring import ScoreSettings
from cud_core.pipeline.unlearning import UnlearnSettings, unlearn
from cud_core.report import prospective as prospective_report


def cmd_info(args) -> int:
    lm = load_lm(args)
    info = dict(lm.info, name=lm.name, source=lm.source)
    try:
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


def cmd_score(args) -> int:
    from tqdm import tqdm

    settings = ScoreSettings(method=args.method, steps=args.steps, baseline=args.baseline, metric=args.metric,
                             batch_size=args.batch_size, binarise=args.binarise, n_edges=args.edges,
                             store=args.store, faithfulness=args.faithfulness, generation=not args.no_generation)
    ws = open_workspace(args)
    if args.anchors:
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
        print(describe(estimate_score(lm, samples, settings, workers=estimate_workers(args))), file=sys.stderr)
        with make_executor(args, lm) as executor:
            run_id, p = score_and_predict(RunContext(lm, ws, args.data, progress=progress, executor=executor),
                                          samples, settings, args.anchors or None, extra_config=extra)
    print(f"scored {len(samples)} samples into {ws.root} (run {run_id})")
    if p is not None:
        seen = set(p["in_calibration"])
        print(f"CUD predicted with the anchors of {args.anchors} ({p['similarity']}; 0 = like the easy anchor, "
              "1 = like the hard one):")
        for sid, v in sorted(p["cud"].items(), key=lambda kv: -kv[1]):
            print(f"  {v:.3f}  {sid}" + ("  (in that calibration: in-sample)" if sid in seen else ""))
    return 0


def cmd_unlearn(args) -> int:
    hyper = parse_hyper(args.hyper)
    spec = UnlearnSettings(args.method, args.steps, args.lr, args.eval_every, args.seed, args.batch_size, hyper,
                           args.checkpoint_every)
    spec.check()
    ws = open_workspace(args)
    sc = scenario(args, split=True)
    diff = score_settings_like(ws, args.like) if args.diff_circuits else None
    print_estimate(lambda: describe_run(estimate_unlearning(sc.lm, sc.forget, sc.retain, args.method, args.steps,
                                                             args.eval_every, args.batch_size, hyper)))
    run_id = unlearn(RunContext(sc.lm, ws, args.data, progress=progress_printer(args.method)), sc.forget, sc.retain,
                     spec, diff_circuits=diff, reference=sc.forget + sc.retain)
    run = ws.get_run(run_id)
    if run["status"] != "done":
        print(f"unlearning run {run_id} {run['status']}: {run['message']}", file=sys.stderr)
        return 1
    print(f"unlearned {len(sc.forget)} samples with {args.method} (run {run_id} in {ws.root})")
    d = ws.load_artifact(run_id, "circuit_diff")
    if d:
        ps = d["per_sample"].values()
        print("circuit diff (mean over samples): " + ", ".join(
            f"{k} {sum(x[k] for x in ps) / len(ps):.3f}" for k in SUMMARY))
    return 0


def calibration_settings(args) -> CalibrationSettings:
    """The calibration the flags describe (checked)."""
    settings = CalibrationSettings(
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), steps=args.steps, lr=args.lr,
        eval_every=args.eval_every, batch_size=args.batch_size, seed=args.seed, q=args.q,
        seeds=int_list("--seeds", args.seeds), forget_sets=args.forget_sets, folds=args.folds, n_boot=args.bootstrap,
        n_permutations=args.permutations, similarity=args.similarity, anchors=args.anchors,
        checkpoint_every=args.checkpoint_every, preset=args.preset or "", diff_circuits=args.diff_circuits,
        protocol=None if args.fixed_steps else PROTOCOL,
        score=ScoreSettings(method=args.attribution_method, metric=args.metric, baseline=args.baseline,
                            batch_size=args.batch_size, n_edges=args.edges, steps=args.ig_steps, generation=False))
    settings.validate()
    return settings


def cmd_calibrate(args) -> int:
    settings = calibration_settings(args)
    ws = open_workspace(args)
    sc = scenario(args, split=True)
    print_estimate(lambda: describe_run(estimate_calibrate(
        sc.lm, sc.forget, sc.retain, settings, estimate_workers(args),
        pending=pending(sc.lm, sc.forget, sc.retain, settings, ws, args.data))))
    with make_executor(args, sc.lm) as executor:
        run_id = calibrate(RunContext(sc.lm, ws, args.data, progress=progress_printer("calibrate"), executor=executor),
                           sc.forget, sc.retain, settings)
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


def cmd_validate_prospective(args) -> int:
    if args.from_json:
        return _show_prospective(args, [prospective_report.from_json(Path(f)) for f in args.from_json])
    settings = calibration_settings(args)
    p = ProspectiveSettings(k=args.k, strata=args.strata, seed=args.split_seed)
    p.check()
    ws = open_workspace(args)
    sc = scenario(args, split=True)
    ahead = pending(sc.lm, sc.forget, sc.retain, settings, ws, args.data)
    if not ahead["done"]:
        print_estimate(lambda: "the calibration first: " + describe_run(estimate_calibrate(
            sc.lm, sc.forget, sc.retain, settings, pending=ahead)))
    else:
        cal_id = ws.find_run("calibrate", sc.lm.name, args.data, run_config(sc.lm, sc.forget, sc.retain, settings))
        e = prospective_estimate(ws, cal_id, len(sc.forget), p)
        print(f"estimate: about {e['seconds'] / 60:.0f} min ({e['runs']} unlearning runs: {e['phases']} "
              f"of {p.k}, for {', '.join(e['methods'])} x {len(settings.seeds)} seeds; from calibration "
              f"{cal_id}'s own unlearning times)", file=sys.stderr)
    run_id = validate_prospective(RunContext(sc.lm, ws, args.data, progress=progress_printer("prospective")),
                                  sc.forget, sc.retain, settings, p)
    if run_id is None or ws.get_run(run_id)["status"] != "done":
        print("stopped; rerun the same command to resume", file=sys.stderr)
        return 1
    return _show_prospective(args, [ws.load_artifact(run_id, "prospective_report")])


def _show_prospective(args, reports: list[dict]) -> int:
    return show_reports(args, reports, prospective_report, "validate-prospective", "(the run's flags)")
