"""Cost estimates before a run: wall time and peak memory, for scoring,
unlearning, calibration and the ablation grid.

Time = (samples to score) × (one sample's cost) / workers, where one sample's cost comes from a
timing probe on this machine: a plain EAP pass (one clean forward, one corrupted forward and one
backward) and the per-sample metrics on a small batch of the samples nearest the median length; the
attribution method's further forward+backward passes (`attribution_passes` − 1) each cost
`IG_PASS_COST` of that EAP pass. Peak memory is `memory.estimate_scoring_peak` at the longest sample; when it
exceeds the device's free memory the largest batch that fits is suggested. `bench/estimate.py`
measures the error against real runs.

Unlearning: a second probe times, on the same samples, a forward and a forward+backward per token
and one AdamW update per parameter (on a small tensor, scaled); a training step costs each method's
passes (`UnlearningMethod.passes`) on the padded tokens of a random batch, plus the update; each
evaluation a forward over the padded forget set and retain probe. A calibration adds its scoring,
runs its (method, seed) units one after the other here or spread over the workers, and adds the
baseline predictors (MRD: draws + 1 forwards; gradient norms: one forward+backward per sample) and
the validation (a cost per sample × permutation × graph edge and per bootstrap resample, fitted to
two measured calibrations). The ablation grid adds one scoring per attribution setting to run and its 24 cells.
"""
from __future__ import annotations

import random
import time

from cud_core.difficulty.grid import CELLS_PER_SETTING, GRID
from cud_core.difficulty.predictors import MRD_DRAWS
from cud_core.engine.attribution import attribute, parameter_grads
from cud_core.engine.graph import Graph
from cud_core.engine.memory import estimate_scoring_peak, fit_batch_size, format_bytes, longest_sequence, token_lengths
from cud_core.engine.metrics import collate, compute_metrics
from cud_core.engine.sysmem import available_memory
from cud_core.pipeline.ablation import scoring_units
from cud_core.pipeline.reuse import CHECK_STEPS
from cud_core.pipeline.unlearning import held_out, max_tries
from cud_core.unlearn import METHODS
from cud_core.unlearn.base import nll
from cud_core.unlearn.runner import EVAL_BATCH

PROBE_SAMPLES = 4


def attribution_passes(method: str, steps: int, n_layers: int) -> int:
    """Full-model forward+backward passes per batch (see `attribution`'s docstring): EAP 1, EAP-IG-inputs
    `steps`; EAP-IG-activations 1 + (steps − 1)·(L + 2): the input group's passes are full, a pass of layer
    l's heads or MLP runs the L − l layers from l on (Σ over both groups and all l: L + 1 full passes);
    the peer variant 2 + (L + 2)·steps: all its passes start at their layer too, α = 1 included, plus
    one full backward for what they add below it (`attribution._peer`)."""
    if method == "eap":
        return 1
    if method == "eap-ig-inputs":
        return steps
    if method == "eap-ig-activations":
        return 1 + (steps - 1) * (n_layers + 2)
    return 2 + (n_layers + 2) * steps


# an interpolated (IG) pass — a forward+backward with gradient taps, no clean capture, no score
# product — costs this share of the probe's EAP pass (clean capture, baseline, backward, scores):
# measured on 4 median-length world-facts samples, SmolLM2, 2 CPU cores: EAP pass 2.2 s, IG-inputs
# (m = 5) 7.8 s, IG-activations (m = 5, 128 full-pass equivalents after the clean one) 187 s, i.e.
# 1.40 and 1.44 s per interpolated pass (a plain forward+backward to the inputs: 0.8 s)
IG_PASS_COST = 0.63


def seconds_per_sample(metrics_s: float, pass_s: float, passes: int) -> float:
    """One sample's scoring cost from the probe's per-sample metrics and EAP-pass seconds: the clean
    (EAP-like) pass plus `passes` − 1 interpolated ones."""
    return metrics_s + pass_s * (1 + IG_PASS_COST * (passes - 1))


def _probe_batch(lm, samples):
    """The PROBE_SAMPLES samples nearest the median encoded length."""
    ranked = [s for _, s in sorted(zip(token_lengths(lm.tokenizer, samples), samples), key=lambda x: x[0])]
    mid = max(0, len(ranked) // 2 - PROBE_SAMPLES // 2)
    return ranked[mid: mid + PROBE_SAMPLES]


def probe_scoring(lm, samples, settings) -> dict:
    """{"metrics_s_per_sample", "pass_s_per_sample", "probe_s"}: the per-sample metrics and one EAP pass
    timed on this machine (`PROBE_SAMPLES` samples near the median length)."""
    batch = _probe_batch(lm, samples)
    t = t0 = time.perf_counter()
    compute_metrics(lm.model, lm.tokenizer, batch, batch_size=len(batch), generate=settings.generation)
    metrics_s = time.perf_counter() - t
    for _ in range(2):  # the first call pays one-time costs (fresh buffers, kernel set-up): time the second
        t = time.perf_counter()
        attribute(lm.model, lm.tokenizer, batch, method="eap", metric=settings.metric, batch_size=len(batch),
                  graph=Graph.from_model(lm.model))
        eap_s = time.perf_counter() - t
    return {"metrics_s_per_sample": metrics_s / len(batch), "pass_s_per_sample": eap_s / len(batch),
            "probe_s": round(time.perf_counter() - t0, 2)}


def estimate_score(lm, samples, settings, workers: int = 1, probe: bool = True, timing: dict | None = None) -> dict:
    """{"seconds", "per_sample_s", "probe_s", "peak_bytes", "available_bytes", "batch_size", "warning"}.
    `timing`: a `probe_scoring` result to use instead of timing one now."""
    graph = Graph.from_model(lm.model)
    passes = attribution_passes(settings.method, settings.steps, graph.n_layers)
    out = {"samples": len(samples), "passes": passes, "workers": workers}
    if (probe or timing) and samples:
        timing = timing or probe_scoring(lm, samples, settings)
        per_sample = seconds_per_sample(timing["metrics_s_per_sample"], timing["pass_s_per_sample"], passes)
        out.update(timing, per_sample_s=per_sample, seconds=per_sample * len(samples) / max(1, workers))
    seq = longest_sequence(lm.tokenizer, samples) if samples else 1
    device = next(lm.model.parameters()).device
    peak = estimate_scoring_peak(lm.model, seq, settings.batch_size, settings.method, settings.steps)
    free = available_memory(device)
    out.update(peak_bytes=peak, available_bytes=free, batch_size=settings.batch_size, warning=None)
    if peak > 0.9 * free:
        try:
            fits, _ = fit_batch_size(lambda b: estimate_scoring_peak(lm.model, seq, b, settings.method,
                                                                     settings.steps), settings.batch_size, free)
            out["warning"] = (f"batch size {settings.batch_size} would peak at about {format_bytes(peak)} with "
                              f"{format_bytes(free)} free; batch size {fits} fits")
            out["batch_size"] = fits
        except Exception as exc:  # NotEnoughMemory: even one sample does not fit
            out["warning"] = str(exc)
    return out


def with_preparation(e: dict, preparation: dict) -> dict:
    """An estimate with the work before the job's first step (`jobs.estimate_preparation`) added."""
    return {**e, "seconds": e.get("seconds", 0.0) + preparation["seconds"], "preparation_s": preparation["seconds"]}


def _preparation(e: dict) -> str:
    return f", {e['preparation_s'] / 60:.1f} min of it before the first step" if e.get("preparation_s") else ""


def describe(e: dict) -> str:
    """One line for the command line or the app."""
    text = f"estimate: {e['samples']} samples, {e['passes']} forward+backward pass(es) each"
    if "seconds" in e:
        text += (f", about {e['seconds'] / 60:.1f} min ({e['per_sample_s']:.2f} s/sample{_preparation(e)}"
                 + (f" over {e['workers']} workers" if e["workers"] > 1 else "") + f"; probe {e['probe_s']} s)")
    text += f"; peak memory about {format_bytes(e['peak_bytes'])} of {format_bytes(e['available_bytes'])} free"
    return text + (f". Warning: {e['warning']}" if e["warning"] else "")


# the validation's cost (pure NumPy, 2 CPU cores): seconds per (sample × (permutations + 1) × million
# graph edges) plus seconds per bootstrap resample, fitted to two measured calibrations on SmolLM2
# (122 samples, 200 permutations, 2,000 resamples: 329 s; 24, 50, 500: 74 s); and seconds per (sample ×
# bootstrap resample) of one ablation cell (the 24 cells of a setting took 21.5–32.3 s, mean 27.3 s,
# at 122 × 2,000 over 9 settings on world-facts, 2026-11-29, after the faster greedy circuits)
VALIDATION_PERMUTATION_S = 0.013
VALIDATION_RESAMPLE_S = 0.145
CELL_S = 4.7e-6


def padded_tokens(lengths: list[int], batch: int) -> int:
    """Tokens a pass over `lengths` in order, in batches of `batch`, computes (each batch padded to its longest)."""
    return sum(len(c) * max(c) for c in (lengths[i: i + batch] for i in range(0, len(lengths), batch)))


def random_batch_tokens(lengths: list[int], batch: int, draws: int = 200) -> float:
    """Expected padded tokens of a random training batch (seeded draws)."""
    rng = random.Random(0)
    b = min(batch, len(lengths))
    return sum(b * max(rng.sample(lengths, b)) for _ in range(draws)) / draws


def probe_training(lm, samples) -> dict:
    """Seconds per padded token of a forward and of a forward+backward, and per parameter of one AdamW
    update, on this machine (about 1/3 of the scoring probe's time; no .grad is left on the model)."""
    import torch

    t0 = time.perf_counter()
    model = lm.model
    batch = _probe_batch(lm, samples)
    b = collate(lm.tokenizer, batch).to(next(model.parameters()).device)
    tokens = b.input_ids.numel()
    with torch.no_grad():
        t = time.perf_counter()
        model(input_ids=b.input_ids, attention_mask=b.attention_mask)
        fwd = (time.perf_counter() - t) / tokens
    with parameter_grads(model, True) as params, torch.enable_grad():
        t = time.perf_counter()
        torch.autograd.grad(nll(model, b), params, allow_unused=True)
        fb = (time.perf_counter() - t) / tokens
    w = torch.zeros(1 << 21, requires_grad=True, device=params[0].device)
    w.grad = torch.ones_like(w)
    opt = torch.optim.AdamW([w], lr=1e-5)
    opt.step()  # state allocation
    t = time.perf_counter()
    opt.step()
    adam = (time.perf_counter() - t) / w.numel()
    return {"fwd_s_per_token": fwd, "fb_s_per_token": fb, "adam_s_per_param": adam,
            "n_params": sum(p.numel() for p in params), "probe_s": round(time.perf_counter() - t0, 2)}


def unlearning_seconds(probe: dict, method: str, hyper: dict, n_layers: int, forget_lengths: list[int],
                       retain_lengths: list[int], steps: int, eval_every: int, batch_size: int,
                       retain_eval: int = 32, holdout_lengths: list[int] = ()) -> dict:
    """One unlearning run's training and evaluation seconds from a `probe_training` probe (`holdout_lengths`:
    the held-out samples evaluated with the forget set)."""
    cls = METHODS[method]
    student, reference = cls.passes(cls.resolve(hyper), n_layers)
    train_tokens = random_batch_tokens(forget_lengths + retain_lengths, batch_size)
    step = (student * probe["fb_s_per_token"] + reference * probe["fwd_s_per_token"]) * train_tokens \
        + probe["adam_s_per_param"] * probe["n_params"]
    n_evals = 1 + steps // eval_every + (steps % eval_every != 0)
    probe_lengths = random.Random(0).sample(retain_lengths, min(retain_eval, len(retain_lengths)))
    eval_tokens = padded_tokens(forget_lengths, max(batch_size, EVAL_BATCH)) + \
        padded_tokens(probe_lengths, max(batch_size, EVAL_BATCH)) + \
        (padded_tokens(list(holdout_lengths), max(batch_size, EVAL_BATCH)) if holdout_lengths else 0)
    return {"train_s": steps * step, "eval_s": n_evals * eval_tokens * probe["fwd_s_per_token"],
            "step_s": step, "evaluations": n_evals}


def makespan(durations: list[float], workers: int) -> float:
    """Wall time of independent units on `workers` (longest first to the least loaded worker)."""
    loads = [0.0] * max(1, workers)
    for d in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += d
    return max(loads, default=0.0)


def estimate_unlearning(lm, forget, retain, method: str, steps: int, eval_every: int, batch_size: int,
                        hyper: dict | None = None, timing: dict | None = None) -> dict:
    """{"seconds", "train_s", "eval_s", "step_s", "evaluations", "probe_s"} for one unlearning run;
    `timing`: a `probe_training` result to use instead of timing one now."""
    probe = timing or probe_training(lm, forget)
    out = unlearning_seconds(probe, method, hyper or {}, Graph.from_model(lm.model).n_layers,
                             token_lengths(lm.tokenizer, forget), token_lengths(lm.tokenizer, retain), steps,
                             eval_every, batch_size)
    return {**out, "seconds": out["train_s"] + out["eval_s"], "probe_s": probe["probe_s"], "kind": "unlearn",
            "method": method, "steps": steps}


def probe_calibrate(lm, forget, settings) -> dict:
    """The two timing probes a calibration estimate uses: {"scoring": `probe_scoring`, "training":
    `probe_training`}."""
    return {"scoring": probe_scoring(lm, forget, settings.score), "training": probe_training(lm, forget)}


def estimate_calibrate(lm, forget, retain, settings, workers: int = 1, pending: dict | None = None,
                       timing: dict | None = None) -> dict:
    """Scoring + the (method, seed) runs (spread over `workers`) + baseline predictors + validation.
    `pending` (`calibration.pending`): count only what a restarted calibration still has to do — the
    samples not scored yet, the runs neither stored nor reusable, and for a reusable run its check
    (`reuse.CHECK_STEPS` steps and two evaluations). `timing`: a `probe_calibrate` result to use instead
    of timing the probes now (estimates compared with each other must share one)."""
    graph = Graph.from_model(lm.model)
    timing = timing or (probe_calibrate(lm, forget, settings) if forget else {"scoring": None, "training": None})
    score = estimate_score(lm, forget, settings.score, workers=workers, timing=timing["scoring"])
    probe = timing["training"] or probe_training(lm, forget)
    fl, rl = token_lengths(lm.tokenizer, forget), token_lengths(lm.tokenizer, retain)
    held = held_out(retain, settings.seed)[1] if settings.protocol is not None else []
    sets = settings.forget_sets  # each set's runs evaluate that set only, and there are `sets` of them
    part = fl[:max(1, len(fl) // sets)]
    runs = {m: unlearning_seconds(probe, m, {}, graph.n_layers, part, rl, settings.steps, settings.eval_every,
                                  settings.batch_size, holdout_lengths=token_lengths(lm.tokenizer, held) if held
                                  else ()) for m in settings.methods}
    # the operating-point protocol: a first seed may try 1 + max(len(up), len(down)) learning rates; a run
    # may end at its point (at least: one run per unit, ended at its first evaluation)
    tries = max_tries(settings, None)
    evaluations = settings.steps // settings.eval_every + 1 + (settings.steps % settings.eval_every > 0)
    check = {m: r["train_s"] * min(CHECK_STEPS, settings.steps) / settings.steps + 2 * r["eval_s"] / evaluations
             for m, r in runs.items()}
    p = pending or {"scored": 0, "to_run": [(m, s) for s in settings.seeds for m in settings.methods], "reusable": []}
    full = {m: r["train_s"] + r["eval_s"] for m, r in runs.items()}
    units = [full[m] * (tries if s == settings.seeds[0] else 1) for m, s in p["to_run"]] * sets + \
        [check[m] for m, _ in p["reusable"]]
    unlearning = makespan(units, workers) if units else 0.0
    shortest = {m: r["eval_s"] * 2 / r["evaluations"] + r["train_s"] * min(settings.eval_every, settings.steps)
                / settings.steps for m, r in runs.items()}
    low = [shortest[m] if settings.protocol is not None else full[m] for m, _ in p["to_run"]] * sets + \
        [check[m] for m, _ in p["reusable"]]
    if forget and "seconds" in score:
        score["seconds"] *= (len(forget) - p["scored"]) / len(forget)
    forward = padded_tokens(fl, settings.batch_size) * probe["fwd_s_per_token"]
    mrd = (1 + MRD_DRAWS) * forward
    group_s = {"mrd": mrd, "hidden": forward}  # what each stale group costs (`calibration.GROUPS`)
    predictors = mrd + forward + sum(fl) * probe["fb_s_per_token"]
    validation = VALIDATION_PERMUTATION_S * len(forget) * (settings.n_permutations + 1) * graph.n_edges / 1e6 \
        + VALIDATION_RESAMPLE_S * settings.n_boot
    stages = {"scoring_s": score.get("seconds", 0.0), "unlearning_s": unlearning, "predictors_s": predictors,
              "validation_s": validation}
    if pending and pending.get("predictors"):
        stages["predictors_s"] = 0.0
    elif pending and pending.get("stale"):  # only the stale groups are recomputed
        stages["predictors_s"] = sum(group_s[g] for g in pending["stale"])
    if pending and pending.get("done"):
        stages = dict.fromkeys(stages, 0.0)
    return {"kind": "calibrate", "seconds": sum(stages.values()), "stages": stages, "units": len(units),
            "unlearning_low_s": 0.0 if pending and pending.get("done") else makespan(low, workers) if low else 0.0,
            "protocol": settings.protocol is not None,
            "pending": pending,
            "per_method_s": {m: r["train_s"] + r["eval_s"] for m, r in runs.items()}, "workers": workers,
            "samples": len(forget), "peak_bytes": score["peak_bytes"], "available_bytes": score["available_bytes"],
            "warning": score["warning"], "batch_size": score["batch_size"],
            "probe_s": round(score.get("probe_s", 0) + probe["probe_s"], 2)}


def estimate_ablate(lm, forget, base_settings, settings_to_run: list[tuple[str, str, str]], n_boot: int,
                    workers: int = 1, scored=()) -> dict:
    """One scoring per unit of attribution settings still to run (`ablation.scoring_units`: the metrics
    of a method and baseline share their passes; one probe shared) + each setting's 24 cells; the
    settings in `scored` (`ablation.scored_settings`: scoring runs the workspace has) cost only their cells."""
    graph = Graph.from_model(lm.model)
    first = estimate_score(lm, forget, base_settings, workers=workers)
    seconds = 0.0
    for unit in scoring_units(settings_to_run, set(scored)):
        if unit[0] not in scored:
            per_sample = seconds_per_sample(first["metrics_s_per_sample"], first["pass_s_per_sample"],
                                            attribution_passes(unit[0][0], base_settings.steps, graph.n_layers))
            seconds += per_sample * len(forget) / max(1, workers)
    for setting in settings_to_run:  # the cells of a setting run one circuit size per unit
        seconds += CELLS_PER_SETTING * CELL_S * len(forget) * n_boot / min(max(1, workers), len(GRID["n_edges"]))
    return {**first, "kind": "ablate", "seconds": seconds, "settings": len(settings_to_run) - len(scored),
            "scored": len(scored)}


def describe_run(e: dict) -> str:
    """One line for calibrate / unlearn / ablate estimates."""
    text = f"estimate: about {e['seconds'] / 60:.1f} min"
    if e.get("preparation_s") and e["kind"] != "calibrate":
        text += f" ({e['preparation_s'] / 60:.1f} min of it before the first step)"
    if e["kind"] == "calibrate":
        st = e["stages"]
        prep = f"before the first step {e['preparation_s'] / 60:.1f}, " if e.get("preparation_s") else ""
        unlearning = (f"unlearning {e['unlearning_low_s'] / 60:.1f} to {st['unlearning_s'] / 60:.1f} for "
                      f"{e['units']} units (runs end at their operating point; a learning-rate search adds runs)"
                      if e.get("protocol") else f"unlearning {st['unlearning_s'] / 60:.1f} for {e['units']} runs")
        text += (f" ({prep}scoring {st['scoring_s'] / 60:.1f}, {unlearning}, predictors {st['predictors_s'] / 60:.1f}, "
                 f"validation {st['validation_s'] / 60:.1f} min"
                 + (f"; {e['workers']} workers" if e["workers"] > 1 else "") + ")")
        p = e.get("pending")
        if p and p["done"]:
            text += "; already done in this workspace"
        elif p and (p["scored"] or p["stored"] or p["reusable"]):
            text += (f"; still to do: {e['samples'] - p['scored']} of {e['samples']} samples to score, "
                     f"{len(p['to_run'])} unlearning runs to run ({len(p['stored'])} stored, {len(p['reusable'])} "
                     "reusable from another calibration after a two-step check)"
                     + (f"; predictors stored under an older definition or missing ({', '.join(p['stale'])}): "
                        "computed, then the validation" if p.get("stale") else ""))
    elif e["kind"] == "unlearn":
        text += (f" ({e['steps']} steps of {e['method']} at {e['step_s']:.1f} s, {e['evaluations']} evaluations "
                 f"{e['eval_s'] / 60:.1f} min)")
    elif e["kind"] == "ablate":
        text += (f" ({e['settings']} attribution settings to score"
                 + (f", {e['scored']} already scored in this workspace" if e.get("scored") else "")
                 + f"; {CELLS_PER_SETTING} cells each)")
    if "peak_bytes" in e:
        text += (f"; scoring peak memory about {format_bytes(e['peak_bytes'])} of "
                 f"{format_bytes(e['available_bytes'])} free")
    text += f"; probe {e['probe_s']} s"
    return text + (f". Warning: {e['warning']}" if e.get("warning") else "")
