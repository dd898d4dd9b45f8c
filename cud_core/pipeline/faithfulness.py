"""Faithfulness of the anchor circuits against circuit size, for the report.

For a finished calibration: the easy and the hard anchor's mean edge scores, cut greedily at
n = 10 … 10,000 edges, each applied to every member of its set (the sample's own prompt) and ablated
outside the circuit with zero and with mean activations (means over up to 32 forget samples);
`cud_core.engine.circuits.faithfulness_curve` does the patching. Stored as the calibration's artifact
"faithfulness_anchors": {"easy": curve, "hard": curve, "n_members": {...}}.

For one scored sample (the Circuit page): the faithfulness of its circuit, and its own curve against
circuit size, stored as the scoring run's artifact `curve_artifact(sample id)`.
"""
from __future__ import annotations

from cud_core.difficulty.cud import Anchors
from cud_core.engine.circuits import (
    FAITHFULNESS_SIZES,
    ablation_means,
    faithfulness,
    faithfulness_curve,
    from_vector,
)
from cud_core.engine.graph import Graph
from cud_core.engine.stopping import interruptible
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.executor import run_units

ARTIFACT = "faithfulness_anchors"


def anchor_faithfulness(ctx: RunContext, sizes=FAITHFULNESS_SIZES, max_members: int | None = None) -> dict | None:
    """Compute, store and return the anchors' faithfulness curves of calibration `ctx.run_id` (`ctx.lm` is
    the calibration's model; `max_members` caps the members per anchor, in id order). Each anchor ×
    ablation curve is one unit of `ctx.executor` (default: here); None when stopped."""
    lm, workspace, run_id, progress = ctx.lm, ctx.workspace, ctx.run_id, ctx.progress
    graph = Graph.from_model(lm.model)
    anchors = Anchors.load(workspace, run_id)
    labels = workspace.load_artifact(run_id, "labels", {}).get("all", {})
    samples = workspace.load_samples(workspace.load_artifact(run_id, "score_run"))
    means = ablation_means(lm.model, lm.tokenizer, samples, graph)
    out = {"n_members": {}, "sizes": list(sizes)}
    units = []
    for side, vector in (("easy", anchors.easy_scores), ("hard", anchors.hard_scores)):
        members = sorted((s for s in samples if labels.get(s.id) == side), key=lambda s: s.id)[:max_members]
        out["n_members"][side] = len(members)
        units += [(side, baseline, members, vector) for baseline in ("zero", "mean")]
    curves = []
    for k, curve in enumerate(run_units(ctx.executor, lm, curve_unit, units, shared=(graph, list(sizes), means),
                                        should_stop=ctx.should_stop, progress=progress and (lambda m: progress(
                                            len(curves) / len(units), m)))):
        curves.append(curve)
        if progress:
            progress(len(curves) / len(units), f"{units[k][0]} anchor, {units[k][1]} ablation done")
    if len(curves) < len(units):
        return None
    for (side, baseline, _, _), curve in zip(units, curves):
        merged = out.setdefault(side, {"sizes": curve["sizes"], "edges": curve["edges"], "reaches": {}})
        merged[baseline] = curve[baseline]
        merged["reaches"][baseline] = curve["reaches"][baseline]
    workspace.save_artifact(run_id, ARTIFACT, out)
    return out


def curve_unit(lm, unit, shared) -> dict:
    """One anchor's faithfulness curve under one ablation, over its members (an executor's unit)."""
    side, baseline, members, vector = unit
    graph, sizes, means = shared
    scores = from_vector(vector, graph)
    return faithfulness_curve(lm.model, lm.tokenizer, members, [scores] * len(members), graph, sizes=sizes,
                              baselines=(baseline,), means=means)


def _reached(n):
    """The smallest n reaching a level, or "never" (None)."""
    return "never" if n is None else int(n)


def rows(f: dict) -> list[dict]:
    """One row per anchor and ablation: where faithfulness first reaches 0.5 and 0.8, and its value at 75 edges."""
    out = []
    for side in ("easy", "hard"):
        curve = f.get(side)
        if not curve:
            continue
        for baseline in ("zero", "mean"):
            at75 = dict(zip(curve["sizes"], curve[baseline])).get(75)
            out.append({"anchor": f"{side} ({f['n_members'][side]} members)", "ablation": baseline,
                        "n reaching 0.5": _reached(curve["reaches"][baseline]["0.5"]),
                        "n reaching 0.8": _reached(curve["reaches"][baseline]["0.8"]),
                        "faithfulness at 75 edges": "–" if at75 is None else f"{at75:.2f}"})
    return out


def curve_artifact(sample_id: str) -> str:
    """The scoring run's artifact that holds a sample's faithfulness curve."""
    return f"faithfulness-curve-{sample_id}"


def _sample(workspace, run_id: str, sample_id: str):
    return next(s for s in workspace.load_samples(run_id) if s.id == sample_id)


def sample_faithfulness(lm, workspace, run_id: str, sample_id: str, circuit) -> dict:
    """`faithfulness` of `circuit` on sample `sample_id` of scoring run `run_id`, every edge outside the
    circuit ablated with the zero baseline."""
    return faithfulness(lm.model, lm.tokenizer, _sample(workspace, run_id, sample_id), circuit,
                        Graph.from_model(lm.model), baseline="zero")


def sample_faithfulness_curve(ctx: RunContext, sample_id: str, scores) -> dict:
    """Faithfulness against circuit size of sample `sample_id` of scoring run `ctx.run_id`: greedy circuits
    cut from its edge `scores` (a score matrix) at every size of FAITHFULNESS_SIZES the graph holds,
    ablated with zero and with mean activations (means over the run's first samples). Stored as the
    run's artifact `curve_artifact(sample_id)` and returned; a Stop ends it within a model pass
    (`engine.stopping.Interrupted`)."""
    lm, workspace = ctx.lm, ctx.workspace
    scored = workspace.load_samples(ctx.run_id)
    sample = next(s for s in scored if s.id == sample_id)
    graph = Graph.from_model(lm.model)
    with interruptible(lm.model, ctx.should_stop):
        ctx.report(0.0, "mean activations of the scored samples")
        means = ablation_means(lm.model, lm.tokenizer, scored, graph)
        curve = faithfulness_curve(lm.model, lm.tokenizer, [sample], [scores], graph, means=means,
                                   progress=ctx.progress)
    workspace.save_artifact(ctx.run_id, curve_artifact(sample_id), curve)
    return curve
