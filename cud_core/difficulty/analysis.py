"""The validation analysis of a calibration: every number a reviewer needs, out-of-fold, with CIs.

Orientation: every target is turned into a *hardness* (high = hard to forget) before correlating:
hardness = −nll_after, −delta_nll, or forgotten_at (the first evaluated step with answer probability
below the threshold; never forgotten = steps + 1). A positive ρ therefore means "a high value of the
predictor goes with samples that are hard to forget". Each target exists per unlearning method
(averaged over seeds) and as the mean over methods ("mean").

Comparisons between predictors (ρ(CUD) − ρ(baseline)) orient each predictor by the direction fixed in
advance in `EXPECTED_DIRECTION` (e.g. a high original NLL is expected to mean *easy*), so a
baseline is not penalised for predicting in its expected direction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from cud_core.difficulty import claims, incremental, representation, stats
from cud_core.difficulty.crossfit import assign_folds, cross_fit, fold_labels
from cud_core.difficulty.cud import build_anchors, label_easy_hard

TARGETS = ("nll_after", "delta_nll", "forgotten_at")
PRIMARY = "nll_after"
PREDICTORS = ("cud", "cud_per_method", "representation", "original_nll", "mrd", "mrd_answer",
              "extraction_strength", "gradient_norm", "circuit_depth")
# mrd: "easy", as its authors' code uses it (a high MRD gets the larger sampling weight of the method
# the paper says favours easily forgotten samples; `predictors.mrd`), not "hard" as its name suggests
# representation: CUD's recipe on hidden states, so the same direction as CUD; mrd_answer as mrd
EXPECTED_DIRECTION = {"cud": "hard", "cud_per_method": "hard", "representation": "hard", "original_nll": "easy",
                      "mrd": "easy", "mrd_answer": "easy", "extraction_strength": "hard", "gradient_norm": "easy",
                      "circuit_depth": "hard"}
# the predictors whose value beyond the original NLL is tested (`incremental`), when present
INCREMENTAL = ("cud", "cud_per_method", "representation")


@dataclass
class Settings:
    """The validation's settings; a calibration's defaults for them are these (`CalibrationSettings`)."""
    q: float = 0.25              # top/bottom share labelled per method: ≥ 20 per class at ~120 samples
    folds: int = 5
    seed: int = 0
    binarise: str = "greedy"
    n_edges: int = 75
    similarity: str = "cosine"
    n_boot: int = stats.N_BOOT
    n_permutations: int = 200
    anchors: str = "consensus"   # which CUD is the headline: "consensus" or "per-method" (mean of CUD_m)


@dataclass
class Inputs:
    ids: list[str]
    outcomes: dict[str, dict[int, dict[str, dict]]]   # method -> seed -> sample id -> realised difficulty
    steps: int                                         # unlearning steps (never forgotten = steps + 1)
    baselines: dict[str, dict[str, float]]             # predictor -> sample id -> value (original_nll, mrd, ...)
    edge_scores: dict = field(repr=False, default_factory=dict)
    circuits: dict = field(repr=False, default_factory=dict)
    graph: object = field(repr=False, default=None)
    hidden: dict = field(repr=False, default_factory=dict)  # sample id -> [layers, d] (representation baseline)


def hardness(inputs: Inputs) -> dict[str, dict[str, np.ndarray]]:
    """target -> method (and "mean") -> hardness per sample (in `inputs.ids` order), averaged over seeds."""
    out = {}
    for target in TARGETS:
        by_method = {}
        for method, seeds in inputs.outcomes.items():
            per_seed = [[_hard(target, r[i][target], inputs.steps) for i in inputs.ids] for r in seeds.values()]
            by_method[method] = np.mean(per_seed, axis=0)
        by_method["mean"] = np.mean(list(by_method.values()), axis=0)
        out[target] = by_method
    return out


def _hard(target: str, value, steps: int) -> float:
    if target == "forgotten_at":
        return float(steps + 1 if value is None else value)
    return -float(value)


def seed_mean_nll(inputs: Inputs) -> dict[str, dict[str, float]]:
    """method -> sample id -> NLL after unlearning, averaged over seeds (what labels are built from)."""
    return {m: {i: float(np.mean([r[i]["nll_after"] for r in seeds.values()])) for i in inputs.ids}
            for m, seeds in inputs.outcomes.items()}


def analyse(inputs: Inputs, settings: Settings, progress=None) -> dict:
    """The full validation report (a JSON-able dict once the caller has popped "per_sample" and
    "anchors_all", the all-label anchors); see `report.py` for how it is presented."""
    report = progress or (lambda f, m: None)
    ids, s = inputs.ids, settings
    nll = seed_mean_nll(inputs)
    labels = label_easy_hard(nll, s.q)
    requested = s.folds
    s = replace(s, folds=max(2, min(s.folds, len(ids))))
    headline = headline_predictor(s)
    while True:  # a small forget set may leave a fold's complement without an easy or a hard sample
        folds = assign_folds(ids, labels, s.folds, s.seed)
        report(0.0, f"cross-fitting CUD over {s.folds} folds")
        try:
            fits = {s.anchors: _fit(s.anchors, ids, nll, inputs, s, folds)}
            break
        except ValueError:
            if s.folds <= 2:
                raise
            s = replace(s, folds=s.folds - 1)  # recorded: "folds" below is what was used
    settings = s
    # both kinds of anchors on the same folds: the consensus ones (≥ half the methods agree) and the
    # per-method ones (the paper's code: method m's own top/bottom-q sets; CUD_m is compared with
    # method m's outcomes, their mean with the method-mean target). The kind that is not the headline
    # may be impossible (e.g. no sample on which enough methods agree): it is then reported as such.
    unavailable = {}
    for kind in ANCHOR_KINDS:
        if kind not in fits:
            try:
                fits[kind] = _fit(kind, ids, nll, inputs, s, folds)
            except ValueError as exc:
                unavailable[PREDICTOR_OF[kind]] = f"{kind} anchors: {exc}"
    values = {**{PREDICTOR_OF[k]: f["cud"] for k, f in fits.items()}, **inputs.baselines}
    if inputs.hidden:  # the representation baseline, on the consensus labels of the same folds
        try:
            values["representation"] = representation.cross_fit(ids, inputs.hidden, folds,
                                                                fold_labels(ids, nll, s.q, folds))
        except ValueError as exc:
            unavailable["representation"] = str(exc)
    by_method_values = {"cud_per_method": {m: np.array([v[i] for i in ids]) for m, v in
                                           fits["per-method"]["by_method"].items()}} if "per-method" in fits else {}
    built = {}  # anchors from every label, both kinds where buildable: in-sample CUD here; saved for new samples
    for kind in ANCHOR_KINDS:
        try:
            built[kind] = all_sample_anchors(kind, nll, labels, inputs, s)
        except ValueError:
            if kind == s.anchors or kind == "per-method":  # only consensus may lack labels (reported above)
                raise
    anchors_all = built[s.anchors]
    matrix = torch.stack([inputs.circuits[i].float() for i in ids])
    cud_in = dict(zip(ids, np.mean([a.score_many(matrix, s.similarity).numpy() for a in anchors_all], 0).tolist()))
    hard = hardness(inputs)
    idx = stats.boot_indices(len(ids), s.seed, s.n_boot)
    z = np.array([inputs.baselines["original_nll"][i] for i in ids], float)
    labelled = [j for j, i in enumerate(ids) if i in labels]
    positive = np.array([labels[ids[j]] == "hard" for j in labelled], dtype=bool)

    predictors, boot_rho = {}, {}
    for name in PREDICTORS:
        if name not in values:
            continue
        x = np.array([values[name].get(i, np.nan) for i in ids], float)
        entry = {"high_means": EXPECTED_DIRECTION[name], "n": int(np.isfinite(x).sum())}
        for target in TARGETS:
            t = {}
            for method, y in hard[target].items():
                xm = by_method_values.get(name, {}).get(method, x)
                rho, dist = _rho_with_ci(xm, y, idx)
                t[method] = {"spearman": rho, "spearman_ci": stats.percentile_ci(dist)}
                if method == "mean":
                    boot_rho[(name, target)] = dist
            entry[target] = {**t["mean"], "by_method": {m: v for m, v in t.items() if m != "mean"}}
        y = hard[PRIMARY]["mean"]
        entry["partial_spearman"] = stats.partial_spearman(x, y, z)
        entry["partial_spearman_ci"] = stats.percentile_ci(stats.boot_partial_spearman(x, y, z, idx))
        xs = x[labelled]
        entry["auroc"] = stats.auroc(xs, positive)
        entry["auroc_ci"] = stats.percentile_ci(stats.boot_auroc(xs, positive, s.seed, s.n_boot))
        predictors[name] = entry

    sign = {n: 1.0 if EXPECTED_DIRECTION[n] == "hard" else -1.0 for n in predictors}
    versus = {}  # the headline CUD minus every other predictor, paired
    for name in predictors:
        if name == headline:
            continue
        versus[name] = {}
        for target in TARGETS:
            diff = sign[headline] * boot_rho[(headline, target)] - sign[name] * boot_rho[(name, target)]
            point = (sign[headline] * predictors[headline][target]["spearman"]
                     - sign[name] * predictors[name][target]["spearman"])
            versus[name][target] = {"difference": float(point), "ci": stats.percentile_ci(diff)}

    report(0.25, "incremental value, leave-one-method-out, depth")
    fold_of = np.array([folds[i] for i in ids])
    added = {}
    for name in INCREMENTAL:
        if name in predictors:
            x = np.array([values[name][i] for i in ids], float)
            added[name] = incremental.incremental_value(z, x, hard[PRIMARY]["mean"], fold_of, np.array(labelled, int),
                                                        positive, idx, s.n_permutations, s.seed, s.n_boot)
    lomo = claims.leave_one_method_out(ids, nll, hard[PRIMARY], claims.consensus_fit(ids, inputs, s), folds, idx)
    depth_values = {k: np.array([inputs.baselines[b][i] for i in ids], float)
                    for k, b in (("depth_com", "circuit_depth"), ("longest_path", "longest_path"))
                    if b in inputs.baselines}
    depth = claims.depth(depth_values, hard[PRIMARY]["mean"], np.array(labelled, int), positive, idx, s.seed,
                         s.n_boot)

    report(0.3, f"permutation null ({s.n_permutations} permutations)")
    null = permutation_null(inputs, settings, nll, hard[PRIMARY]["mean"], progress=lambda f: report(0.3 + 0.65 * f, (
        f"permutation null: {round(f * s.n_permutations)}/{s.n_permutations}")))
    observed = predictors[headline][PRIMARY]["spearman"]

    x_in = np.array([cud_in[i] for i in ids])
    in_sample = {"anchors": s.anchors, "note": f"{s.anchors} anchors built from, and evaluated on, the same labelled "
                                               "samples (the paper's protocol): optimistic by construction"}
    for target in TARGETS:
        rho, dist = _rho_with_ci(x_in, hard[target]["mean"], idx)
        in_sample[target] = {"spearman": rho, "spearman_ci": stats.percentile_ci(dist)}
    in_sample["auroc"] = stats.auroc(x_in[labelled], positive)
    in_sample["auroc_ci"] = stats.percentile_ci(stats.boot_auroc(x_in[labelled], positive, s.seed, s.n_boot))

    out = {
        "n_forget": len(ids), "n_labelled": len(labelled), "n_easy": int((~positive).sum()),
        "n_hard": int(positive.sum()), "folds": s.folds, "folds_requested": requested,
        "seeds": sorted({k for v in inputs.outcomes.values() for k in v}),
        "methods": list(inputs.outcomes), "q": s.q, "n_boot": s.n_boot, "n_permutations": s.n_permutations,
        "similarity": s.similarity, "anchors": s.anchors, "headline": headline, "steps": inputs.steps,
        "targets": list(TARGETS), "primary_target": PRIMARY,
        "predictors": predictors, "cud_vs_baseline": versus,
        "permutation_p": stats.permutation_p(observed, null),
        "permutation": {"target": PRIMARY, "observed": observed, "null": [float(v) for v in null]},
        "reliability": reliability(inputs, hard, idx),
        "incremental": added, "leave_one_method_out": lomo, "depth": depth,
        "in_sample": in_sample,
        "unavailable": unavailable,
        "per_sample": {i: {"cud": values[headline][i], "cud_oof": values.get("cud", {}).get(i, math.nan),
                           "fold": folds[i], "cud_in_sample": cud_in[i], "label": labels.get(i),
                           "cud_per_method": {m: v[i] for m, v in
                                              fits.get("per-method", {}).get("by_method", {}).items()}}
                       for i in ids},
        "fold_anchor_ids": fits["consensus"]["anchor_ids"] if "consensus" in fits else [],
        # not JSON (the caller pops it): the all-label anchors, consensus (None: not buildable) and per method
        "anchors_all": {"consensus": built.get("consensus", [None])[0],
                        "per-method": dict(zip(nll, built.get("per-method", [])))},
    }
    out["verdict"] = verdict(out)
    return out


ANCHOR_KINDS = ("consensus", "per-method")
PREDICTOR_OF = {"consensus": "cud", "per-method": "cud_per_method"}


def _fit(kind: str, ids: list[str], nll: dict, inputs: Inputs, s: Settings, folds: dict[str, int]) -> dict:
    """Out-of-fold CUD with `kind` anchors: {"cud": {id: value}} plus, for consensus anchors, the ids
    each fold's anchors were built from, and for per-method anchors each method's CUD_m ("by_method")."""
    if kind == "consensus":
        f = cross_fit(ids, nll, inputs.edge_scores, inputs.circuits, inputs.graph, s.q, folds, s.binarise,
                      s.n_edges, s.similarity)
        return {"cud": f.cud, "anchor_ids": f.anchor_ids}
    by_method = {m: cross_fit(ids, {m: nll[m]}, inputs.edge_scores, inputs.circuits, inputs.graph, s.q, folds,
                              s.binarise, s.n_edges, s.similarity).cud for m in nll}
    return {"cud": {i: float(np.mean([v[i] for v in by_method.values()])) for i in ids}, "by_method": by_method}


def all_sample_anchors(kind: str, nll: dict, labels: dict, inputs: Inputs, s: Settings) -> list:
    """The anchors built from every sample's labels (in-sample for these samples; for new ones, a
    prediction): one pair for consensus anchors, one per method for per-method anchors (CUD = the mean)."""
    parts = [labels] if kind == "consensus" else [label_easy_hard({m: v}, s.q) for m, v in nll.items()]
    return [build_anchors(inputs.edge_scores, part, inputs.graph, s.binarise, s.n_edges) for part in parts]


def _rho_with_ci(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> tuple[float, np.ndarray]:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan"), np.full(len(idx), np.nan)
    if ok.all():
        return stats.spearman(x, y), stats.boot_spearman(x, y, idx)
    # the shared resamples, each restricted to the samples where the predictor exists, so that paired
    # differences with other predictors stay paired
    dist = np.array([stats.spearman(x[row[ok[row]]], y[row[ok[row]]]) for row in idx])
    return stats.spearman(x[ok], y[ok]), dist


def permutation_null(inputs: Inputs, settings: Settings, nll: dict, y: np.ndarray, progress=None) -> np.ndarray:
    """ρ(out-of-fold CUD, hardness) when the outcomes are shuffled across samples *before* labels, folds
    and anchors are built: what the whole pipeline gives by chance. `nll` is `seed_mean_nll(inputs)`."""
    ids, s = inputs.ids, settings
    rng = np.random.default_rng(s.seed + 1)
    null = np.empty(s.n_permutations)
    for p in range(s.n_permutations):
        perm = rng.permutation(len(ids))
        shuffled = {m: {ids[j]: v[ids[k]] for j, k in enumerate(perm)} for m, v in nll.items()}
        labels = label_easy_hard(shuffled, s.q)
        folds = assign_folds(ids, labels, s.folds, s.seed + 1 + p)
        parts = [shuffled] if s.anchors == "consensus" else [{m: v} for m, v in shuffled.items()]
        try:
            fits = [cross_fit(ids, part, inputs.edge_scores, inputs.circuits, inputs.graph, s.q, folds, s.binarise,
                              s.n_edges, s.similarity) for part in parts]
            null[p] = stats.spearman([np.mean([f.cud[i] for f in fits]) for i in ids], y[perm])
        except ValueError:  # a fold without an easy or hard sample
            null[p] = np.nan
        if progress and (p + 1) % 10 == 0:
            progress((p + 1) / s.n_permutations)
    return null


def headline_predictor(settings: Settings) -> str:
    """The CUD the verdict, the permutation null and the pages use."""
    if settings.anchors not in ("consensus", "per-method"):
        raise ValueError(f"anchors must be 'consensus' or 'per-method', got {settings.anchors!r}")
    return "cud" if settings.anchors == "consensus" else "cud_per_method"


def reliability(inputs: Inputs, hard: dict, idx: np.ndarray) -> dict:
    """Test–retest ρ of realised difficulty (−NLL after) between two seeds per method, the reliability of
    the seed mean (Spearman–Brown), Kendall's W across methods, and the ceiling √reliability that no
    predictor's |ρ| with the method-mean target can be expected to exceed."""
    ids = inputs.ids
    out = {"test_retest": {}, "kendall_w": stats.kendall_w([hard[PRIMARY][m] for m in inputs.outcomes])}
    pairs = []
    for method, seeds in inputs.outcomes.items():
        if len(seeds) < 2:
            continue
        a, b = sorted(seeds)[:2]
        x = np.array([-seeds[a][i]["nll_after"] for i in ids])
        y = np.array([-seeds[b][i]["nll_after"] for i in ids])
        rho, dist = _rho_with_ci(x, y, idx)
        out["test_retest"][method] = {"spearman": rho, "spearman_ci": stats.percentile_ci(dist), "seeds": [a, b]}
        pairs.append((x, y))
    if pairs:
        x = np.mean([p[0] for p in pairs], axis=0)
        y = np.mean([p[1] for p in pairs], axis=0)
        rho, dist = _rho_with_ci(x, y, idx)
        n_seeds = min(len(s) for s in inputs.outcomes.values())
        rel = stats.spearman_brown(rho, n_seeds)
        out["method_mean"] = {"test_retest": rho, "test_retest_ci": stats.percentile_ci(dist),
                              "reliability": rel, "reliability_ci": [stats.spearman_brown(v, n_seeds)
                                                                     for v in stats.percentile_ci(dist)],
                              "ceiling": math.sqrt(rel) if rel > 0 else float("nan")}
        ci = out["method_mean"]["reliability_ci"]
        out["method_mean"]["ceiling_ci"] = [math.sqrt(v) if np.isfinite(v) and v > 0 else float("nan") for v in ci]
    return out


def _ci_text(ci) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def verdict(r: dict) -> str:
    """One plain sentence that follows from the CIs (method-mean NLL after unlearning)."""
    name = r.get("headline", "cud")
    cud = r["predictors"][name][PRIMARY]
    lo, hi = cud["spearman_ci"]
    if not np.isfinite(lo):
        return "Too few samples for a confidence interval: no conclusion."
    what = "CUD" if name == "cud" else "CUD (per-method anchors)"
    chance = (f"{what} is distinguishable from chance" if lo > 0 else
              f"{what} is worse than chance (it ranks hard samples as easy)" if hi < 0 else
              f"{what} is not distinguishable from chance")
    text = (f"{chance} (Spearman ρ = {cud['spearman']:.2f}, 95% CI {_ci_text(cud['spearman_ci'])}, "
            f"n = {r['n_forget']}, permutation p = {r['permutation_p']:.3f})")
    vs = r["cud_vs_baseline"].get("original_nll", {}).get(PRIMARY)
    if vs and np.isfinite(vs["ci"][0]):
        better = ("better than" if vs["ci"][0] > 0 else "worse than" if vs["ci"][1] < 0
                  else "not distinguishable from")
        text += f"; it is {better} the original answer NLL (Δρ = {vs['difference']:.2f}, 95% CI {_ci_text(vs['ci'])})"
    ceiling = r["reliability"].get("method_mean", {}).get("ceiling")
    if ceiling is not None and np.isfinite(ceiling):
        text += f"; no predictor can be expected to exceed ρ ≈ {ceiling:.2f}, the target's own reliability ceiling"
    text += "."
    inc = r.get("incremental", {}).get(name)
    if inc:
        p = r["predictors"][name]
        text += " " + incremental.sentence(what, inc, p["partial_spearman"], p["partial_spearman_ci"])
    return text
