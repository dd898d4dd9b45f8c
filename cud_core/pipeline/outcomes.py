"""A calibration's unlearning outcomes (stage 2 of `calibration`): every (method, seed) run, each
stored as a curve artifact of the calibration run — which runs it has and still needs, where another
calibration's curve could be taken from (`reuse`), and the outcomes read back. `unlearning` writes them.
"""
from __future__ import annotations

from cud_core.difficulty.cud import realised_difficulty
from cud_core.pipeline import reuse
from cud_core.store.workspace import Workspace

RUN_KIND = "calibrate"  # the runs that store these outcomes (calibration.RUN_KIND)


def units(settings) -> list[tuple[str, int]]:
    """Every (method, seed) of a calibration, in the order they run (seed by seed)."""
    return [(m, seed) for seed in settings.seeds for m in settings.methods]


def reattributed(settings, seed: int) -> bool:
    """Whether the unit's unlearned copy is re-attributed (`--diff-circuits`, first seed): such a unit
    needs the copy in memory, so it is never reused from another calibration."""
    return settings.diff_circuits and seed == settings.seeds[0]


def left(workspace: Workspace, run_id: str | None, settings) -> list[tuple[str, int]]:
    """The units the calibration `run_id` (None: not created yet) still has to store: no curve yet,
    or a re-attributed unit without its circuit diff."""
    def stored(method, seed):
        if run_id is None or workspace.load_artifact(run_id, curve_artifact(method, seed, settings.seeds)) is None:
            return False
        return not reattributed(settings, seed) or workspace.load_artifact(run_id, f"circuit_diff-{method}") is not None
    return [u for u in units(settings) if not stored(*u)]


def donors(workspace: Workspace, run: dict, settings, method: str, seed: int, exclude: str | None = None):
    """`reuse.donors` of one unit for a calibration whose stored row (or would-be row) is `run`
    (model, dataset, config); nothing for re-attributed units."""
    if reattributed(settings, seed):
        return iter(())
    return reuse.donors(workspace, RUN_KIND, run["model"], run["dataset"], run["config"], method, seed,
                        curve_artifact, exclude=exclude)


def curve_artifact(method: str, seed: int, seeds) -> str:
    """The first seed's curve is `curve-METHOD` (what the pages show); other seeds `curve-METHOD.seedN`."""
    return f"curve-{method}" if seed == seeds[0] else f"curve-{method}.seed{seed}"


def load_outcomes(workspace: Workspace, run_id: str, settings: dict) -> tuple[dict, int]:
    """method -> seed -> sample id -> realised difficulty, and the number of unlearning steps."""
    seeds = settings.get("seeds") or [settings["seed"]]
    outcomes = {}
    for method in settings["methods"]:
        outcomes[method] = {}
        for seed in seeds:
            c = workspace.load_artifact(run_id, curve_artifact(method, seed, seeds))
            outcomes[method][seed] = realised_difficulty(c["curve"], c["prob_curve"], c["steps"],
                                                         settings["forgotten_threshold"])
    return outcomes, settings["steps"]


