"""Commands over finished calibrations: report, faithfulness, ablate, circuit-diff, transfer, export,
pack/unpack."""
from __future__ import annotations

import sys
from pathlib import Path

from cud_core.cli.common import (
    calibration_scenario,
    estimate_workers,
    finished_calibration,
    make_executor,
    open_workspace,
    print_estimate,
    progress_printer,
    show_reports,
)
from cud_core.difficulty.circuit_diff import SUMMARY, aggregate
from cud_core.pipeline.ablation import ablate, remaining_settings, scored_settings
from cud_core.pipeline.calibration import export_rows, format_table
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.estimate import describe_run, estimate_ablate
from cud_core.pipeline.faithfulness import anchor_faithfulness, rows
from cud_core.pipeline.outcomes import PART_KIND
from cud_core.pipeline.scoring import ScoreSettings
from cud_core.pipeline.transfer import ARTIFACT as TRANSFER_REPORT
from cud_core.pipeline.transfer import transfer
from cud_core.pipeline.upgrade import upgrade
from cud_core.report import ablation as ablation_report
from cud_core.report import talk
from cud_core.report import transfer as transfer_report
from cud_core.report import validation as report
from cud_core.report.document import markdown_table
from cud_core.store.atomic import atomic_write_text
from cud_core.store.bundle import Limits, pack, parse_size, unpack
from cud_core.store.escaping import csv_cell
from cud_core.store.workspace import Workspace


def cmd_report(args) -> int:
    if args.from_json:
        reports = [report.from_json(Path(f)) for f in args.from_json]
    else:
        ws, run = finished_calibration(args, negative=args.run is not None)
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
        atomic_write_text(path, report.README.replace(path.read_text(encoding="utf-8"), section))
        print(f"updated the results section of {path}", file=sys.stderr)
    return 0


def cmd_talk_pack(args) -> int:
    ws, run = finished_calibration(args, negative=args.run is not None)
    out = Path(args.out) if args.out else Path(args.workspace) / "talks" / run["id"]
    written = talk.write(ws, run, out, png=not args.no_png)
    print(f"wrote {written[0]} and {len(written) - 1} figure files under {out / 'figures'}")
    return 0


def cmd_faithfulness(args) -> int:
    ws, run = finished_calibration(args)
    lm = calibration_scenario(args, ws, run, need_retain=False).lm
    with make_executor(args, lm) as executor:
        f = anchor_faithfulness(RunContext(lm, ws, run_id=run["id"], progress=progress_printer("faithfulness"),
                                           executor=executor), max_members=args.members)
    print(markdown_table(rows(f)))
    return 0


def cmd_ablate(args) -> int:
    if args.from_json:
        summary, run = ablation_report.from_json(Path(args.from_json))
    else:
        attribution = None
        if args.attribution is not None:
            attribution = [a.strip() for a in args.attribution.split(",") if a.strip()]
            if not attribution:
                raise ValueError("--attribution is empty; name methods or METHOD/METRIC/BASELINE settings, or leave "
                                 "the flag out for the whole grid")
        ws, run = finished_calibration(args)
        scenario = calibration_scenario(args, ws, run, limit=args.limit)
        todo = remaining_settings(ws, run["id"], attribution)
        print_estimate(lambda: describe_run(estimate_ablate(
            scenario.lm, scenario.forget, ScoreSettings.of_run(run), todo, run["config"]["n_boot"],
            estimate_workers(args), scored=scored_settings(scenario.lm, scenario.forget, scenario.retain, ws,
                                                           run["id"], todo))))
        with make_executor(args, scenario.lm) as executor:
            summary = ablate(RunContext(scenario.lm, ws, run_id=run["id"], progress=progress_printer("ablate"),
                                        executor=executor), scenario.forget, scenario.retain, attribution=attribution)
    print(ablation_report.as_json(summary, run) if args.format == "json" else ablation_report.markdown(summary, run))
    print(ablation_report.headline(summary), file=sys.stderr)
    if args.readme:
        path = Path(args.readme)
        source = (f"--from-json {args.from_json}" if args.from_json
                  else f"--workspace {args.workspace} --run {run['id']}")
        section = ablation_report.readme_section(summary, run,
                                                 f"python -m cud_core ablate {source} --readme {args.readme}")
        atomic_write_text(path, ablation_report.README.replace(path.read_text(encoding="utf-8"), section))
        print(f"updated the ablation section of {path}", file=sys.stderr)
    return 0


def cmd_circuit_diff(args) -> int:
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
        groups = {"label": {i: r.get("label") for i, r in cal.items()},
                  "CUD bucket": {i: r["bucket"] for i, r in cal.items()}}
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


def cmd_transfer(args) -> int:
    if args.from_json and (args.anchors or args.target):
        raise ValueError("--from-json shows stored reports: give it without --anchors and --target")
    if args.from_json:
        reports = [transfer_report.from_json(Path(f)) for f in args.from_json]
    else:
        if not args.anchors or not args.target:
            raise ValueError("transfer needs --anchors RUN and --target RUN (or --from-json FILE)")
        ws = Workspace(args.workspace)
        run_id = transfer(ws, args.anchors, args.target, n_boot=args.bootstrap, n_permutations=args.permutations)
        reports = [ws.load_artifact(run_id, TRANSFER_REPORT)]
    return show_reports(args, reports, transfer_report, "transfer",
                        f"--workspace {args.workspace} --anchors {args.anchors} --target {args.target}")


def cmd_export(args) -> int:
    import csv

    ws, run = finished_calibration(args)
    run_id = run["id"]
    if args.validation:
        print(format_table(ws.load_artifact(run_id, "validation", [])))
        return 0
    rows = export_rows(ws, run_id)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(sys.stdout, fieldnames=fields)
    writer.writeheader()
    writer.writerows({k: csv_cell(v) for k, v in r.items()} for r in rows)  # ids and texts from the data
    return 0


def cmd_pack(args) -> int:
    ws, run = finished_calibration(args)
    manifest = pack(ws, run["id"], args.out, with_scores=args.with_scores)
    size = Path(args.out).stat().st_size / 2 ** 20
    sets = sum(ws.get_run(r)["kind"] == PART_KIND for r in manifest["runs"])
    scoring = len(manifest["runs"]) - 1 - sets
    print(f"wrote {args.out} ({size:.1f} MB): calibration {run['id']}"
          + (f", its {sets} forget sets' unlearning runs" if sets else "")
          + f" and {scoring} scoring run(s){' with' if args.with_scores else ' without'} edge scores; "
          f"`python -m cud_core unpack {args.out} --workspace W` adds them to another workspace")
    return 0


def cmd_unpack(args) -> int:
    limits = Limits(max_bytes=parse_size(args.max_size), max_ratio=args.max_ratio)
    ws = open_workspace(args)
    result = unpack(ws, args.bundle, limits, on_wait=lambda m: print(m, file=sys.stderr, flush=True))
    for rid in result["added"]:
        print(f"added {rid}")
    for rid in result["skipped"]:
        print(f"skipped {rid} (already in {ws.root})")
    print(f"calibration {result['calibration']} ({result['model']}, {result['dataset']}) is in {ws.root}")
    return 0


def cmd_upgrade(args) -> int:
    done = upgrade(args.workspace)
    for line in done:
        print(f"upgraded {line}")
    print(f"{args.workspace} is in this version's format" + ("" if done else " (nothing to do)"))
    return 0
