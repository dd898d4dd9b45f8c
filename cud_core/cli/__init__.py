"""Command line: `python -m cud_core {info,score,unlearn,calibrate,validate-prospective,report,faithfulness,
ablate,circuit-diff,transfer,export,pack,unpack,upgrade}`: the parser in `parser.py`, the commands in `run_commands.py`
and `report_commands.py`.

Errors in user input end the program with exit status 2 and one line on stderr naming the
problem (no traceback).
"""
from __future__ import annotations

import argparse
import sys

from cud_core.cli.parser import build_parser
from cud_core.cli.report_commands import (
    cmd_ablate,
    cmd_circuit_diff,
    cmd_export,
    cmd_faithfulness,
    cmd_pack,
    cmd_report,
    cmd_talk_pack,
    cmd_transfer,
    cmd_unpack,
    cmd_upgrade,
)
from cud_core.cli.run_commands import cmd_calibrate, cmd_info, cmd_score, cmd_unlearn, cmd_validate_prospective
from cud_core.data.samples import DataError
from cud_core.engine.models import ModelLoadError
from cud_core.pipeline.presets import cli_defaults
from cud_core.store.workspace import WorkspaceError
from cud_core.unlearn.runner import NonFiniteLoss

USER_ERRORS = (DataError, ModelLoadError, WorkspaceError, FileNotFoundError, ValueError)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments, with a `--preset`'s values as the defaults of the flags not given explicitly."""
    args = build_parser().parse_args(argv)
    if getattr(args, "preset", None):
        parser = build_parser()
        parser.commands[args.command].set_defaults(**cli_defaults(args.preset))
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return {"info": cmd_info, "score": cmd_score, "unlearn": cmd_unlearn, "calibrate": cmd_calibrate,
                "report": cmd_report, "faithfulness": cmd_faithfulness, "ablate": cmd_ablate,
                "circuit-diff": cmd_circuit_diff, "export": cmd_export, "pack": cmd_pack,
                "unpack": cmd_unpack, "upgrade": cmd_upgrade, "talk-pack": cmd_talk_pack, "transfer": cmd_transfer,
                "validate-prospective": cmd_validate_prospective}[args.command](args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLoss as exc:
        print(f"failed: {exc}; the run is marked failed in the workspace", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished samples are kept in the workspace, rerun to resume", file=sys.stderr)
        return 130
