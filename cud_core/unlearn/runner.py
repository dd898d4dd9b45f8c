"""Running one unlearning method on a copy of the model, streaming the forgetting curve."""
from __future__ import annotations

import copy
import math
import numbers
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from cud_core.data.samples import Sample
from cud_core.engine.metrics import collate, compute_metrics, teacher_forced_metrics
from cud_core.engine.stopping import Interrupted, interruptible
from cud_core.unlearn.checkpoint import Checkpoint
from cud_core.unlearn.registry import METHODS

# the learning rate when none is given: open-unlearning uses 1e-5 for 1B-scale models; the small
# CPU default (135M parameters, a few dozen steps) needs a larger one to forget anything
DEFAULT_LR = 2e-5
LARGE_MODEL_LR = 1e-5
LARGE_MODEL_PARAMETERS = 500_000_000
# evaluations are forward-only (no gradient): larger batches make the forgetting curve cheap (3x on a
# 2-core CPU for the 135M default: 64 samples in 21 s at 32 vs 68 s at 8)
EVAL_BATCH = 32


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
    holdout_curve: list[dict] = field(default_factory=list)  # per evaluation, held-out {"nll", "exact_match"}
    holdout_rouge: float | None = None                       # held-out greedy ROUGE-L recall at the end
    losses: list[float] = field(default_factory=list)        # training loss at every step
    stopped: bool = False                                    # by the user (Stop): resumable
    ended_early: bool = False                                # by `stop_when` before the step budget
    model: torch.nn.Module | None = None
    before: dict = field(default_factory=dict)               # {"forget"/"retain": {id: metrics}} before
    after: dict = field(default_factory=dict)                # ... and after unlearning

    def final_nll(self) -> dict[str, float]:
        return dict(self.curve[-1]) if self.curve else {}

    def evaluation(self, i: int) -> dict:
        e = {"step": self.steps[i], "elapsed": self.elapsed[i], "forget_nll": self.curve[i],
             "forget_prob": self.prob_curve[i], "retain_nll": self.retain_curve[i]}
        return {**e, "holdout": self.holdout_curve[i]} if self.holdout_curve else e


class NonFiniteLoss(RuntimeError):
    """The training loss (or an evaluated NLL) became NaN or infinite: the run is meaningless."""

    def __init__(self, step: int, what: str = "loss"):
        self.step = step
        hint = "try a lower learning rate" if step else "the original model already gives it; try float32"
        super().__init__(f"non-finite {what} at step {step} ({hint})")


def check_settings(method: str, steps: int, lr: float | None, eval_every: int, batch_size: int,
                   hyper: dict | None = None, checkpoint_every: int = 1) -> None:
    """ValueError naming the first unusable unlearning setting, before any model work."""
    if method not in METHODS:
        raise ValueError(f"unknown unlearning method {method!r}; choose one of {', '.join(METHODS)}")
    for name, value, low in (("steps", steps, 1), ("eval_every", eval_every, 1), ("batch_size", batch_size, 1),
                             ("checkpoint_every", checkpoint_every, 0)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be a whole number ≥ {low}, got {value!r}")
    if lr is not None and not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr >= 0):
        raise ValueError(f"the learning rate must be a finite number ≥ 0 (0: a control run), got {lr!r}")
    METHODS[method].check_hyper(hyper or {})


def run_unlearning(model, tokenizer, forget: list[Sample], retain: list[Sample], method: str = "npo",
                   steps: int = 30, lr: float | None = None, eval_every: int = 5, seed: int = 0, *,
                   batch_size: int = 8, retain_eval: int = 32, final_metrics: bool = False,
                   callback: Callable[[dict], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, checkpoint: str | Path | None = None,
                   checkpoint_every: int = 1, holdout: list[Sample] | None = None,
                   stop_when: Callable[[UnlearnResult], bool] | None = None, **hyper) -> UnlearnResult:
    """Unlearn `forget` from a copy of `model` (the original is never modified).

    `checkpoint`: a file where the trained parameters, the optimizer state and the curve so far are
    saved (atomically) every `checkpoint_every` evaluations, less often where saving would take more
    than 10% of the run's time (a Stop does not save: it takes effect at once, and a rerun continues
    from the last checkpoint, at most one evaluation interval back); when it already holds a checkpoint of
    the same settings, training continues from it and ends exactly where an uninterrupted run would.
    The caller removes it once the result is stored. Raises NonFiniteLoss when training diverges.

    `holdout`: known facts no loss sees, evaluated with the forget set (held-out utility: mean answer NLL
    and teacher-forced exact match per evaluation, greedy ROUGE-L recall at the end). `stop_when(result)`,
    asked after each evaluation past step 0: True ends training there (`result.ended_early`)."""
    check_settings(method, steps, lr, eval_every, batch_size, hyper, checkpoint_every)
    if not forget:
        raise ValueError("the forget set is empty")
    if not retain and method != "grad_ascent":
        raise ValueError(f"{method} needs retain samples (only grad_ascent works without)")
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
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)  # open-unlearning configs/trainer/finetune.yaml
    settings = {"method": method, "steps": steps, "lr": lr, "eval_every": eval_every, "seed": seed,
                "batch_size": batch_size, "hyper": algo.hyper, "n_forget": len(forget), "n_retain": len(retain),
                "n_holdout": len(holdout or [])}
    result = UnlearnResult(method, settings)
    retain_probe = rng.sample(retain, min(retain_eval, len(retain))) if retain else []
    saver = Checkpoint(checkpoint, model, settings, forget, retain) if checkpoint else None
    try:
        start = saver.restore(student, opt, result) if saver else 0
        t0 = time.time() - (result.elapsed[-1] if result.elapsed else 0.0)
        with interruptible(student, should_stop):
            _train(algo, opt, student, tokenizer, forget, retain, retain_probe, holdout or [], result, start, steps,
                   eval_every, seed, batch_size, device, callback, should_stop, stop_when, saver, checkpoint_every,
                   t0)
            if holdout and not final_metrics:  # else it comes with the metrics after
                result.holdout_rouge = holdout_rouge(student, tokenizer, holdout, batch_size)
    except Interrupted:  # a Stop inside a pass: the run resumes from its last periodic checkpoint
        opt.zero_grad(set_to_none=True)  # (taken at evaluations) rather than paying a ~4 s save now
        result.stopped = True
    for p in student.parameters():
        p.requires_grad_(False)
    result.model = student
    if final_metrics and not result.stopped:  # the original's metrics too: after training, so that the first
        # step comes within seconds (greedy answers of 40 samples take ~20 s on a laptop CPU)
        try:
            with interruptible(model, should_stop):
                result.before = _metrics_by_id(model, tokenizer, forget, retain_probe, batch_size, holdout)
        except Interrupted:
            result.stopped = True
            return result
        result.after = _metrics_by_id(student, tokenizer, forget, retain_probe, batch_size, holdout)
        if holdout:
            result.holdout_rouge = mean_rouge(result.after["holdout"].values())
    return result


def _train(algo, opt, student, tokenizer, forget, retain, retain_probe, holdout, result, start, steps, eval_every,
           seed, batch_size, device, callback, should_stop, stop_when, saver, checkpoint_every, t0) -> None:
    """Training steps start+1 … steps, evaluating every `eval_every` steps (and step 0), until `stop_when`."""
    def evaluate(step):
        eval_batch = max(batch_size, EVAL_BATCH)
        rows = teacher_forced_metrics(student, tokenizer, forget, eval_batch)
        retain_rows = teacher_forced_metrics(student, tokenizer, retain_probe, eval_batch) if retain_probe else []
        if holdout:
            result.holdout_curve.append(held_out_utility(teacher_forced_metrics(student, tokenizer, holdout,
                                                                                eval_batch)))
        result.steps.append(step)
        result.elapsed.append(time.time() - t0)
        result.curve.append({s.id: r["answer_nll"] for s, r in zip(forget, rows)})
        result.prob_curve.append({s.id: r["answer_prob"] for s, r in zip(forget, rows)})
        result.retain_curve.append(sum(r["answer_nll"] for r in retain_rows) / max(1, len(retain_rows)))
        if not all(math.isfinite(v) for v in result.curve[-1].values()):
            raise NonFiniteLoss(step, "answer NLL")
        if callback:
            callback(result.evaluation(len(result.steps) - 1))
        if saver and 0 < step < steps and checkpoint_every and \
                (len(result.steps) - 1) % checkpoint_every == 0 and saver.due():
            saver.save(student, opt, result, step)

    if callback:  # replay what an interrupted run had evaluated, so listeners see the whole curve
        for i in range(len(result.steps)):
            callback(result.evaluation(i))
    def ends():
        result.ended_early = bool(stop_when and result.steps[-1] > 0 and stop_when(result))
        return result.ended_early

    if not result.steps:
        evaluate(0)
    elif start and result.steps[-1] < start and (start % eval_every == 0 or start == steps):
        evaluate(start)  # the run was stopped during this evaluation
    if ends():
        return
    for step in range(start + 1, steps + 1):
        if should_stop and should_stop():
            raise Interrupted("stopped by the user")
        f = collate(tokenizer, _batch_at(forget, batch_size, seed, step, "forget")).to(device)
        r = collate(tokenizer, _batch_at(retain, batch_size, seed, step, "retain")).to(device) if retain else f
        with torch.enable_grad():
            loss = algo.loss(f, r)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        result.losses.append(loss.detach().item())
        if step % eval_every == 0 or step == steps:
            evaluate(step)
            if ends():
                return


def _batch_at(samples: list[Sample], batch_size: int, seed: int, step: int, stream: str) -> list[Sample]:
    """The batch of training step `step` (1-based): each pass over `samples` is a fresh seeded shuffle
    cut into batches. A pure function of its arguments, so a resumed run sees the same batches."""
    per_pass = math.ceil(len(samples) / batch_size)
    epoch, k = divmod(step - 1, per_pass)
    order = samples[:]
    random.Random(f"{stream}:{seed}:{epoch}").shuffle(order)
    return order[k * batch_size: (k + 1) * batch_size]


def held_out_utility(rows: list[dict]) -> dict:
    """Held-out utility of one evaluation (`difficulty.regimes`): the mean answer NLL and the mean
    teacher-forced exact match of the held-out samples' rows."""
    return {"nll": sum(r["answer_nll"] for r in rows) / len(rows),
            "exact_match": sum(r["exact_match"] for r in rows) / len(rows)}


def holdout_rouge(model, tokenizer, holdout: list[Sample], batch_size: int) -> float:
    """Mean ROUGE-L recall of `model`'s greedy answers to `holdout` (`difficulty.regimes`)."""
    return mean_rouge(compute_metrics(model, tokenizer, holdout, batch_size=max(batch_size, EVAL_BATCH)))


def mean_rouge(rows) -> float:
    """The mean ROUGE-L recall of `compute_metrics` rows."""
    rows = list(rows)
    return sum(r["rouge_l_recall"] for r in rows) / len(rows)


def _metrics_by_id(model, tokenizer, forget, retain, batch_size, holdout=None) -> dict:
    out = {}
    for name, group in (("forget", forget), ("retain", retain), *((("holdout", holdout),) if holdout else ())):
        rows = compute_metrics(model, tokenizer, group, batch_size=batch_size) if group else []
        out[name] = {r.pop("id"): r for r in rows}
    return out
