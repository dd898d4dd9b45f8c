"""Re-attribution of an unlearned copy: the forget samples' edge scores in the
original model and in the model an unlearning run produced, with the same settings, and their diff.

Both sides are ordinary scoring runs (resumable, reused when identical); the unlearned side is
recorded under the model name "<model> unlearned (<run id>)" so that it never shows up as the
original model's scores. The diff of every sample (`circuit_diff.diff`) is stored as an artifact
of the unlearning (or calibration) run.
"""
from __future__ import annotations

from dataclasses import replace

from cud_core.difficulty.circuit_diff import diff, edge_layout
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.scoring import ScoreSettings, score_run
from cud_core.store.score_files import graph_of, load_circuits, load_edge_scores
from cud_core.store.workspace import Workspace

ARTIFACT = "circuit_diff"


def unlearned_name(model_name: str, run_id: str) -> str:
    return f"{model_name} unlearned ({run_id})"


def reattribute(ctx: RunContext, student, samples, settings: ScoreSettings, reference=None,
                artifact: str = ARTIFACT) -> dict | None:
    """Score `samples` in `ctx.lm` and in `student` (the unlearned copy) and store their diff as `artifact`
    of `ctx.run_id`; returns it, or None when stopped (the scoring runs here, whatever `ctx.executor`)."""
    lm, workspace, run_id = ctx.lm, ctx.workspace, ctx.run_id
    settings = replace(settings, generation=False)
    before = score_run(ctx.within(0.0, 0.5, "circuits before unlearning: ").but(executor=None), samples, settings,
                       extra_config={"circuit_diff_of": run_id}, reference=reference)
    if not _done(workspace, before):
        return None
    unlearned = replace(lm, model=student, name=unlearned_name(lm.name, run_id))
    after = score_run(ctx.within(0.5, 0.45, "circuits after unlearning: ").but(lm=unlearned, executor=None), samples,
                      settings, extra_config={"unlearned_by": run_id}, reference=reference)
    if not _done(workspace, after):
        return None
    ctx.report(0.96, f"diff of {len(samples)} circuits")
    result = diff_runs(workspace, before, after, settings.n_edges)
    workspace.save_artifact(run_id, artifact, result)
    return result


def _done(workspace: Workspace, run_id: str | None) -> bool:
    return run_id is not None and workspace.get_run(run_id)["status"] == "done"


def diff_runs(workspace: Workspace, before: str, after: str, n_edges: int) -> dict:
    """The per-sample diff between two scoring runs of the same samples and settings."""
    graph = graph_of(workspace, before)
    b, a = (load_edge_scores(workspace, r, graph.n_edges) for r in (before, after))
    cb, ca = (load_circuits(workspace, r, graph.n_edges) for r in (before, after))
    layout = edge_layout(graph)
    per_sample = {i: diff(b[i], a[i], graph, n_edges, circuits=(cb[i], ca[i]), layout=layout) for i in b if i in a}
    return {"before_run": before, "after_run": after, "n_edges": n_edges, "per_sample": per_sample}
