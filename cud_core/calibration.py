"""The calibration job: unlearn, label, build anchors, score CUD, and validate it (SPEC §6).

Stages (each resumable; finished stages are read back from the workspace):
1. score the forget set (edge scores, circuits, per-sample metrics) — a normal scoring run;
2. run each unlearning method on a copy of the model, keep its forgetting curves;
3. baseline predictors (MRD, gradient norm);
4. split the forget set into a calibration and a held-out part; label easy/hard on the calibration
   part, build anchors there, score CUD on the held-out part and compare with realised difficulty
   (Spearman per method, AUROC easy vs hard) next to the baseline predictors;
5. anchors from all labelled samples are saved for scoring new samples before any unlearning.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .cud import build_anchors, label_easy_hard, realised_difficulty, tercile_buckets
from .data import Sample
from .graph import Graph
from .predictors import gradient_norms, mrd
from .scoring import ScoreSettings, load_circuits, load_edge_scores, score_run
from .stopping import Interrupted, interruptible
from .store import Workspace
from .unlearn import LABEL_METHODS, METHODS, run_unlearning
from .unlearn.runner import NonFiniteLoss, check_settings

RUN_KIND = "calibrate"
PREDICTORS = ("cud", "original_nll", "mrd", "extraction_strength", "gradient_norm", "circuit_depth")
# what a high value of each predictor is expected to mean, for reading the validation table
EXPECTED_DIRECTION = {"cud": "hard", "original_nll": "easy", "mrd": "hard", "extraction_strength": "hard",
                      "gradient_norm": "easy", "circuit_depth": "hard"}


@dataclass
class CalibrationSettings:
    methods: tuple[str, ...] = LABEL_METHODS
    steps: int = 30
    lr: float | None = None
    eval_every: int = 5
    batch_size: int = 8
    seed: int = 0
    q: float = 0.125
    calibration_fraction: float = 0.5
    similarity: str = "cosine"
    forgotten_threshold: float = 0.1
    checkpoint_every: int = 1       # evaluations between unlearning checkpoints (0: none); not in the run's key
    preset: str = ""                # "demo": numbers carry no evidence (see presets.py)
    score: ScoreSettings = field(default_factory=ScoreSettings)

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
        if not 0 < self.calibration_fraction < 1:
            raise ValueError(f"the calibration fraction must be in (0, 1), got {self.calibration_fraction!r}")
        if not 0 < self.forgotten_threshold < 1:
            raise ValueError(f"the forgotten threshold must be in (0, 1), got {self.forgotten_threshold!r}")
        self.score.validate()

    def config(self) -> dict:
        d = asdict(self)
        d["methods"] = list(self.methods)
        del d["checkpoint_every"]  # how often progress is saved does not change the results
        return d


def calibrate(lm, forget: list[Sample], retain: list[Sample], settings: CalibrationSettings,
              workspace: Workspace, dataset: str, progress: Callable[[float, str], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> str:
    """Run (or resume) a calibration; returns its run id."""
    settings.validate()
    if len(forget) < 4:
        raise ValueError(f"calibration needs at least 4 forget samples, got {len(forget)}")
    from .memory import check_unlearning

    check_unlearning(lm, forget + retain, settings.batch_size)
    report = progress or (lambda f, m: None)
    from .models import model_fingerprint
    from .scoring import content_hash

    config = {**settings.config(), "forget": content_hash(forget), "retain": content_hash(retain),
              "model_fingerprint": model_fingerprint(lm.model)}
    with workspace.run_lock(RUN_KIND, lm.name, dataset, config, on_wait=lambda m: report(0.0, m),
                            should_stop=should_stop) as acquired:
        run_id = workspace.find_run(RUN_KIND, lm.name, dataset, config)
        if not acquired:
            return run_id
        if run_id is None:
            run_id = workspace.create_run(RUN_KIND, lm.name, dataset, config)
            workspace.save_samples(run_id, forget)
        workspace.set_status(run_id, "running")
        try:
            _calibrate(lm, forget, retain, settings, workspace, dataset, run_id, report, should_stop)
        except Exception as exc:
            if isinstance(exc, NonFiniteLoss):  # a rerun would diverge again from the same checkpoint
                workspace.remove_checkpoints(run_id)
            workspace.set_status(run_id, "failed", str(exc) if isinstance(exc, NonFiniteLoss)
                                 else f"{type(exc).__name__}: {exc}"[:500])
            raise
    return run_id


def _calibrate(lm, forget, retain, settings, workspace, dataset, run_id, report, should_stop) -> None:
    workspace.remove_temp_files(run_id)
    timings = workspace.load_artifact(run_id, "timings", {})
    graph = Graph.from_model(lm.model)

    def stopped():
        if should_stop and should_stop():
            workspace.set_status(run_id, "stopped", "stopped by the user; rerun to resume")
            return True
        return False

    # 1. circuits of the forget set
    t = time.time()
    score_id = score_run(lm, forget, settings.score, workspace, dataset,
                         progress=lambda f, m: report(0.3 * f, f"scoring: {m}"), should_stop=should_stop,
                         extra_config={"calibration": run_id}, reference=forget + retain)
    if score_id is None or workspace.get_run(score_id)["status"] != "done" or stopped():
        workspace.set_status(run_id, "stopped", "stopped while scoring; rerun to resume")
        return
    timings.setdefault("scoring_s", round(time.time() - t, 1))
    workspace.save_artifact(run_id, "score_run", score_id)

    # 2. unlearning runs
    for i, method in enumerate(settings.methods):
        if workspace.load_artifact(run_id, f"curve-{method}") is not None:
            continue
        if stopped():
            return
        t = time.time()
        base = 0.3 + 0.55 * i / len(settings.methods)
        checkpoint = workspace.checkpoint_path(run_id, method)
        report(base, f"unlearning with {method} ({i + 1}/{len(settings.methods)}): evaluating step 0")
        result = run_unlearning(
            lm.model, lm.tokenizer, forget, retain, method, steps=settings.steps, lr=settings.lr,
            eval_every=settings.eval_every, seed=settings.seed, batch_size=settings.batch_size,
            callback=lambda e, base=base, method=method: (workspace.touch(run_id), report(
                base + 0.55 / len(settings.methods) * e["step"] / max(1, settings.steps),
                f"unlearning with {method}: step {e['step']}/{settings.steps}")),
            should_stop=should_stop, checkpoint=checkpoint, checkpoint_every=settings.checkpoint_every)
        if result.stopped:
            workspace.set_status(run_id, "stopped", f"stopped during {method}; rerun to resume")
            return
        workspace.save_artifact(run_id, f"curve-{method}", {
            "settings": result.settings, "steps": result.steps, "elapsed": result.elapsed, "curve": result.curve,
            "prob_curve": result.prob_curve, "retain_curve": result.retain_curve, "losses": result.losses})
        checkpoint.unlink(missing_ok=True)
        timings[f"unlearn_{method}_s"] = round(time.time() - t, 1)
        workspace.save_artifact(run_id, "timings", timings)
        del result

    # 3. baseline predictors
    predictors = workspace.load_artifact(run_id, "predictors")
    if predictors is None:
        if stopped():
            return
        t = time.time()
        try:
            with interruptible(lm.model, should_stop):
                report(0.86, "baseline predictors: MRD")
                mrd_values = mrd(lm.model, lm.tokenizer, forget, seed=settings.seed, batch_size=settings.batch_size)
                report(0.92, "baseline predictors: gradient norms")
                grad_values = gradient_norms(lm.model, lm.tokenizer, forget)
        except Interrupted:
            stopped()
            return
        predictors = {"mrd": mrd_values, "gradient_norm": grad_values}
        workspace.save_artifact(run_id, "predictors", predictors)
        timings["predictors_s"] = round(time.time() - t, 1)

    # 4–5. labels, anchors, CUD, validation
    report(0.97, "labels, anchors, CUD and validation")
    t = time.time()
    _finish(lm, forget, settings, workspace, run_id, score_id, graph, predictors)
    timings["cud_and_validation_s"] = round(time.time() - t, 1)
    workspace.save_artifact(run_id, "timings", timings)
    workspace.remove_checkpoints(run_id)  # e.g. one a kill left between storing a curve and removing it
    workspace.set_status(run_id, "done", f"{len(forget)} forget samples, {len(settings.methods)} methods")
    report(1.0, "calibration done")


def _finish(lm, forget, settings, workspace, run_id, score_id, graph, predictors):
    ids = [s.id for s in forget]
    scored = workspace.load_results(score_id)
    edge_scores = load_edge_scores(workspace, score_id, graph.n_edges)
    circuits = load_circuits(workspace, score_id, graph.n_edges)
    realised = {}
    for method in settings.methods:
        c = workspace.load_artifact(run_id, f"curve-{method}")
        realised[method] = realised_difficulty(c["curve"], c["prob_curve"], c["steps"], settings.forgotten_threshold)
    nll_after = {m: {s: r[s]["nll_after"] for s in ids} for m, r in realised.items()}

    rng = random.Random(settings.seed)
    shuffled = ids[:]
    rng.shuffle(shuffled)
    n_cal = max(2, min(len(ids) - 2, round(settings.calibration_fraction * len(ids))))
    calibration, heldout = sorted(shuffled[:n_cal]), sorted(shuffled[n_cal:])
    workspace.save_artifact(run_id, "split", {"calibration": calibration, "heldout": heldout})

    subset = lambda part: {m: {s: v[s] for s in part} for m, v in nll_after.items()}  # noqa: E731
    labels_cal = label_easy_hard(subset(calibration), settings.q)
    labels_held = label_easy_hard(subset(heldout), settings.q)
    labels_all = label_easy_hard(nll_after, settings.q)
    s = settings.score
    anchors_cal = build_anchors(edge_scores, labels_cal, graph, s.binarise, s.n_edges)
    anchors_cal.save(workspace, run_id, "anchors-calibration")
    anchors = build_anchors(edge_scores, labels_all, graph, s.binarise, s.n_edges)
    anchors.save(workspace, run_id)

    cud_all = {i: anchors.score(circuits[i], settings.similarity) for i in ids}
    cud_held = {i: anchors_cal.score(circuits[i], settings.similarity) for i in heldout}
    buckets = tercile_buckets(cud_all)
    values = {
        "cud": cud_held,
        "original_nll": {i: scored[i]["answer_nll"] for i in ids},
        "extraction_strength": {i: scored[i]["extraction_strength"] for i in ids},
        "circuit_depth": {i: scored[i]["circuit"]["depth_com"] for i in ids},
        **predictors,
    }
    table = validation_table(values, nll_after, labels_held, heldout)
    workspace.save_artifact(run_id, "validation", table)
    workspace.save_artifact(run_id, "labels", {"all": labels_all, "calibration": labels_cal, "heldout": labels_held})
    workspace.save_results(run_id, {i: {
        "cud": cud_all[i], "bucket": buckets[i], "cud_heldout": cud_held.get(i),
        "part": "heldout" if i in cud_held else "calibration", "label": labels_all.get(i),
        "realised": {m: realised[m][i] for m in realised},
        "predictors": {k: values[k].get(i) for k in PREDICTORS if k != "cud"},
    } for i in ids})


def validation_table(values: dict[str, dict[str, float]], nll_after: dict[str, dict[str, float]],
                     labels: dict[str, str], heldout: list[str]) -> list[dict]:
    """One row per predictor, on the held-out samples: Spearman with hardness (−NLL after unlearning)
    per method and averaged, and AUROC for held-out hard (1) vs easy (0)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    rows = []
    for name in PREDICTORS:
        v = values.get(name, {})
        ids = [i for i in heldout if v.get(i) is not None]
        row = {"predictor": name, "n_heldout": len(ids), "high_means": EXPECTED_DIRECTION[name]}
        rhos = []
        for method, nll in nll_after.items():
            x, y = [v[i] for i in ids], [-nll[i] for i in ids]
            rho = spearmanr(x, y)[0] if len(ids) > 2 and np.std(x) > 0 and np.std(y) > 0 else float("nan")
            row[f"spearman_{method}"] = float(rho)
            rhos.append(rho)
        finite = [r for r in rhos if np.isfinite(r)]
        row["spearman_mean"] = float(np.mean(finite)) if finite else float("nan")
        lab = [i for i in ids if i in labels]
        y = [1 if labels[i] == "hard" else 0 for i in lab]
        row["n_labelled"] = len(lab)
        row["auroc"] = float(roc_auc_score(y, [v[i] for i in lab])) if 0 < sum(y) < len(y) else float("nan")
        rows.append(row)
    return rows


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
    """The per-sample table: id, question, cud, bucket, realised difficulty per method, predictors."""
    run = workspace.get_run(run_id)
    if run is None:
        raise ValueError(f"no run {run_id!r} in {workspace.root}")
    samples = {s.id: s for s in workspace.load_samples(run_id)}
    out = []
    for sid, r in workspace.load_results(run_id).items():
        row = {"id": sid, "question": samples[sid].question, "answer": samples[sid].answer,
               "cud": r.get("cud"), "bucket": r.get("bucket"), "label": r.get("label"), "part": r.get("part"),
               "cud_heldout": r.get("cud_heldout")}
        for method, d in (r.get("realised") or {}).items():
            row[f"nll_after_{method}"] = d["nll_after"]
            row[f"delta_nll_{method}"] = d["delta_nll"]
            row[f"forgotten_at_{method}"] = d["forgotten_at"]
        row.update(r.get("predictors") or {})
        out.append(row)
    return out
