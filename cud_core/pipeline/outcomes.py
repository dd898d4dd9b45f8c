"""A calibration's unlearning outcomes (stage 2 of `calibration`): every (method, seed) run, each
stored as a curve artifact of the calibration run — which runs it has and still needs, where another
calibration's curve could be taken from (`reuse`), and the outcomes read back. `unlearning` writes them.
"""
from __future__ import annotations

from dataclasses import replace
from itertools import chain

from cud_core.difficulty import regimes
from cud_core.difficulty.cud import realised_difficulty
from cud_core.pipeline import reuse
from cud_core.store.workspace import Workspace

RUN_KIND = "calibrate"  # the runs that store these outcomes (calibration.RUN_KIND)
# a calibration with several forget sets (`forget_sets`) keeps each set's units in a run of PART_KIND, and
# the sets (their ids and runs) as its artifact SETS_ARTIFACT; its outcomes and regimes are read through them
PART_KIND, SETS_ARTIFACT = "calibrate-part", "forget_sets"


def pooled(settings) -> bool:
    """Whether a calibration (its settings, or its stored config) unlearns several forget sets."""
    n = settings.get("forget_sets", 1) if isinstance(settings, dict) else settings.forget_sets
    return n > 1


def parts(workspace: Workspace, run_id: str) -> list[tuple[list[str], str | None]]:
    """(ids, run id or None while not done) of each forget set of pooled calibration `run_id`."""
    return [(p["ids"], p["run"]) for p in workspace.load_artifact(run_id, SETS_ARTIFACT, [])]


def kept(workspace: Workspace, run_id: str, methods) -> list[bool]:
    """Per forget set of pooled calibration `run_id`: whether its outcomes count, i.e. every method in
    `methods` reached a valid operating point on it with every seed. A set that does not is left out of the
    pool whole (its regimes are still reported): the sets are matched on the original NLL and dealt by a
    seeded shuffle, so which set fails says nothing about its samples, while pooling only the methods valid
    everywhere would leave no labels once any unit of any set failed."""
    return [_counts(found, methods) for found in _set_outcomes(workspace, run_id)]


def _set_outcomes(workspace: Workspace, run_id: str) -> list[dict | None]:
    """`load_outcomes` of each forget set's run of pooled calibration `run_id` (None: no run yet)."""
    return [load_outcomes(workspace, r, workspace.get_run(r)["config"])[0] if r is not None else None
            for _, r in parts(workspace, run_id)]


def _counts(found: dict | None, methods) -> bool:
    return found is not None and all(m in found for m in methods)


def kept_parts(workspace: Workspace, run_id: str, methods) -> list[tuple[int, list[str], str]]:
    """(set number from 1, ids, run) of the forget sets whose outcomes count (`kept`)."""
    return [(k + 1, ids, r) for k, ((ids, r), ok) in enumerate(zip(parts(workspace, run_id),
                                                                    kept(workspace, run_id, methods))) if ok]


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
    if run_id is not None and pooled(settings):  # a unit is stored once every set's run has it
        runs = [r for _, r in parts(workspace, run_id)]
        if not runs or None in runs:
            return units(settings)
        single = [left(workspace, r, replace(settings, forget_sets=1)) for r in runs]
        return [u for u in units(settings) if any(u in x for x in single)]

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
    # a forget set's run (PART_KIND) and a calibration of the same forget samples make the same unlearning run
    return chain.from_iterable(reuse.donors(workspace, kind, run["model"], run["dataset"], run["config"], method,
                                            seed, curve_artifact, exclude=exclude) for kind in (RUN_KIND, PART_KIND))


def curve_artifact(method: str, seed: int, seeds) -> str:
    """The first seed's curve is `curve-METHOD` (what the pages show); other seeds `curve-METHOD.seedN`."""
    return f"curve-{method}" if seed == seeds[0] else f"curve-{method}.seed{seed}"


def shown_units(workspace: Workspace, run_id: str) -> list[tuple[str, str, str]]:
    """(label, run id, artifact) of each first-seed curve a calibration stored: its methods' own, or for a
    pooled calibration each forget set's ("METHOD · set K", in that set's run)."""
    def own(rid: str, suffix: str = "") -> list[tuple[str, str, str]]:
        return [(name[6:] + suffix, rid, name) for name in workspace.artifact_names(rid)
                if name.startswith("curve-") and ".seed" not in name]
    if not pooled(workspace.get_run(run_id)["config"]):
        return own(run_id)
    return [u for k, (_, rid) in enumerate(parts(workspace, run_id)) if rid for u in own(rid, f" · set {k + 1}")]


def first_seed_curves(workspace: Workspace, run_id: str) -> dict[str, dict]:
    """method -> the first seed's stored curve of calibration `run_id`; for a pooled calibration the forget
    sets' curves joined: at evaluation t, the NLLs of every set that ran to t (a set ends at its point)."""
    out = {}
    for _, rid, name in shown_units(workspace, run_id):
        c, joined = workspace.load_artifact(rid, name), out.setdefault(name[6:], {"steps": [], "curve": []})
        for t, (step, nll) in enumerate(zip(c.get("steps", []), c.get("curve", []))):
            if t == len(joined["steps"]):
                joined["steps"].append(step)
                joined["curve"].append({})
            joined["curve"][t].update(nll)
    return out


def load_units(workspace: Workspace, run_id: str, settings: dict) -> dict[str, dict[int, dict]]:
    """method -> seed -> the stored curve of that (method, seed) unit of calibration `run_id`."""
    seeds = settings.get("seeds") or [settings["seed"]]
    return {m: {seed: workspace.load_artifact(run_id, curve_artifact(m, seed, seeds)) for seed in seeds}
            for m in settings["methods"]}


def load_outcomes(workspace: Workspace, run_id: str, settings: dict, units: dict | None = None) -> tuple[dict, int]:
    """method -> seed -> sample id -> realised difficulty, read at each run's own operating point (its
    stored "point"; the last evaluation for a calibration without the protocol), and the number of
    unlearning steps. Only functional methods (every seed reached a valid point) are in it. `units`:
    `load_units`' result when already read. A pooled calibration's: the outcomes of the forget sets where
    every method reached a valid point with every seed (`kept`), each at that set's own points, joined."""
    if pooled(settings):  # the sets where every method is valid (`kept`), each read once, joined
        found = [f for f in _set_outcomes(workspace, run_id) if _counts(f, settings["methods"])]
        return _join(found, settings["methods"]), settings["steps"]
    units = load_units(workspace, run_id, settings) if units is None else units
    threshold = settings["forgotten_threshold"]
    outcomes = {m: {seed: realised_at_point(c, threshold) for seed, c in curves.items()}
                for m, curves in units.items() if all(functional(c) for c in curves.values())}
    return outcomes, settings["steps"]


def join_outcomes(workspace: Workspace, runs: list[str], methods) -> dict:
    """`load_outcomes` of several runs over disjoint samples (forget sets), joined: method -> seed -> sample
    id -> realised difficulty, for the methods functional in every run."""
    return _join([load_outcomes(workspace, r, workspace.get_run(r)["config"])[0] for r in runs], methods)


def _join(found: list[dict], methods) -> dict:
    common = [m for m in methods if found and all(m in f for f in found)]
    return {m: {seed: {i: v for f in found for i, v in f[m][seed].items()} for seed in found[0][m]} for m in common}


def functional(curve: dict) -> bool:
    """Whether a stored unit reached a valid operating point (a unit stored without the protocol counts)."""
    return "skipped" not in curve and curve.get("verdict", regimes.VALID) == regimes.VALID


def realised_at_point(curve: dict, threshold: float) -> dict:
    """`realised_difficulty` of a stored unit with its curve cut at the operating point."""
    end = curve["point"] + 1 if curve.get("point") is not None else len(curve["steps"])
    return realised_difficulty(curve["curve"][:end], curve["prob_curve"][:end], curve["steps"][:end], threshold)


def load_regimes(workspace: Workspace, run_id: str, settings: dict, units: dict | None = None) -> dict:
    """method -> what the operating-point protocol found: "functional", the learning rate chosen, each
    seed's verdict and efficacy / held-out utility at its point ("seeds"), and the first seed's search
    (each rate tried, its verdict and trajectory). Empty for a calibration without the protocol. `units`:
    `load_units`' result when already read. A pooled calibration's: the methods vote when at least one
    forget set is kept (`kept`; "sets": whether the method was valid on each set); "lr" is the first kept
    set's rate ("lrs": each set's), "search" every set's tries ("forget_set" added), "seeds" keyed
    "SEED · set K"."""
    if not settings.get("protocol"):
        return {}
    if pooled(settings):
        return _pooled_regimes(workspace, run_id, settings)
    units = load_units(workspace, run_id, settings) if units is None else units
    protocol = regimes.Protocol.from_dict(settings["protocol"])
    original = workspace.load_artifact(run_id, "holdout_original", {}).get("rouge_l")
    out = {}
    for method, curves in units.items():
        first = next(iter(curves.values()))  # the first seed's: it searched the learning rate
        out[method] = {"functional": all(functional(c) for c in curves.values()),
                       "lr": first["settings"]["lr"] if functional(first) else None,
                       "search": first.get("search", []),
                       "seeds": {str(seed): {**_seed_regime(c, protocol), "holdout_rouge_0": original}
                                 for seed, c in curves.items()}}
    return out


def _pooled_regimes(workspace: Workspace, run_id: str, settings: dict) -> dict:
    original = workspace.load_artifact(run_id, "holdout_original", {}).get("rouge_l")
    found = [load_regimes(workspace, r, workspace.get_run(r)["config"]) for _, r in parts(workspace, run_id)]
    counted = kept(workspace, run_id, settings["methods"])
    votes = any(counted)
    out = {}
    for method in settings["methods"]:
        each = [f[method] for f in found]
        out[method] = {"functional": votes, "lr": next(r["lr"] for r, ok in zip(each, counted) if ok) if votes
                       else None, "lrs": [r["lr"] for r in each], "sets": [r["functional"] for r in each],
                       "search": [{**x, "forget_set": k + 1} for k, r in enumerate(each) for x in r["search"]],
                       "seeds": {f"{seed} · set {k + 1}": {**s, "holdout_rouge_0": original}
                                 for k, r in enumerate(each) for seed, s in r["seeds"].items()}}
    return out


def _seed_regime(curve: dict, protocol) -> dict:
    if "skipped" in curve:
        return {"verdict": "skipped", "why": curve["skipped"]}
    last = curve["point"] if curve.get("point") is not None else len(curve["steps"]) - 1
    return {"verdict": curve["verdict"], "lr": curve["settings"]["lr"], "holdout_rouge": curve.get("holdout_rouge"),
            **regimes.point_summary(curve, last, protocol)}
