"""`validate-prospective`: CUD scored *before* the samples it predicts are unlearned, and an
interventional test of what a user of the tool would do with it.

On a finished calibration (its methods that reached a valid operating point, each at the learning rate
it chose there; every method at the calibration's rate when it ran with fixed steps):
1. split its forget set into halves A and B, matched on the original NLL (`prospective.split_halves`);
2. unlearn A alone (every method and seed, under the calibration's protocol); labels and anchors from
   A's outcomes only;
3. CUD of B's samples against A's anchors (and the representation baseline's A anchors, where the
   calibration stored hidden states) — before B is unlearned;
4. unlearn B alone the same way; ρ of CUD(B) with B's realised hardness, beside the original NLL's;
5. the k CUD-easiest and k CUD-hardest of B, and the same within NLL strata, each group unlearned on its
   own for the full step budget (same methods, rates, seeds); their forgetting compared (hard − easy,
   bootstrap CIs: mean ΔNLL, share forgotten, forgotten_at) two ways, each with each group's held-out
   utility where it is read:
   - at each method's operating-point step on B (where the method is known to work on these data);
   - at matched utility cost: each group run at its last evaluation inside the utility bound
     (`prospective.budget_index`), so a group whose unlearning breaks the model early is read before it
     does; what a user can forget of each group without leaving the bound.
Each phase is a run of kind "prospective-phase" (resumable like a calibration's units); the report is
the artifact "prospective_report" of the run of kind "prospective".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from cud_core.data.samples import Sample
from cud_core.difficulty import representation, stats
from cud_core.difficulty.cud import build_anchors, label_easy_hard
from cud_core.difficulty.prospective import budget_index, extremes, group_difference, matched_extremes, split_halves
from cud_core.difficulty.regimes import PROTOCOL, within_bound
from cud_core.engine.graph import Graph
from cud_core.pipeline.calibration import CalibrationSettings, calibrate, load_hidden, run_config, split_holdout
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.forget_sets import unlearn_part
from cud_core.pipeline.outcomes import join_outcomes, kept_parts, load_regimes, load_units, parts, pooled
from cud_core.store.score_files import load_circuits, load_edge_scores
from cud_core.unlearn.runner import default_lr

RUN_KIND, PHASE_KIND = "prospective", "prospective-phase"
MEASURES = {"delta_nll": "mean ΔNLL", "forgotten": "share forgotten", "forgotten_at": "forgotten at step"}
# what "CUD-hard resists" predicts for hard − easy: less ΔNLL, fewer forgotten, forgotten later
EXPECTED_SIGN = {"delta_nll": -1, "forgotten": -1, "forgotten_at": 1}


@dataclass
class ProspectiveSettings:
    k: int = 20          # CUD-easiest and CUD-hardest samples of B unlearned as groups
    strata: int = 4      # NLL strata of the matched selection
    seed: int = 0        # the A/B split

    def check(self) -> None:
        if self.k < 1 or self.strata < 1:
            raise ValueError(f"--k and --strata must be ≥ 1 (got {self.k}, {self.strata})")


def validate_prospective(ctx: RunContext, forget: list[Sample], retain: list[Sample], settings: CalibrationSettings,
                         p: ProspectiveSettings) -> str | None:
    """Run (or resume) the prospective validation of the calibration `settings` describe (running that
    calibration first if needed); returns the prospective run's id, None when stopped."""
    p.check()
    ws, lm = ctx.workspace, ctx.lm
    cal_id = calibrate(ctx.within(0.0, 0.2, "calibration: "), forget, retain, settings)
    if ws.get_run(cal_id)["status"] != "done":
        return None
    cal_config = ws.get_run(cal_id)["config"]
    found = load_regimes(ws, cal_id, cal_config)
    rates = ({m: r["lr"] for m, r in found.items() if r["functional"]} if found else
             dict.fromkeys(settings.methods, settings.lr if settings.lr is not None else default_lr(lm.model)))
    if 2 * p.k > len(forget) // 2:
        raise ValueError(f"--k {p.k}: half of the {len(forget)} forget samples cannot give {p.k} easiest and {p.k} "
                         "hardest; use a smaller --k or a larger forget set")
    config = {"calibration": cal_id, **asdict(p)}
    run_id = ws.find_run(RUN_KIND, lm.name, ctx.dataset, config) or ws.create_run(RUN_KIND, lm.name, ctx.dataset,
                                                                                    config)
    ws.set_status(run_id, "running")
    ctx = ctx.but(run_id=run_id, timings=ws.load_artifact(run_id, "timings", {}))
    score_id = ws.load_artifact(cal_id, "score_run")
    scored, graph = ws.load_results(score_id), Graph.from_model(lm.model)
    nll0 = {s.id: scored[s.id]["answer_nll"] for s in forget}
    by_id = {s.id: s for s in forget}
    train_retain, holdout = split_holdout(retain, settings)
    learned = replace(settings, methods=tuple(rates), forget_sets=1)
    full_budget = replace(learned, protocol=None)

    def phase(name: str, ids: list[str], s: CalibrationSettings, at: float, span: float) -> str | None:
        samples = [by_id[i] for i in ids]
        cfg = {**run_config(lm, samples, retain, s), "phase": name, "prospective": run_id}
        pid = unlearn_part(ctx, PHASE_KIND, cfg, samples, train_retain, holdout, s, rates, at, span, f"phase {name}")
        if pid is None:
            ws.set_status(run_id, "stopped", f"stopped during phase {name}; rerun to resume")
        return pid

    phases = {}
    # a calibration of several forget sets: its kept sets (every method valid on them), in order
    counted = kept_parts(ws, cal_id, cal_config["methods"]) if pooled(cal_config) else []
    sets, numbers = [(ids, r) for _, ids, r in counted], [k for k, _, _ in counted]
    if pooled(cal_config) and len(sets) < 2:
        raise ValueError(f"calibration {cal_id} kept {len(sets)} forget set(s) (every method valid on it): halves A "
                         "and B need two or more")
    if sets:  # a calibration of several forget sets: the first half of its sets is A, the rest B, each set
        half = len(sets) // 2  # already unlearned on its own under the protocol
        a_ids, b_ids = ([i for ids, _ in sets[:half] for i in ids], [i for ids, _ in sets[half:] for i in ids])
        a_runs, b_runs = [r for _, r in sets[:half]], [r for _, r in sets[half:]]
    else:
        a_ids, b_ids = split_halves(list(nll0), nll0, p.seed)
        for k, (name, ids, s) in enumerate((("A", a_ids, learned), ("B", b_ids, learned))):
            if (phases.setdefault(name, phase(name, ids, s, 0.2 + 0.25 * k, 0.25))) is None:
                return None
        a_runs, b_runs = [phases["A"]], [phases["B"]]
    out_a, out_b = join_outcomes(ws, a_runs, rates), join_outcomes(ws, b_runs, rates)
    steps = settings.steps
    if not out_a or not out_b:
        raise ValueError(f"no method reached a valid operating point on half {'A' if not out_a else 'B'} at the "
                         f"calibration's rates ({', '.join(f'{m} {r:.2g}' for m, r in rates.items())}): no prospective "
                         "labels")
    labels_a = label_easy_hard({m: {i: float(np.mean([r[i]["nll_after"] for r in seeds.values()])) for i in a_ids}
                                for m, seeds in out_a.items()}, settings.q)
    edge_scores = load_edge_scores(ws, score_id, graph.n_edges)
    circuits = load_circuits(ws, score_id, graph.n_edges)
    sc = settings.score
    anchors = build_anchors(edge_scores, labels_a, graph, sc.binarise, sc.n_edges)
    cud_b = dict(zip(b_ids, anchors.score_many(torch.stack([circuits[i].float() for i in b_ids]),
                                               settings.similarity).tolist()))
    predicted = {"cud": cud_b, "original_nll": {i: nll0[i] for i in b_ids}}
    hidden = load_hidden(ws, cal_id)
    if hidden:
        ids = a_ids + b_ids
        matrix = representation.standardise(torch.stack([hidden[i].float() for i in ids]))
        rows = list(range(len(a_ids), len(ids)))
        predicted["representation"] = dict(zip(b_ids, representation.anchor_scores(matrix, rows, labels_a, ids)))

    hard_b = np.mean([[-r[i]["nll_after"] for i in b_ids] for seeds in out_b.values() for r in seeds.values()], 0)
    idx = stats.boot_indices(len(b_ids), settings.seed, settings.n_boot)
    forward = {}
    for name, values in predicted.items():
        x = np.array([values[i] for i in b_ids], float)
        forward[name] = {"spearman": stats.spearman(x, hard_b),
                         "spearman_ci": stats.percentile_ci(stats.boot_spearman(x, hard_b, idx)), "n": len(b_ids)}

    # 5. the interventional groups, each unlearned on its own for the full budget
    groups = dict(zip(("easy", "hard"), extremes(cud_b, p.k)))
    groups.update(zip(("easy_matched", "hard_matched"), matched_extremes(cud_b, nll0, p.k, p.strata)))
    for k, (name, ids) in enumerate(groups.items()):
        if (phases.setdefault(name, phase(name, ids, full_budget, 0.7 + 0.07 * k, 0.07))) is None:
            return None
    units_b = [load_units(ws, r, ws.get_run(r)["config"]) for r in b_runs]
    # each method's operating-point step on B (first seed; the upper median over B's forget sets)
    at_step = {m: sorted(_point_step(next(iter(u[m].values()))) for u in units_b)[len(units_b) // 2]
               for m in out_b}
    threshold = settings.forgotten_threshold
    protocol = settings.protocol or PROTOCOL  # the groups run to the full budget: read against the bound anyway
    def at_point(method: str, c: dict) -> int:
        return c["steps"].index(at_step[method]) if at_step[method] in c["steps"] else len(c["steps"]) - 1

    def in_budget(method: str, c: dict) -> int:
        return budget_index([h["nll"] for h in c["holdout"]], protocol)

    measured = {name: _group_measures(ws, phases[name], at_step, at_point, threshold) for name in groups}
    budgeted = {name: _group_measures(ws, phases[name], at_step, in_budget, threshold, whole_run=False)
                for name in groups}
    tests = {}
    for kind, (easy, hard) in {"plain": ("easy", "hard"), "matched": ("easy_matched", "hard_matched")}.items():
        e, h = measured[easy], measured[hard]
        tests[kind] = {**_compare(e, h, settings),
                       "nll_easy": float(np.mean([nll0[i] for i in groups[easy]])),
                       "nll_hard": float(np.mean([nll0[i] for i in groups[hard]])),
                       # an unlearning run is evidence only inside the utility bound: was each group there?
                       "within_bound": {g: all(within_bound(u["holdout_nll"], u["holdout_nll_0"], protocol)
                                               for u in x["utility"].values()) for g, x in (("easy", e), ("hard", h))},
                       "budget": (_compare(budgeted[easy], budgeted[hard], settings)
                                  if budgeted[easy] and budgeted[hard] else None)}
    report = {"calibration": cal_id, "data": ctx.dataset, "model": lm.name, "n_a": len(a_ids), "n_b": len(b_ids),
              "k": p.k, "strata": p.strata,
              "forget_sets": {"a": numbers[:half], "b": numbers[half:], "sizes": [len(ids) for ids, _ in sets]}
              if sets else None,
              "methods": sorted(out_b), "rates": rates, "steps": steps, "at_step": at_step,
              "protocol": protocol.as_dict(),
              "labels_a": {"easy": sum(v == "easy" for v in labels_a.values()),
                           "hard": sum(v == "hard" for v in labels_a.values())},
              "prospective": forward, "interventional": tests, "timings": ctx.timings}
    report["verdict"] = verdict(report)
    ws.save_artifact(run_id, "prospective_report", report)
    ws.set_status(run_id, "done", f"A {len(a_ids)}, B {len(b_ids)}, k {p.k}")
    ctx.report(1.0, "prospective validation done")
    return run_id


def estimate(ws, cal_id: str, n_forget: int, p: ProspectiveSettings) -> dict:
    """Seconds the phases of a prospective validation of finished calibration `cal_id` take, from its own
    unlearning times: each functional (method, seed) unit's stored time (a learning-rate search included,
    so an upper side) scaled by the samples each phase unlearns (two halves, four groups of k)."""
    config = ws.get_run(cal_id)["config"]
    found = load_regimes(ws, cal_id, config)
    methods = [m for m, r in found.items() if r["functional"]] if found else config["methods"]
    def unit_times(run_id: str) -> list[float]:
        timings = ws.load_artifact(run_id, "timings", {})
        return [timings.get(f"unlearn_{m}_seed{s}_s", 0.0) for m in methods for s in config["seeds"]]
    if pooled(config):  # halves A and B are its forget sets, already unlearned: only the four groups are left
        sets = parts(ws, cal_id)
        per_set = [sum(unit_times(r)) for _, r in sets]
        share = 4 * p.k / (n_forget / len(sets))  # the groups' samples over one set's
        return {"seconds": float(np.mean(per_set)) * share, "runs": 4 * len(unit_times(sets[0][1])),
                "methods": methods, "phases": "four groups"}
    unit = unit_times(cal_id)
    share = (n_forget / 2 * 2 + 4 * p.k) / n_forget  # the phases' samples over the calibration's
    return {"seconds": sum(unit) * share, "runs": 6 * len(unit), "methods": methods,
            "phases": "halves A and B and four groups"}


def _point_step(curve: dict) -> int:
    """The step of a unit's operating point (its last evaluation when it found none)."""
    return curve["steps"][curve["point"] if curve.get("point") is not None else -1]


def _group_measures(ws, phase_id: str, at_step: dict[str, int], read, threshold: float,
                    whole_run: bool = True) -> dict | None:
    """Per sample of one group run, averaged over its methods in `at_step` and seeds: ΔNLL and forgotten
    (p < threshold) at the evaluation `read(method, curve)` picks, and forgotten_at over the whole run (or,
    `whole_run=False`, up to that evaluation; never: the budget + 1); the held-out NLL there. None when a
    unit has no held-out curve and `read` needs one (the utility-matched reading), or no unit is read."""
    units = load_units(ws, phase_id, ws.get_run(phase_id)["config"])
    per, utility = {m: [] for m in MEASURES}, {}
    for method, seeds in units.items():
        if method not in at_step:
            continue
        for seed, c in seeds.items():
            h = c.get("holdout") or []
            if not h and not whole_run:
                return None
            t = read(method, c)
            ids, last = list(c["curve"][0]), len(c["steps"]) if whole_run else t + 1
            per["delta_nll"].append([c["curve"][t][i] - c["curve"][0][i] for i in ids])
            per["forgotten"].append([float(c["prob_curve"][t][i] < threshold) for i in ids])
            seen = list(zip(c["steps"][:last], c["prob_curve"]))
            per["forgotten_at"].append([next((s for s, pr in seen if pr[i] < threshold), c["steps"][-1] + 1)
                                        for i in ids])
            if h:
                utility[f"{method}.seed{seed}"] = {"step": c["steps"][t], "holdout_nll_0": h[0]["nll"],
                                                   "holdout_nll": h[t]["nll"]}
    if not per["delta_nll"]:
        return None
    return {"per_sample": {m: np.mean(v, 0) for m, v in per.items()}, "utility": utility}


def _compare(e: dict, h: dict, settings: CalibrationSettings) -> dict:
    """Hard − easy of each measure (bootstrap CIs) and each group's held-out utility where it was read."""
    return {"measures": {m: group_difference(e["per_sample"][m], h["per_sample"][m], settings.seed, settings.n_boot)
                         for m in MEASURES},
            "utility": {"easy": e["utility"], "hard": h["utility"]}}


def verdict(r: dict) -> str:
    """The prospective ρ and the interventional differences in words that follow from their CIs."""
    cud = r["prospective"]["cud"]
    lo, hi = cud["spearman_ci"]
    words = "predicts" if lo > 0 else "ranks the wrong way" if hi < 0 else "does not detectably predict"
    text = (f"Scored before half B was unlearned, CUD from half A's anchors {words} B's realised hardness "
            f"(ρ = {cud['spearman']:.2f} [{lo:.2f}, {hi:.2f}], n = {cud['n']}; original NLL "
            f"{r['prospective']['original_nll']['spearman']:.2f}).")
    for kind, label in (("plain", "CUD-hardest vs CUD-easiest"), ("matched", "The same within NLL strata")):
        d = r["interventional"][kind]["measures"]["delta_nll"]
        text += (f" {label} (k = {r['k']}, unlearned separately): ΔNLL hard − easy = {d['difference']:.2f} "
                 f"[{d['ci'][0]:.2f}, {d['ci'][1]:.2f}], {_resist(d)}")
        outside = [g for g, ok in r["interventional"][kind].get("within_bound", {}).items() if not ok]
        if outside:
            worst = max(u["holdout_nll"] for g in outside for u in r["interventional"][kind]["utility"][g].values())
            text += (f"; but there the CUD-{' and CUD-'.join(outside)} group's runs had left the held-out utility "
                     f"bound (held-out NLL up to {worst:.2f}): not an operating point, so the difference measures "
                     "damage as much as forgetting")
        text += "." + _budget_text(r["interventional"][kind].get("budget"))
    return text


def _resist(d: dict) -> str:
    a, b = d["ci"]
    return ("the CUD-hard group forgot less" if b < 0 else "the CUD-hard group forgot more" if a > 0
            else "no detectable difference")


def _budget_text(t: dict | None) -> str:
    """The utility-matched reading in words (empty for a report from before it, or without held-out curves)."""
    if not t:
        return ""
    steps = {g: "/".join(str(u["step"]) for u in runs.values()) for g, runs in t["utility"].items()}
    d, f = t["measures"]["delta_nll"], t["measures"]["forgotten"]
    return (f" Read at matched utility cost instead (each run at its last evaluation inside the bound: easy at step "
            f"{steps['easy']}, hard at {steps['hard']}): ΔNLL hard − easy = {d['difference']:.2f} [{d['ci'][0]:.2f}, "
            f"{d['ci'][1]:.2f}], share forgotten {f['difference']:.2f} [{f['ci'][0]:.2f}, {f['ci'][1]:.2f}], "
            f"{_resist(d)}.")
