"""Cost estimate before a scoring run (issue #11 item 4): wall time and peak memory.

Time = (samples to score) × (one sample's cost) / workers, where one sample's cost comes from a
timing probe on this machine: a plain EAP pass (one clean forward, one corrupted forward and one
backward) and the per-sample metrics on a small batch of the samples nearest the median length,
scaled by the number of forward+backward passes the attribution method needs
(`attribution_passes`). Peak memory is `memory.estimate_scoring_peak` at the longest sample; when it
exceeds the device's free memory the largest batch that fits is suggested. `bench/estimate.py`
measures the error against real runs.
"""
from __future__ import annotations

import time

from .memory import available_memory, estimate_scoring_peak, fit_batch_size, format_bytes, longest_sequence

PROBE_SAMPLES = 4


def attribution_passes(method: str, steps: int, n_layers: int) -> int:
    """Forward+backward passes per batch (see `attribution`'s docstring): EAP 1, EAP-IG-inputs `steps`,
    EAP-IG-activations (either aggregation) 1 + (2L + 1)·(steps − 1)."""
    if method == "eap":
        return 1
    if method == "eap-ig-inputs":
        return steps
    return 1 + (2 * n_layers + 1) * (steps - 1)


def estimate_score(lm, samples, settings, workers: int = 1, probe: bool = True) -> dict:
    """{"seconds", "per_sample_s", "probe_s", "peak_bytes", "available_bytes", "batch_size", "warning"}."""
    from .attribution import attribute
    from .data import encode
    from .graph import Graph
    from .metrics import compute_metrics

    graph = Graph.from_model(lm.model)
    passes = attribution_passes(settings.method, settings.steps, graph.n_layers)
    out = {"samples": len(samples), "passes": passes, "workers": workers}
    if probe and samples:
        ranked = sorted(samples, key=lambda s: len(encode(lm.tokenizer, s)[0]))
        mid = len(ranked) // 2
        batch = ranked[max(0, mid - PROBE_SAMPLES // 2): max(0, mid - PROBE_SAMPLES // 2) + PROBE_SAMPLES]
        t = time.perf_counter()
        compute_metrics(lm.model, lm.tokenizer, batch, batch_size=len(batch), generate=settings.generation)
        metrics_s = time.perf_counter() - t
        t = time.perf_counter()
        attribute(lm.model, lm.tokenizer, batch, method="eap", metric=settings.metric, batch_size=len(batch),
                  graph=graph)
        eap_s = time.perf_counter() - t
        per_sample = (metrics_s + eap_s * passes) / len(batch)
        out.update(probe_s=round(metrics_s + eap_s, 2), per_sample_s=per_sample,
                   seconds=per_sample * len(samples) / max(1, workers))
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


def describe(e: dict) -> str:
    """One line for the command line or the app."""
    text = f"estimate: {e['samples']} samples, {e['passes']} forward+backward pass(es) each"
    if "seconds" in e:
        text += (f", about {e['seconds'] / 60:.1f} min ({e['per_sample_s']:.2f} s/sample"
                 + (f" over {e['workers']} workers" if e["workers"] > 1 else "") + f"; probe {e['probe_s']} s)")
    text += f"; peak memory about {format_bytes(e['peak_bytes'])} of {format_bytes(e['available_bytes'])} free"
    return text + (f". Warning: {e['warning']}" if e["warning"] else "")
