"""Checkpoints of an unlearning run: what a rerun needs to continue exactly where a killed run was.

One safetensors file (no pickle): the parameters the method trains, AdamW's state for each, and the
evaluations so far (JSON, stored as a byte tensor so that no header limit applies). It is written
atomically one tensor at a time, and only restored into a run of the same settings, samples and
original model.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from cud_core.data.samples import sample_key
from cud_core.engine.models import legacy_fingerprints, model_fingerprint
from cud_core.store.atomic import atomic_write_safetensors

STATE = "__state__"
RESULT_FIELDS = ("steps", "elapsed", "curve", "prob_curve", "retain_curve", "holdout_curve",
                 "losses")
# at most this share of a run's time goes to checkpoints: after a save that took d seconds, the next
# one is due only d·(1/MAX_OVERHEAD − 1) seconds later (a 135M model's 1.5 GB take ~4 s on a laptop)
MAX_OVERHEAD = 0.1


class Checkpoint:
    def __init__(self, path: str | Path, original, settings: dict, forget, retain):
        self.path = Path(path)
        samples = [[sample_key(s) for s in forget], [sample_key(s) for s in retain]]

        def key(fingerprint: str) -> str:
            return hashlib.sha256(json.dumps([settings, fingerprint, *samples], sort_keys=True,
                                             default=str).encode()).hexdigest()
        self.key = key(model_fingerprint(original))
        # a checkpoint written under a legacy fingerprint of the same model is still this run's
        self.accepted = {self.key} | {key(f) for f in legacy_fingerprints(original)}
        self._last: tuple[float, float] | None = None  # (duration, end) of the last save

    def due(self) -> bool:
        """Whether enough time has passed since the last save to keep checkpoints under MAX_OVERHEAD."""
        if self._last is None:
            return True
        duration, end = self._last
        return time.monotonic() - end >= duration * (1 / MAX_OVERHEAD - 1)

    def save(self, model, opt, result, step: int) -> None:
        """Everything needed to continue after training step `step`."""
        start = time.monotonic()
        names = {id(p): n for n, p in model.named_parameters()}
        tensors = {}
        for p in opt.param_groups[0]["params"]:
            tensors[f"param/{names[id(p)]}"] = p.detach()
            for k, v in opt.state.get(p, {}).items():
                tensors[f"{k}/{names[id(p)]}"] = v.detach()
        state = {"key": self.key, "step": step, **{f: getattr(result, f) for f in RESULT_FIELDS}}
        tensors[STATE] = torch.frombuffer(bytearray(json.dumps(state).encode()), dtype=torch.uint8)
        atomic_write_safetensors(self.path, tensors)
        self._last = (time.monotonic() - start, time.monotonic())

    def restore(self, model, opt, result) -> int:
        """Load a matching checkpoint into `model`, `opt` and `result`; returns the training step it
        was taken after (0 when there is none, or it belongs to other settings or is unreadable)."""
        from safetensors import SafetensorError, safe_open

        if not self.path.is_file():
            return 0
        try:
            with safe_open(str(self.path), "pt") as f:
                state = json.loads(f.get_tensor(STATE).numpy().tobytes()) if STATE in f.keys() else {}
                if state.get("key") not in self.accepted:
                    return 0
                tensors = {k: f.get_tensor(k) for k in f.keys() if k != STATE}
        except (SafetensorError, OSError, ValueError):  # a damaged file: start afresh
            return 0
        by_name: dict[str, dict] = {}
        for key, value in tensors.items():
            kind, name = key.split("/", 1)
            by_name.setdefault(name, {})[kind] = value
        names = {id(p): n for n, p in model.named_parameters()}
        with torch.no_grad():
            for p in opt.param_groups[0]["params"]:
                saved = by_name[names[id(p)]]
                p.copy_(saved.pop("param"))
                # AdamW keeps its step count on the CPU, its moments beside the parameter
                opt.state[p] = {k: v if k == "step" else v.to(p.device) for k, v in saved.items()}
        for name in RESULT_FIELDS:
            setattr(result, name, state[name])
        return int(state["step"])
