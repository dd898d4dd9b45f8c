"""What a pipeline stage runs with: the model, where its results go, how it reports progress and
learns of a Stop, where its units of work run, and the timings it records.

Stages (scoring, calibration, unlearning, the ablation grid, re-attribution, preparing a scenario)
take one `RunContext` instead of these as separate parameters. A stage that hands work to another
passes it on, changed where it must be (`but`, `within`): another run id, its own span of the
progress bar.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from cud_core.engine.models import LoadedModel
from cud_core.store.workspace import Workspace

Progress = Callable[[float, str], None]
StopFlag = Callable[[], bool]


@dataclass
class RunContext:
    lm: LoadedModel
    workspace: Workspace | None = None
    dataset: str = ""
    run_id: str | None = None           # the run the stage writes into (set by the stage that creates it)
    progress: Progress | None = None    # progress(fraction in [0, 1], message)
    should_stop: StopFlag | None = None
    executor: object = None             # cud_core.pipeline.executor (None: this process)
    timings: dict = field(default_factory=dict)  # shared with the contexts made from this one

    def report(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(fraction, message)

    def stop_requested(self) -> bool:
        return bool(self.should_stop and self.should_stop())

    def stop_run(self, message: str = "stopped by the user; rerun to resume") -> bool:
        """Whether a Stop was asked for; if so the run is marked stopped with `message`."""
        if not self.stop_requested():
            return False
        self.workspace.set_status(self.run_id, "stopped", message)
        return True

    def but(self, **changes) -> RunContext:
        """This context with `changes` (the timings stay shared)."""
        return replace(self, **changes)

    def within(self, start: float, span: float, prefix: str = "") -> RunContext:
        """This context reporting a sub-stage's progress f as start + span·f, its messages after `prefix`."""
        return self.but(progress=lambda f, m: self.report(start + span * f, f"{prefix}{m}"))
