"""Running one unlearning method on a copy of the model, streaming the forgetting curve."""
from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..data import Sample
from ..metrics import chunks, collate, compute_metrics, teacher_forced_metrics

# the learning rate when none is given: open-unlearning uses 1e-5 for 1B-scale models; the small
# CPU default (135M parameters, a few dozen steps) needs a larger one to forget anything
DEFAULT_LR = 2e-5
LARGE_MODEL_LR = 1e-5
LARGE_MODEL_PARAMETERS = 500_000_000


def default_lr(model) -> float:
    n = sum(p.numel() for p in model.parameters())
    return LARGE_MODEL_LR if n >= LARGE_MODEL_PARAMETERS else DEFAULT_LR


@dataclass
class UnlearnResult:
    method: str
    settings: dict
    steps: list[int] = field(default_factory=list)          # step of each evaluation (first = 0)
    elapsed: list[float] = field(default_factory=list)      # seconds since start at each evaluation
    curve: list[dict] = field(default_factory=list)         # per evaluation {sample_id: answer NLL}
    prob_curve: list[dict] = field(default_factory=list)    # per evaluation {sample_id: answer probability}
    retain_curve: list[float] = field(default_factory=list)  # per evaluation, mean retain answer NLL
    losses: list[float] = field(default_factory=list)        # training loss at every step
    stopped: bool = False
    model: torch.nn.Module | None = None
    before: dict = field(default_factory=dict)               # {"forget"/"retain": {id: metrics}} before
    after: dict = field(default_factory=dict)                # ... and after unlearning

    def final_nll(self) -> dict[str, float]:
        return dict(self.curve[-1]) if self.curve else {}

    def evaluation(self, i: int) -> dict:
        return {"step": self.steps[i], "elapsed": self.elapsed[i], "forget_nll": self.curve[i],
                "forget_prob": self.prob_curve[i], "retain_nll": self.retain_curve[i]}


def run_unlearning(model, tokenizer, forget: list[Sample], retain: list[Sample], method: str = "npo",
                   steps: int = 30, lr: float | None = None, eval_every: int = 5, seed: int = 0, *,
                   batch_size: int = 8, retain_eval: int = 32, final_metrics: bool = False,
                   callback: Callable[[dict], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, **hyper) -> UnlearnResult:
    """Unlearn `forget` from a copy of `model` (the original is never modified)."""
    from . import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown unlearning method {method!r}; choose one of {', '.join(METHODS)}")
    if not forget:
        raise ValueError("the forget set is empty")
    if not retain and method != "grad_ascent":
        raise ValueError(f"{method} needs retain samples (only grad_ascent works without)")
    if steps < 0 or eval_every < 1:
        raise ValueError(f"steps must be ≥ 0 and eval_every ≥ 1 (got {steps}, {eval_every})")
    lr = default_lr(model) if lr is None else lr
    torch.manual_seed(seed)
    rng = random.Random(seed)
    device = next(model.parameters()).device
    student = copy.deepcopy(model).eval()  # eval: no dropout; gradients still flow
    for p in student.parameters():
        p.requires_grad_(False)
    algo = METHODS[method](student, model, **hyper)
    params = list(algo.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr)
    settings = {"method": method, "steps": steps, "lr": lr, "eval_every": eval_every, "seed": seed,
                "batch_size": batch_size, "hyper": algo.hyper, "n_forget": len(forget), "n_retain": len(retain)}
    result = UnlearnResult(method, settings)
    retain_probe = rng.sample(retain, min(retain_eval, len(retain))) if retain else []
    if final_metrics:
        result.before = _metrics_by_id(model, tokenizer, forget, retain_probe, batch_size)
    t0 = time.time()

    def evaluate(step):
        rows = teacher_forced_metrics(student, tokenizer, forget, batch_size)
        retain_rows = teacher_forced_metrics(student, tokenizer, retain_probe, batch_size) if retain_probe else []
        result.steps.append(step)
        result.elapsed.append(time.time() - t0)
        result.curve.append({s.id: r["answer_nll"] for s, r in zip(forget, rows)})
        result.prob_curve.append({s.id: r["answer_prob"] for s, r in zip(forget, rows)})
        result.retain_curve.append(sum(r["answer_nll"] for r in retain_rows) / max(1, len(retain_rows)))
        if callback:
            callback(result.evaluation(len(result.steps) - 1))

    forget_batches = _cycle(forget, batch_size, rng)
    retain_batches = _cycle(retain, batch_size, rng) if retain else None
    evaluate(0)
    for step in range(1, steps + 1):
        if should_stop and should_stop():
            result.stopped = True
            break
        f = collate(tokenizer, next(forget_batches)).to(device)
        r = collate(tokenizer, next(retain_batches)).to(device) if retain_batches else f
        with torch.enable_grad():
            loss = algo.loss(f, r)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        result.losses.append(loss.detach().item())
        if step % eval_every == 0 or step == steps:
            evaluate(step)
    if result.steps[-1] != len(result.losses):  # stopped between evaluations: log where it ended
        evaluate(len(result.losses))
    for p in student.parameters():
        p.requires_grad_(False)
    result.model = student
    if final_metrics:
        result.after = _metrics_by_id(student, tokenizer, forget, retain_probe, batch_size)
    return result


def _cycle(samples, batch_size, rng):
    while True:
        order = samples[:]
        rng.shuffle(order)
        yield from chunks(order, batch_size)


def _metrics_by_id(model, tokenizer, forget, retain, batch_size) -> dict:
    out = {}
    for name, group in (("forget", forget), ("retain", retain)):
        rows = compute_metrics(model, tokenizer, group, batch_size=batch_size) if group else []
        out[name] = {r.pop("id"): r for r in rows}
    return out
