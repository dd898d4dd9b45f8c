"""The calibration job: unlearn, label, build anchors, score CUD out-of-fold, and validate it.

Stages (each resumable; finished stages are read back from the workspace):
1. score the forget set (edge scores, circuits, per-sample metrics) — a normal scoring run;
2. run each unlearning method with each seed on a copy of the model, keep its forgetting curves;
3. baseline predictors (MRD, gradient norm);
4. cross-fitted CUD and its validation (`validation/`): labels and anchors from the other folds only,
   bootstrap CIs, paired comparisons with the baselines, a permutation null, the reliability
   ceiling across seeds, the paper's in-sample numbers beside them;
5. anchors from all labelled samples are saved for scoring *new* samples before any unlearning.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from safetensors import safe_open

from cud_core.data.samples import Sample
from cud_core.difficulty.analysis import Inputs, Settings, analyse
from cud_core.difficulty.cud import SIMILARITIES, tercile_buckets
from cud_core.difficulty.predictors import (
    HIDDEN_DEFINITION,
    MRD_ANSWER_DEFINITION,
    MRD_DEFINITION,
    MRD_DRAWS,
    gradient_norms,
    hidden_state_means,
    mrd,
)
from cud_core.difficulty.regimes import PROTOCOL, Protocol
from cud_core.difficulty.regimes import sentence as regimes_sentence
from cud_core.difficulty.summary import summary_rows
from cud_core.engine.graph import Graph
from cud_core.engine.memory import check_unlearning
from cud_core.engine.models import adopt_legacy_runs, model_fingerprint
from cud_core.engine.stopping import Interrupted, interruptible
from cud_core.pipeline import outcomes
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.forget_sets import unlearn_sets
from cud_core.pipeline.outcomes import kept, load_outcomes, load_regimes, load_units, parts, pooled
from cud_core.pipeline.scoring import RUN_KIND as SCORE_KIND
from cud_core.pipeline.scoring import ScoreSettings, content_hash, score_run
from cud_core.pipeline.scoring import run_config as score_config
from cud_core.pipeline.unlearning import UnlearnSettings, calibration_runs, held_out
from cud_core.store.score_files import load_circuits, load_edge_scores, stored_ids
from cud_core.store.workspace import Workspace
from cud_core.unlearn import LABEL_METHODS, METHODS
from cud_core.unlearn.runner import NonFiniteLoss, check_settings, holdout_rouge

RUN_KIND = outcomes.RUN_KIND  # "calibrate"
ANCHORS = ("consensus", "per-method")


@dataclass
class CalibrationSettings:
    """A calibration's settings (`presets.DEFAULT` holds its defaults). Its unlearning runs default to a single
    run's settings (`UnlearnSettings`) but for `eval_every`; its validation to the analysis's (`Settings`)."""
    methods: tuple[str, ...] = LABEL_METHODS
    steps: int = UnlearnSettings.steps
    lr: float | None = UnlearnSettings.lr
    # coarser than a single run's: K methods × seeds runs, evaluations ~half a run's cost; forgotten_at's resolution
    eval_every: int = 10
    batch_size: int = UnlearnSettings.batch_size
    seed: int = Settings.seed       # folds, bootstrap, permutations, MRD noise
    seeds: tuple[int, ...] = (0, 1)  # unlearning seeds (data order, retain batches): the reliability ceiling
    q: float = Settings.q           # top/bottom share labelled per method
    folds: int = Settings.folds
    n_boot: int = Settings.n_boot
    n_permutations: int = Settings.n_permutations
    similarity: str = Settings.similarity
    anchors: str = Settings.anchors  # the headline CUD: "consensus" or "per-method" anchors (both always computed)
    forgotten_threshold: float = 0.1
    # evaluations between unlearning checkpoints (0: none); not in the run's key
    checkpoint_every: int = UnlearnSettings.checkpoint_every
    diff_circuits: bool = False     # re-attribute each method's unlearned copy (first seed); not in the run's key
    # each run at its operating point (`regimes`); None: every run to `steps`, every method votes (no evidence)
    protocol: Protocol | None = PROTOCOL
    preset: str = ""                # "demo": numbers carry no evidence (see presets.py)
    # > 1: the forget set cut into this many disjoint sets matched on the original NLL, each unlearned on its
    # own, outcomes pooled (`forget_sets`); 1: the whole forget set in each run
    forget_sets: int = 1
    # no greedy generation (ROUGE-L) in its scoring: nothing in a calibration reads it
    score: ScoreSettings = field(default_factory=lambda: ScoreSettings(generation=False))

    def validate(self):
        """ValueError naming the first unusable setting; called before any model work."""
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown unlearning method(s) {', '.join(unknown) or '(none given)'}; "
                             f"choose from {', '.join(METHODS)}")
        for method in self.methods:
            check_settings(method, self.steps, self.lr, self.eval_every, self.batch_size,
                           checkpoint_every=self.checkpoint_every)
        if not 0 < self.q <= 0.5:  # also false for NaN
            raise ValueError(f"q must be in (0, 0.5], got {self.q!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or \
                not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in self.seeds):
            raise ValueError(f"seeds must be distinct whole numbers ≥ 0, got {list(self.seeds)!r}")
        for name, low in (("folds", 2), ("n_boot", 100), ("n_permutations", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be a whole number ≥ {low}, got {value!r}")
        if self.anchors not in ANCHORS:
            raise ValueError(f"anchors must be one of {', '.join(ANCHORS)}, got {self.anchors!r}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {self.similarity!r}; choose one of {', '.join(SIMILARITIES)}")
        if self.protocol is not None and self.protocol.threshold != self.forgotten_threshold:
            raise ValueError(f"the protocol's forgotten threshold ({self.protocol.threshold}) differs from the "
                             f"calibration's ({self.forgotten_threshold})")
        if not 0 < self.forgotten_threshold < 1:
            raise ValueError(f"the forgotten threshold must be in (0, 1), got {self.forgotten_threshold!r}")
        if not isinstance(self.forget_sets, int) or isinstance(self.forget_sets, bool) or self.forget_sets < 1:
            raise ValueError(f"forget sets must be a whole number ≥ 1, got {self.forget_sets!r}")
        if self.forget_sets > 1 and self.diff_circuits:
            raise ValueError("--diff-circuits re-attributes one unlearned copy of the whole forget set: run it "
                             "without --forget-sets")
        self.score.validate()

    def unlearning(self) -> dict:
        """The settings every unlearning run of this calibration shares."""
        return {"steps": self.steps, "lr": self.lr, "eval_every": self.eval_every, "batch_size": self.batch_size,
                "checkpoint_every": self.checkpoint_every}

    def config(self) -> dict:
        d = asdict(self)
        d["methods"] = list(self.methods)
        d["seeds"] = list(self.seeds)
        del d["checkpoint_every"]  # how often progress is saved does not change the results
        del d["diff_circuits"]     # an extra artifact; the results do not depend on it
        if self.forget_sets == 1:  # the key of every calibration made before forget sets existed
            del d["forget_sets"]
        d["hyper"] = {m: METHODS[m].resolve({}) for m in self.methods}  # the methods' defaults at run time
        d["protocol"] = self.protocol.as_dict() if self.protocol is not None else None
        return d


def split_holdout(retain: list[Sample], settings: CalibrationSettings) -> tuple[list[Sample], list[Sample]]:
    """(the retain samples unlearning trains on, the held-out ones it only evaluates): a seeded sample of
    `unlearning.HOLDOUT` (at most a quarter) of `retain` is held out when the calibration follows a protocol."""
    if settings.protocol is None:
        return retain, []
    train, held = held_out(retain, settings.seed)
    if not held:
        raise ValueError(f"the operating-point protocol needs at least 4 retain samples (one held out for "
                         f"utility), got {len(retain)}")
    return train, held


def calibrate(ctx: RunContext, forget: list[Sample], retain: list[Sample], settings: CalibrationSettings) -> str:
    """Run (or resume) a calibration of `ctx.lm` into `ctx.workspace`; returns its run id. `ctx.executor`
    (cud_core.pipeline.executor): where the scoring batches and unlearning runs go (default: this process)."""
    lm, workspace, dataset, executor = ctx.lm, ctx.workspace, ctx.dataset, ctx.executor
    settings.validate()
    if len(forget) < 4 * settings.forget_sets:
        raise ValueError(f"calibration needs at least 4 forget samples per forget set, got {len(forget)} for "
                         f"{settings.forget_sets}")
    check_unlearning(lm, forget + retain, settings.batch_size)
    if settings.diff_circuits and executor is not None and executor.remote:
        raise ValueError("--diff-circuits needs the unlearned copies in this process: run it without "
                         "--executor ray (or re-attribute single runs with `unlearn --diff-circuits`)")
    adopt_legacy_runs(workspace, lm.model)
    config = run_config(lm, forget, retain, settings)
    with workspace.run_lock(RUN_KIND, lm.name, dataset, config, on_wait=lambda m: ctx.report(0.0, m),
                            should_stop=ctx.should_stop) as acquired:
        run_id = workspace.find_run(RUN_KIND, lm.name, dataset, config)
        if not acquired:
            return run_id
        if run_id is None:
            run_id = workspace.create_run(RUN_KIND, lm.name, dataset, config)
            workspace.save_samples(run_id, forget)
        workspace.set_status(run_id, "running")
        try:
            _calibrate(ctx.but(run_id=run_id, timings=workspace.load_artifact(run_id, "timings", {})), forget, retain,
                       settings)
        except Exception as exc:
            if isinstance(exc, NonFiniteLoss):  # a rerun would diverge again from the same checkpoint
                workspace.remove_checkpoints(run_id)
            workspace.set_status(run_id, "failed", str(exc) if isinstance(exc, NonFiniteLoss)
                                 else f"{type(exc).__name__}: {exc}"[:500])
            raise
    return run_id


def run_config(lm, forget, retain, settings: CalibrationSettings) -> dict:
    """What a calibration is found (and resumed) by."""
    return {**settings.config(), "forget": content_hash(forget), "retain": content_hash(retain),
            "model_fingerprint": model_fingerprint(lm.model)}


def pending(lm, forget, retain, settings: CalibrationSettings, workspace: Workspace, dataset: str) -> dict:
    """What a (re)started calibration still has to do, read from the workspace without changing it:
    {"scored": forget samples already scored (edge scores stored), "stored": (method, seed) runs it has
    complete (the curve and, when re-attributed, the circuit diff), "reusable": runs another calibration
    has (`reuse.donors`; a two-step check each), "to_run", "predictors": stored under the current
    definitions, "stale": the predictor groups stored under another definition or missing (rerunning
    recomputes them and the validation), "done": nothing left to do}."""
    adopt_legacy_runs(workspace, lm.model)
    score_id = workspace.find_run(SCORE_KIND, lm.name, dataset,
                                  score_config(lm, forget, settings.score, forget + retain))
    run_id = workspace.find_run(RUN_KIND, lm.name, dataset, config := run_config(lm, forget, retain, settings))
    todo = outcomes.left(workspace, run_id, settings)
    run = {"model": lm.name, "dataset": dataset, "config": config}
    reusable = [u for u in todo if next(outcomes.donors(workspace, run, settings, *u, exclude=run_id), None)]
    scored = len(stored_ids(workspace, score_id)) if score_id else 0
    predictors = bool(run_id) and workspace.load_artifact(run_id, "predictors") is not None
    stale = stale_predictors(workspace, run_id) if predictors else []
    return {"scored": scored, "stored": [u for u in outcomes.units(settings) if u not in todo], "reusable": reusable,
            "to_run": [u for u in todo if u not in reusable],
            "done": bool(run_id) and workspace.get_run(run_id)["status"] == "done" and not stale
                    and scored == len(forget),
            "predictors": predictors and not stale, "stale": stale}


# the predictors computed from the model (not from the scoring), by group; a group whose stored definition
# differs (or that is missing) is recomputed when a calibration is rerun, the others are kept
PREDICTOR_DEFINITIONS = {"mrd": MRD_DEFINITION, "mrd_answer": MRD_ANSWER_DEFINITION, "hidden": HIDDEN_DEFINITION}
GROUPS = {"mrd": ("mrd", "mrd_answer"), "hidden": ("hidden",)}


def stale_predictors(workspace: Workspace, run_id: str) -> list[str]:
    """The predictor groups ("mrd", "hidden") stored under another definition than the current one, or
    not stored at all (hidden states live in a tensor file of their own)."""
    defs = workspace.load_artifact(run_id, "predictor_definitions", {})
    out = [g for g, names in GROUPS.items() if any(defs.get(n) != PREDICTOR_DEFINITIONS[n] for n in names)]
    if "hidden" not in out and not workspace.tensor_path(run_id, "hidden").is_file():
        out.append("hidden")
    return out


def load_hidden(workspace: Workspace, run_id: str) -> dict:
    """Sample id -> [layers, d] hidden-state means stored with the calibration ({} when absent)."""
    path = workspace.tensor_path(run_id, "hidden")
    if not path.is_file():
        return {}
    with safe_open(str(path), "pt") as f:
        ids = json.loads(f.metadata()["ids"])
    return dict(zip(ids, workspace.load_tensors(run_id, "hidden")["hidden"]))


def _calibrate(ctx: RunContext, forget, retain, settings) -> None:
    """The stages of calibration `ctx.run_id` (`ctx.timings`: its stored timings)."""
    lm, workspace, run_id, timings, report = ctx.lm, ctx.workspace, ctx.run_id, ctx.timings, ctx.report
    workspace.remove_temp_files(run_id)
    graph = Graph.from_model(lm.model)

    # 1. circuits of the forget set
    t = time.time()
    score_id = score_run(ctx.within(0.0, 0.3, "scoring: "), forget, settings.score,
                         extra_config={"calibration": run_id}, reference=forget + retain)
    if score_id is None or workspace.get_run(score_id)["status"] != "done" or ctx.stop_run():
        workspace.set_status(run_id, "stopped", "stopped while scoring; rerun to resume")
        return
    timings.setdefault("scoring_s", round(time.time() - t, 1))
    workspace.save_artifact(run_id, "score_run", score_id)

    # 2. unlearning runs: every method with every seed
    train_retain, holdout = split_holdout(retain, settings)
    if holdout and workspace.load_artifact(run_id, "holdout_original") is None:  # the original's, once
        report(0.3, f"held-out utility: the original model's greedy answers to {len(holdout)} held-out facts")
        try:
            with interruptible(lm.model, ctx.should_stop):
                rouge = holdout_rouge(lm.model, lm.tokenizer, holdout, settings.batch_size)
        except Interrupted:
            ctx.stop_run()
            return
        workspace.save_artifact(run_id, "holdout_original", {"ids": [s.id for s in holdout], "rouge_l": rouge})
    if settings.forget_sets > 1:
        done = unlearn_sets(ctx, forget, train_retain, holdout, settings,
                            {i: r["answer_nll"] for i, r in workspace.load_results(score_id).items()},
                            lambda samples, s: run_config(lm, samples, retain, s))
    else:
        done = calibration_runs(ctx, forget, train_retain, holdout, settings)
    if not done:
        return

    # 3. baseline predictors (a group stored under another definition of it is recomputed, the rest kept)
    predictors = workspace.load_artifact(run_id, "predictors")
    stale = stale_predictors(workspace, run_id) if predictors is not None else list(GROUPS)
    if predictors is None or "gradient_norm" not in predictors or stale:
        if ctx.stop_run():
            return
        t = time.time()
        predictors = dict(predictors or {})
        try:
            with interruptible(lm.model, ctx.should_stop):
                if "mrd" in stale:
                    report(0.85, f"baseline predictors: MRD ({MRD_DRAWS} noise draws over {len(forget)} samples)")
                    predictors.update(mrd(lm.model, lm.tokenizer, forget, seed=settings.seed,
                                          batch_size=settings.batch_size, progress=lambda f, m: report(
                                              0.85 + 0.004 * f, f"baseline predictors: MRD, {m}")))
                if "gradient_norm" not in predictors:
                    report(0.854, f"baseline predictors: gradient norms ({len(forget)} samples)")
                    predictors["gradient_norm"] = gradient_norms(lm.model, lm.tokenizer, forget, progress=lambda f, m: (
                        report(0.854 + 0.004 * f, f"baseline predictors: gradient norms, {m}")))
                if "hidden" in stale:
                    report(0.858, f"baseline predictors: hidden states ({len(forget)} samples)")
                    hidden = hidden_state_means(lm.model, lm.tokenizer, forget, settings.batch_size)
                    workspace.save_tensors(run_id, "hidden", {"hidden": torch.stack([hidden[s.id] for s in forget])},
                                           {"ids": json.dumps([s.id for s in forget]), "definition": HIDDEN_DEFINITION})
        except Interrupted:
            ctx.stop_run()
            return
        workspace.save_artifact(run_id, "predictors", predictors)
        workspace.save_artifact(run_id, "predictor_definitions", dict(PREDICTOR_DEFINITIONS))
        key = "predictors_recomputed_s" if "predictors_s" in timings else "predictors_s"
        timings[key] = round(time.time() - t, 1)
        workspace.save_artifact(run_id, "timings", timings)

    # 4–5. labels, anchors, out-of-fold CUD and its validation
    report(0.86, "labels, anchors, out-of-fold CUD and validation")  # 86–99%
    t = time.time()
    _finish(forget, settings, workspace, run_id, score_id, graph, predictors,
            lambda f, m: report(0.86 + 0.13 * f, f"validation: {m}"))
    timings.setdefault("cud_and_validation_s", round(time.time() - t, 1))  # a rerun keeps the first timing
    workspace.save_artifact(run_id, "timings", timings)
    workspace.remove_checkpoints(run_id)  # e.g. one a kill left between storing a curve and removing it
    workspace.set_status(run_id, "done", f"{len(forget)} forget samples, {len(settings.methods)} methods × "
                                         f"{len(settings.seeds)} seeds")
    report(1.0, "calibration done")


def _finish(forget, settings, workspace, run_id, score_id, graph, predictors, report):
    config = settings.config()
    # a pooled calibration counts the forget sets where every method reached a valid point (`outcomes.kept`)
    sets = list(zip(parts(workspace, run_id), kept(workspace, run_id, config["methods"]))) if pooled(config) else []
    ids = [i for (part, _), ok in sets if ok for i in part] if sets else [s.id for s in forget]
    scored = workspace.load_results(score_id)
    edge_scores = load_edge_scores(workspace, score_id, graph.n_edges)
    circuits = load_circuits(workspace, score_id, graph.n_edges)
    units = load_units(workspace, run_id, config)  # every unit's curve, read once
    outcomes, steps = load_outcomes(workspace, run_id, config, units)
    regimes = load_regimes(workspace, run_id, config, units)
    if not outcomes:  # a negative result: stored as a report of the regimes alone; the run fails
        workspace.save_artifact(run_id, "validation_report", {
            "n_forget": len(ids), "steps": settings.steps, "methods": list(settings.methods),
            "seeds": list(settings.seeds),
            "protocol": config["protocol"], "regimes": regimes, "voting_methods": [], "hyper": config["hyper"],
            "verdict": f"No unlearning method reached a valid operating point within {settings.steps} steps "
                       f"({_why(regimes)}): there are no labels, so CUD cannot be validated at this budget."})
        raise ValueError(f"no unlearning method reached a valid operating point ({_why(regimes)}): nothing to "
                         f"label; `report --run {run_id}` shows the regimes, or run more steps")
    baselines = {
        "original_nll": {i: scored[i]["answer_nll"] for i in ids},
        "extraction_strength": {i: scored[i]["extraction_strength"] for i in ids},
        "circuit_depth": {i: scored[i]["circuit"]["depth_com"] for i in ids},
        "longest_path": {i: scored[i]["circuit"]["longest_path"] for i in ids},
        **predictors,
    }
    s = settings.score
    inputs = Inputs(ids, outcomes, steps, baselines, edge_scores, circuits, graph, load_hidden(workspace, run_id))
    vs = Settings(q=settings.q, folds=settings.folds, seed=settings.seed, binarise=s.binarise, n_edges=s.n_edges,
                  similarity=settings.similarity, n_boot=settings.n_boot, n_permutations=settings.n_permutations,
                  anchors=settings.anchors)
    result = analyse(inputs, vs, progress=report)
    per_sample = result.pop("per_sample")
    result["hyper"] = config["hyper"]  # every method's hyper-parameters, stored with the numbers
    result["protocol"], result["regimes"] = config["protocol"], regimes
    result["voting_methods"] = sorted(outcomes)
    if sets:  # the sizes of the forget sets, each unlearned on its own, and which counted
        result["forget_sets"] = [{"n": len(part), "kept": ok} for (part, _), ok in sets]
    if regimes:
        result["verdict"] += " " + regimes_sentence(regimes)
    result["predictor_definitions"] = workspace.load_artifact(run_id, "predictor_definitions", {})
    labels = {i: v["label"] for i, v in per_sample.items() if v["label"]}
    # anchors from every label: only for scoring *new* samples (in-sample for these ones); the consensus
    # pair as "anchors" (when the labels have both classes), each method's own as "anchors-METHOD"
    built = result.pop("anchors_all")
    if built["consensus"] is not None:  # else the report says why consensus CUD is missing
        built["consensus"].save(workspace, run_id)
    for method, a in built["per-method"].items():
        a.save(workspace, run_id, f"anchors-{method}")
    workspace.save_artifact(run_id, "validation_report", result)
    workspace.save_artifact(run_id, "validation", summary_rows(result))
    workspace.save_artifact(run_id, "labels", {"all": labels})
    shown = {i: v["cud"] for i, v in per_sample.items()}  # the headline CUD (`--anchors`), out-of-fold
    buckets = tercile_buckets(shown)
    realised = {m: {i: _seed_mean([r[i] for r in by_seed.values()]) for i in ids} for m, by_seed in outcomes.items()}
    workspace.save_results(run_id, {i: {
        "cud": shown[i], "cud_oof": shown[i], "cud_oof_consensus": per_sample[i]["cud_oof"],
        "cud_oof_per_method": per_sample[i]["cud_per_method"], "fold": per_sample[i]["fold"],
        "cud_in_sample": per_sample[i]["cud_in_sample"], "bucket": buckets[i], "label": labels.get(i),
        "realised": {m: realised[m][i] for m in realised},
        "predictors": {k: v.get(i) for k, v in baselines.items()},
    } for i in ids})


def _why(regimes: dict) -> str:
    return "; ".join(f"{m}: " + ", ".join(f"lr {x['lr']:.2g} {x['verdict']}" for x in r["search"])
                     for m, r in regimes.items())


def _seed_mean(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in ("nll_after", "delta_nll", "forgotten_at")}


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no validation table)"
    cols = [c for c in rows[0] if c not in ("high_means",)]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    widths = [max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(fmt(r[c]).ljust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)


def export_rows(workspace: Workspace, run_id: str) -> list[dict]:
    """The per-sample table: id, question, out-of-fold CUD (and the in-sample one, labelled so), fold,
    bucket, label, realised difficulty per method (mean over seeds), predictors."""
    run = workspace.get_run(run_id)
    if run is None:
        raise ValueError(f"no run {run_id!r} in {workspace.root}")
    samples = {s.id: s for s in workspace.load_samples(run_id)}
    out = []
    for sid, r in workspace.load_results(run_id).items():
        row = {"id": sid, "question": samples[sid].question, "answer": samples[sid].answer,
               "cud_oof": r.get("cud_oof"), "fold": r.get("fold"), "cud_in_sample": r.get("cud_in_sample"),
               "bucket": r.get("bucket"), "label": r.get("label")}
        for method, d in (r.get("realised") or {}).items():
            row[f"nll_after_{method}"] = d["nll_after"]
            row[f"delta_nll_{method}"] = d["delta_nll"]
            row[f"forgotten_at_{method}"] = d["forgotten_at"]
        row.update(r.get("predictors") or {})
        out.append(row)
    return out
