"""Unlearning runs into the workspace, by one writer: the single runs of the Unlearning page and
`python -m cud_core unlearn` (runs of their own, kind "unlearn", the curve as artifact "curve") and a
calibration's (method, seed) runs (artifacts `outcomes.curve_artifact(...)` of the calibration run).

`run_method` is the loop they share: run the method on a copy of the model with checkpoints and
progress, write the curve, mark the run's status. Both are resumable: the same settings, samples and
model find the same run, and an unfinished unlearning continues from its last checkpoint (taken
every `checkpoint_every` evaluations, removed once the result is stored). A calibration's units can
also be taken from another calibration (`reuse`) or run on a cluster's workers (`executor`: each from
scratch, the driver storing each curve as it arrives).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from cud_core.data.samples import Sample
from cud_core.difficulty import regimes
from cud_core.engine.memory import check_unlearning
from cud_core.engine.models import adopt_legacy_runs, model_fingerprint
from cud_core.engine.stopping import Stopped
from cud_core.pipeline import outcomes, reuse
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.reattribution import reattribute
from cud_core.pipeline.scoring import content_hash
from cud_core.unlearn import METHODS, run_unlearning
from cud_core.unlearn.runner import NonFiniteLoss, UnlearnResult, check_settings, default_lr

RUN_KIND = "unlearn"
# known facts held out of the retain set for held-out utility (no loss sees them): at most this many,
# and at most a quarter of the retain set
HOLDOUT = 32


@dataclass
class UnlearnSettings:
    """One unlearning run: the method, its hyper-parameters and `runner.run_unlearning`'s settings."""
    method: str = "npo"
    steps: int = 30
    lr: float | None = None
    eval_every: int = 5
    seed: int = 0
    batch_size: int = 8
    hyper: dict = field(default_factory=dict)
    checkpoint_every: int = 1  # evaluations between checkpoints (0: none); not in a run's key

    def check(self) -> None:
        """ValueError naming the first unusable setting, before any model work."""
        check_settings(self.method, self.steps, self.lr, self.eval_every, self.batch_size, self.hyper,
                       self.checkpoint_every)

    @classmethod
    def of_calibration(cls, settings, method: str, seed: int, lr: float | None = None) -> UnlearnSettings:
        """The (method, seed) run of a calibration with CalibrationSettings `settings` (at learning rate
        `lr` instead of the calibration's when given: a step of the operating-point search)."""
        shared = settings.unlearning()
        if lr is not None:
            shared["lr"] = lr
        return cls(method, seed=seed, **shared)


@dataclass(frozen=True)
class Layout:
    """How one unlearning run is kept in its workspace run: the curve's artifact, the checkpoint's name
    ("": the run's own), whether the curve is the evaluations so far, stored at each one (`live`: a
    single run's "curve"), or `curve_payload` stored at the end (a calibration's), and whether the
    metrics before and after are measured (`final_metrics`: a single run's "before" and "after")."""
    artifact: str
    checkpoint: str = ""
    live: bool = False
    final_metrics: bool = False

    @classmethod
    def of_unit(cls, method: str, seed: int, seeds) -> Layout:
        """A calibration's (method, seed) run."""
        return cls(outcomes.curve_artifact(method, seed, seeds), f"{method}-{seed}")


SINGLE = Layout("curve", live=True, final_metrics=True)


def held_out(retain: list[Sample], seed: int) -> tuple[list[Sample], list[Sample]]:
    """(the retain samples unlearning trains on, the held-out ones it only evaluates): a seeded sample of
    `HOLDOUT`, at most a quarter, of `retain` (none below 4 retain samples)."""
    n = min(HOLDOUT, len(retain) // 4)
    if n < 1:
        return retain, []
    held = set(np.random.default_rng(seed).choice(len(retain), n, replace=False).tolist())
    return [s for i, s in enumerate(retain) if i not in held], [s for i, s in enumerate(retain) if i in held]


def run(lm, forget: list[Sample], retain: list[Sample], spec: UnlearnSettings, **kwargs) -> UnlearnResult:
    """`runner.run_unlearning` of `spec` on a copy of `lm` (`kwargs`: its callback, checkpoint, …)."""
    return run_unlearning(lm.model, lm.tokenizer, forget, retain, spec.method, steps=spec.steps, lr=spec.lr,
                          eval_every=spec.eval_every, seed=spec.seed, batch_size=spec.batch_size,
                          checkpoint_every=spec.checkpoint_every, **kwargs, **spec.hyper)


def run_method(ctx: RunContext, forget: list[Sample], retain: list[Sample], spec: UnlearnSettings, layout: Layout, *,
               describe: Callable[[dict], str], stopped: Callable[[UnlearnResult], str],
               store: Callable[[UnlearnResult], None] | None = None, **run_kwargs) -> UnlearnResult | None:
    """Run `spec` into run `ctx.run_id` as `layout` keeps it, continuing from its checkpoint. Each
    evaluation touches the run and reports the share of steps done with `describe(evaluation)`. Once
    the curve is stored, `store(result)` writes the rest and the checkpoint goes (a run's own: every
    checkpoint of the run). A Stop marks the run stopped with `stopped(result)` and returns None; an
    error marks it failed (a diverged run loses its checkpoints: a rerun would diverge again) and is
    raised. `run_kwargs`: `runner.run_unlearning`'s holdout and stop_when."""
    workspace, run_id = ctx.workspace, ctx.run_id
    path = workspace.checkpoint_path(run_id, layout.checkpoint)
    evaluations = []

    def on_eval(e):
        workspace.touch(run_id)
        if layout.live:
            evaluations.append(e)
            workspace.save_artifact(run_id, layout.artifact, evaluations)
        ctx.report(e["step"] / max(1, spec.steps), describe(e))
    try:
        result = run(ctx.lm, forget, retain, spec, final_metrics=layout.final_metrics, callback=on_eval,
                     should_stop=ctx.should_stop, checkpoint=path, **run_kwargs)
    except NonFiniteLoss as exc:
        workspace.remove_checkpoints(run_id)
        workspace.set_status(run_id, "failed", str(exc))
        raise
    except BaseException as exc:
        interrupted = isinstance(exc, Stopped) or not isinstance(exc, Exception)  # Stop, Ctrl-C
        workspace.set_status(run_id, "stopped" if interrupted else "failed", str(exc)[:500])
        raise
    if result.stopped:  # its checkpoint holds the trained copy; the curve so far is stored when live
        workspace.set_status(run_id, "stopped", stopped(result))
        return None
    if not layout.live:
        workspace.save_artifact(run_id, layout.artifact, curve_payload(result))
    if store is not None:
        store(result)
    if layout.checkpoint:
        path.unlink(missing_ok=True)
    else:
        workspace.remove_checkpoints(run_id)
    return result


def curve_payload(result: UnlearnResult) -> dict:
    """What a calibration stores of one unlearning run (artifact `outcomes.curve_artifact(...)`)."""
    return {"settings": result.settings, "steps": result.steps, "elapsed": result.elapsed, "curve": result.curve,
            "prob_curve": result.prob_curve, "retain_curve": result.retain_curve, "losses": result.losses,
            "holdout": result.holdout_curve, "holdout_rouge": result.holdout_rouge, "ended_early": result.ended_early}


def run_protocol(run: dict | None) -> regimes.Protocol:
    """The operating-point protocol a calibration ran under: its stored one (a run stored before versions
    existed reads as version 1), else today's."""
    stored = ((run or {}).get("config") or {}).get("protocol")
    return regimes.Protocol.from_dict(stored) if stored else regimes.PROTOCOL


def regime_of(curve: dict | list[dict], protocol: regimes.Protocol = regimes.PROTOCOL) -> dict:
    """What a page shows of one run's regime: its trajectory (forget efficacy and held-out utility at every
    evaluation), the protocol's verdict and the index of the operating point (a calibration unit's as
    stored; a single run's as the protocol would place it: single runs go to their steps). `curve`: a
    calibration unit's stored curve or a single run's evaluations. Verdict None: no held-out samples."""
    if isinstance(curve, list):
        curve = {"steps": [e["step"] for e in curve], "curve": [e["forget_nll"] for e in curve],
                 "prob_curve": [e["forget_prob"] for e in curve],
                 "holdout": [e["holdout"] for e in curve] if curve and "holdout" in curve[0] else []}
    if "verdict" in curve:
        verdict, point = curve["verdict"], curve["point"]
    else:
        verdict, point = regimes.verdict(curve, protocol) if curve["holdout"] else (None, None)
    traj = regimes.trajectory(curve, protocol)
    nll_0 = traj[0]["holdout_nll_0"] if traj else None
    return {"trajectory": traj, "verdict": verdict, "point": point, "protocol": protocol.as_dict(),
            "allowed_rise": None if nll_0 is None else regimes.allowed_rise(nll_0, protocol)}


def regime_text(regime: dict) -> str:
    """One sentence on a run's regime (`regime_of`): where it met the protocol, or why not."""
    p, verdict, traj = regime["protocol"], regime["verdict"], regime["trajectory"]
    rule = (f"≥ {p['efficacy']:.0%} of the known forget samples below answer probability {p['threshold']:g} with the "
            f"{regimes.bound_text(p)}")
    if verdict is None:
        return ("No held-out facts in this run: its utility cost is unknown (it predates them, or had fewer than 4 "
                "retain samples).")
    if verdict == regimes.VALID:
        e = traj[regime["point"]]
        return (f"Operating point at step {e['step']} ({rule}): {e['share_forgotten']:.0%} forgotten, held-out NLL "
                f"{e['holdout_nll_0']:.2f} → {e['holdout_nll']:.2f}. A run counts as evidence there.")
    if verdict == regimes.COLLAPSED:
        e = next(x for x in traj[1:] if not regimes.within_bound(x["holdout_nll"], x["holdout_nll_0"],
                                                                  regimes.Protocol.from_dict(p)))
        return (f"Collapsed at step {e['step']}: held-out NLL {e['holdout_nll_0']:.2f} → {e['holdout_nll']:.2f} "
                f"before {p['efficacy']:.0%} of the samples were forgotten ({e['share_forgotten']:.0%}); not evidence.")
    return (f"Inert: no evaluation reached {rule} ({traj[-1]['share_forgotten']:.0%} forgotten at step "
            f"{traj[-1]['step']}); not evidence.")


def protocol_search(run_one: Callable[[float, int], dict | None], default: float, protocol: regimes.Protocol | None,
                    fixed: float | None = None) -> dict | None:
    """One (method, seed) unit of a calibration under the operating-point `protocol` (`regimes`): runs at
    the default learning rate, then (only when it finds no valid point) along the protocol's grid, or at
    `fixed` alone (a later seed: the rate the first seed chose). `run_one(lr, k)`: the k-th try's curve
    payload (None: stopped). Returns the valid try (else the last) with its "verdict", "point" (the
    operating point's evaluation index) and "search" (every try's rate, verdict and trajectory); None when
    stopped. Without a protocol: one run at `default`, every evaluation kept."""
    if protocol is None:
        return run_one(fixed if fixed is not None else default, 0)
    tries, lr = [], fixed if fixed is not None else default
    while lr is not None:
        payload = run_one(lr, len(tries))
        if payload is None:
            return None
        verdict, point = regimes.verdict(payload, protocol)
        tries.append({**payload, "verdict": verdict, "point": point})
        lr = None if fixed is not None else regimes.next_lr(
            default, [(x["settings"]["lr"], x["verdict"]) for x in tries], protocol)
    chosen = next((x for x in tries if x["verdict"] == regimes.VALID), tries[-1])
    return {**chosen, "search": [{"lr": x["settings"]["lr"], "verdict": x["verdict"], "point": x["point"],
                                  "trajectory": regimes.trajectory(x, protocol)} for x in tries]}


# ----------------------------------------------------------------------------- single runs

def run_config(lm, forget: list[Sample], retain: list[Sample], spec: UnlearnSettings, label: str = "") -> dict:
    """What a single unlearning run is found (and resumed) by: every hyper-parameter, defaults included
    (new defaults, a new run), the samples (the held-out ones too) and the model; not `checkpoint_every`."""
    return {"method": spec.method, "steps": spec.steps, "lr": spec.lr, "eval_every": spec.eval_every,
            "seed": spec.seed, "batch_size": spec.batch_size, "hyper": METHODS[spec.method].resolve(spec.hyper),
            "forget": [s.id for s in forget], "label": label, "samples_hash": content_hash(forget),
            "retain_hash": content_hash(retain), "model_fingerprint": model_fingerprint(lm.model),
            "holdout": [s.id for s in held_out(retain, spec.seed)[1]]}


def unlearn(ctx: RunContext, forget: list[Sample], retain: list[Sample], spec: UnlearnSettings, label: str = "",
            on_run: Callable[[str], None] | None = None, diff_circuits=None,
            reference: list[Sample] | None = None) -> str:
    """One unlearning run of `ctx.lm` into `ctx.workspace` (kind "unlearn"), its forgetting curve streamed
    into artifact "curve" with forget efficacy and held-out utility (`held_out(retain)` is evaluated, not
    trained on); returns its id. `on_run(run_id)` is called as soon as the run exists (the app
    opens it live in the starting tab). `diff_circuits` (ScoreSettings): re-attribute the forget samples
    in the unlearned copy with these settings and store the circuit diff (artifact "circuit_diff";
    `reference`: the mean baseline's samples). A run found done is returned as it is."""
    lm, workspace, steps = ctx.lm, ctx.workspace, spec.steps
    spec.check()
    check_unlearning(lm, forget + retain, spec.batch_size)
    adopt_legacy_runs(workspace, lm.model)
    config = run_config(lm, forget, retain, spec, label)
    with workspace.run_lock(RUN_KIND, lm.name, ctx.dataset, config, on_wait=lambda m: ctx.report(0.0, m),
                            should_stop=ctx.should_stop) as acquired:
        run_id = workspace.find_run(RUN_KIND, lm.name, ctx.dataset, config)
        if not acquired or (run_id and workspace.get_run(run_id)["status"] == "done"):
            if run_id and on_run:
                on_run(run_id)
            return run_id
        if run_id is None:
            run_id = workspace.create_run(RUN_KIND, lm.name, ctx.dataset, config)
            workspace.save_samples(run_id, forget)
        if on_run:
            on_run(run_id)
        ctx = ctx.but(run_id=run_id)
        workspace.remove_temp_files(run_id)
        resuming = workspace.checkpoint_path(run_id).is_file()
        workspace.set_status(run_id, "running", "resuming from its checkpoint" if resuming else "")
        if resuming:
            ctx.report(0.0, f"resuming run {run_id} from its checkpoint")

        def describe(e):
            mean = sum(e["forget_nll"].values()) / len(e["forget_nll"])
            eta = f", about {e['elapsed'] / e['step'] * (steps - e['step']):.0f} s left" if e["step"] else ""
            last = "; measuring the answers before and after (greedy, for ROUGE-L)" if e["step"] == steps else ""
            return f"step {e['step']}/{steps}: forget NLL {mean:.3f}, retain NLL {e['retain_nll']:.3f}{eta}{last}"
        ctx.report(0.0, f"unlearning {len(forget)} forget samples: evaluating step 0 (then training; the answers "
                        "before and after, for ROUGE-L, are measured at the end)")
        train, holdout = held_out(retain, spec.seed)
        result = run_method(ctx, forget, train, spec, SINGLE, describe=describe,
                            stopped=lambda r: f"stopped at step {len(r.losses)}/{steps}; rerun to resume",
                            store=lambda r: _store_results(workspace, run_id, r), holdout=holdout)
        if result is None:
            return run_id
        note = ""
        if diff_circuits is not None:
            if reattribute(ctx.but(executor=None), result.model, forget, diff_circuits, reference=reference) is None:
                note = "; circuit re-attribution stopped (start the run again with another label to redo it)"
        workspace.set_status(run_id, "done", f"{len(forget)} forget samples, {len(result.losses)} steps{note}")
    return run_id


def _store_results(workspace, run_id: str, result: UnlearnResult) -> None:
    """A single run's metrics before and after (artifacts) and each forget sample's row."""
    workspace.save_artifact(run_id, "before", result.before)
    workspace.save_artifact(run_id, "after", result.after)
    workspace.save_results(run_id, {sid: {"nll_before": result.curve[0][sid], "nll_after": result.curve[-1][sid],
                                          **{f"after_{k}": v for k, v in result.after["forget"][sid].items()
                                             if k != "generation"}} for sid in result.curve[0]})


# ----------------------------------------------------------------------------- a calibration's runs

def calibration_runs(ctx: RunContext, forget: list[Sample], retain: list[Sample], holdout: list[Sample],
                     settings, rates: dict[str, float] | None = None) -> bool:
    """Every (method, seed) run of calibration `ctx.run_id` (CalibrationSettings `settings`) not stored
    yet, into its progress span 30–85%; False when stopped. Each unit follows the operating-point protocol
    (`protocol_search`; `holdout`: the held-out utility set): the first seed searches the learning rate,
    later seeds run at the rate it chose (and are skipped when it found none). Here: one after the other,
    with checkpoints; on a cluster (`ctx.executor`): the first seeds at once on the workers (each from
    scratch), then the others, the driver storing each curve as it arrives. Each unit's time goes into
    `ctx.timings`. `rates`: method -> a learning rate every seed runs at, with no search (the prospective
    phases: the rates their calibration chose)."""
    workspace, run_id, timings, executor = ctx.workspace, ctx.run_id, ctx.timings, ctx.executor
    all_units = outcomes.units(settings)
    todo = reuse_curves(ctx, forget, retain, settings, outcomes.left(workspace, run_id, settings))
    if todo is None:
        ctx.stop_run()  # should_stop fired during a check: marks the run stopped
        return False
    if executor is not None and executor.remote and todo:
        t, k = time.time(), len(all_units) - len(todo)
        ctx.report(0.3, f"unlearning: {len(todo)} runs ({settings.steps} steps at most) on the cluster")
        for wave in ([u for u in todo if u[1] == settings.seeds[0]], [u for u in todo if u[1] != settings.seeds[0]]):
            jobs, stored = [], []
            for method, seed in wave:
                fixed = rates[method] if rates else _first_seed_lr(ctx, settings, method, seed)
                if fixed is False:
                    _store_unit(ctx, settings, method, seed, skipped_unit(method, seed))
                    k += 1
                    continue
                jobs.append((UnlearnSettings.of_calibration(settings, method, seed), forget, retain, holdout,
                             settings.protocol, fixed))
                stored.append((method, seed))
            for (method, seed), curve in zip(stored, executor.map(
                    unlearning_unit, jobs, should_stop=ctx.should_stop,
                    progress=lambda m: (workspace.touch(run_id),
                                        ctx.report(0.3 + 0.55 * k / len(all_units), f"unlearning: {m}")))):
                timings[f"unlearn_{method}_seed{seed}_s"] = curve.pop("wall_s")
                _store_unit(ctx, settings, method, seed, curve)
                k += 1
                ctx.report(0.3 + 0.55 * k / len(all_units), f"unlearning: {k}/{len(all_units)} runs done "
                                                             f"({method}, seed {seed}); {executor.status()}")
        timings["unlearning_cluster_s"] = round(time.time() - t, 1)
        if k < len(all_units):
            workspace.set_status(run_id, "stopped", "stopped during unlearning; rerun to resume")
            return False
        return True
    span = 0.55 / len(all_units)  # unlearning spans 30–85%
    for method, seed in todo:
        k = all_units.index((method, seed))
        if ctx.stop_run():
            return False
        t = time.time()
        base = 0.3 + span * k
        unit = f"{method}, seed {seed} ({k + 1}/{len(all_units)})"
        fixed = rates[method] if rates else _first_seed_lr(ctx, settings, method, seed)
        if fixed is False:
            _store_unit(ctx, settings, method, seed, skipped_unit(method, seed))
            continue
        ctx.report(base, f"unlearning with {unit}: evaluating step 0 on {len(forget)} forget samples")
        kept = {}

        def run_one(lr, k, method=method, seed=seed, unit=unit, base=base):
            layout = Layout.of_unit(method, seed, settings.seeds)  # without a protocol: the one try is the unit
            if settings.protocol is not None:
                layout = replace(layout, artifact=search_artifact(method, seed, k), checkpoint=f"{method}-{seed}-{k}")
            done = workspace.load_artifact(run_id, layout.artifact)
            if done is not None and not outcomes.reattributed(settings, seed):
                return done  # a try a stopped calibration finished (a re-attributed unit needs its copy)
            at = f" at lr {lr:.2g}" if k else ""
            part = span / max_tries(settings, fixed)  # each try its share of the unit's progress span
            result = run_method(ctx.within(base + part * k, part, f"unlearning with {unit}{at}: "), forget, retain,
                                UnlearnSettings.of_calibration(settings, method, seed, lr), layout,
                                describe=lambda e: f"step {e['step']}/{settings.steps}",
                                stopped=lambda r: f"stopped during {unit}; rerun to resume",
                                holdout=holdout, stop_when=_stop_rule(settings))
            if result is None:
                return None
            kept["result"] = result
            return workspace.load_artifact(run_id, layout.artifact)
        default = settings.lr if settings.lr is not None else default_lr(ctx.lm.model)
        payload = protocol_search(run_one, default, settings.protocol, fixed)
        if payload is None:
            return False
        _store_unit(ctx, settings, method, seed, payload)
        timings[f"unlearn_{method}_seed{seed}_s"] = round(time.time() - t, 1)
        result = kept.get("result")
        if outcomes.reattributed(settings, seed) and result is not None:  # the unlearned copy, while in memory
            t = time.time()
            if reattribute(ctx.within(base + span, 0.0, f"{unit}: ").but(executor=None), result.model, forget,
                           settings.score, reference=forget + retain, artifact=f"circuit_diff-{method}") is None:
                workspace.set_status(run_id, "stopped", f"stopped while re-attributing {unit}; rerun to resume")
                return False
            timings[f"reattribute_{method}_s"] = round(time.time() - t, 1)
        workspace.save_artifact(run_id, "timings", timings)
        del result
        kept.clear()
    return True


def reuse_curves(ctx: RunContext, forget: list[Sample], retain: list[Sample], settings, todo) -> list | None:
    """Store the curve of every (method, seed) in `todo` that another calibration of this workspace
    already ran with the same unlearning settings, once `reuse.check` confirms the code reproduces it
    (`reuse`); returns the units still to run, or None when stopped. Not for units whose unlearned
    copy is re-attributed."""
    workspace, run_id, timings = ctx.workspace, ctx.run_id, ctx.timings
    run, rest = workspace.get_run(run_id), []
    for method, seed in todo:
        reused = False
        for donor, curve in outcomes.donors(workspace, run, settings, method, seed, exclude=run_id):
            t = time.time()
            ctx.report(0.3, f"unlearning: checking that {method}, seed {seed} of {donor} can be reused "
                            f"(its first {reuse.CHECK_STEPS} steps again)")
            checked = reuse.check(ctx.lm, forget, retain, method, seed, settings.unlearning(), curve, ctx.should_stop)
            if checked is None:
                return None
            steps, diff = checked
            if diff > reuse.TOLERANCE:
                ctx.report(0.3, f"unlearning: {method}, seed {seed} of {donor} differs from a fresh start "
                                f"(relative {diff:.1e})")
                continue
            workspace.save_artifact(run_id, outcomes.curve_artifact(method, seed, settings.seeds), {
                **curve, "reused_from": donor, "reuse_check": {"steps": steps, "max_relative_difference": diff}})
            timings[f"unlearn_{method}_seed{seed}_s"] = round(time.time() - t, 1)
            timings.setdefault("reused_unlearning", {})[f"{method}-{seed}"] = donor
            workspace.save_artifact(run_id, "timings", timings)
            reused = True
            break
        if not reused:
            rest.append((method, seed))
    return rest


def unlearning_unit(lm, unit) -> dict:
    """One (UnlearnSettings, forget, retain, holdout, protocol, fixed lr) unit of a calibration on an
    executor's worker, from scratch and without checkpoints (only the driver writes the workspace): the
    unit's curve artifact (`protocol_search`), plus its wall time."""
    spec, forget, retain, holdout, protocol, fixed = unit
    t = time.time()
    stop_when = regimes.stop_rule(protocol) if protocol is not None else None
    payload = protocol_search(
        lambda lr, k: curve_payload(run(lm, forget, retain, replace(spec, lr=lr), holdout=holdout,
                                        stop_when=stop_when)),
        spec.lr if spec.lr is not None else default_lr(lm.model), protocol, fixed)
    return {**payload, "wall_s": round(time.time() - t, 1)}


def max_tries(settings, fixed: float | None) -> int:
    """How many learning rates a unit may try: 1 + the longer side of the protocol's grid for a first seed."""
    if settings.protocol is None or fixed is not None:
        return 1
    return 1 + max(len(settings.protocol.up), len(settings.protocol.down))


def search_artifact(method: str, seed: int, k: int) -> str:
    """The k-th try of a calibration unit's learning-rate search (the unit's own artifact keeps the chosen one)."""
    return f"search-{method}.seed{seed}.try{k}"


def _stop_rule(settings):
    return regimes.stop_rule(settings.protocol) if settings.protocol is not None else None


def _first_seed_lr(ctx: RunContext, settings, method: str, seed: int) -> float | None | bool:
    """The learning rate a later seed of `method` runs at: the one its first seed chose (stored); None for
    the first seed (it searches) and without a protocol; False when the first seed found no valid point
    (the method is not functional: its later seeds are skipped)."""
    if seed == settings.seeds[0] or settings.protocol is None:
        return None
    first = ctx.workspace.load_artifact(ctx.run_id, outcomes.curve_artifact(method, settings.seeds[0], settings.seeds))
    return first["settings"]["lr"] if first.get("verdict") == regimes.VALID else False


def skipped_unit(method: str, seed: int) -> dict:
    return {"skipped": f"{method} found no valid operating point with its first seed; seed {seed} not run"}


def _store_unit(ctx: RunContext, settings, method: str, seed: int, payload: dict) -> None:
    ctx.workspace.save_artifact(ctx.run_id, outcomes.curve_artifact(method, seed, settings.seeds), payload)
    ctx.workspace.save_artifact(ctx.run_id, "timings", ctx.timings)


def cud_subset(cud: dict[str, float], subset: str, k: int) -> list[str]:
    """The ids of the `k` samples with the lowest CUD (`subset` "easiest") or the highest ("hardest"), in
    ascending CUD order; samples without a CUD (NaN) rank after the highest."""
    if subset not in ("easiest", "hardest"):
        raise ValueError(f"unknown subset {subset!r}; choose easiest or hardest")
    ranked = sorted(cud, key=lambda i: (math.isnan(cud[i]), cud[i]))
    return ranked[:k] if subset == "easiest" else ranked[-k:]
