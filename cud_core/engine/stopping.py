"""Stopping long work promptly: a Stop takes effect inside a forward or backward pass, not only
between batches or training steps (a Stop takes effect within 5 s).

`interruptible(model, should_stop)` hooks every module that holds parameters: a forward pre-hook
checks the flag before each module runs, and the module's output gets a gradient hook that checks
it during the backward pass. The hooks act only in the thread that installed them, so a page that
uses the same model meanwhile is never interrupted, and they are removed on exit.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable


class Stopped(Exception):
    """The user stopped a job; what was done is kept (cached or checkpointed) for the next start."""


class Interrupted(Stopped):
    """Raised from inside a model pass: the pass (and any half-computed gradient) is to be discarded."""


@contextmanager
def interruptible(model, should_stop: Callable[[], bool] | None):
    """Within the block, a pass of `model` in this thread raises Interrupted once `should_stop()` is true."""
    if should_stop is None or model is None:
        yield
        return
    owner = threading.get_ident()

    def check(*_):
        if threading.get_ident() == owner and should_stop():
            raise Interrupted("stopped by the user")

    def on_output(_module, _inputs, output):
        if threading.get_ident() != owner:
            return
        first = output[0] if isinstance(output, tuple) and output else output
        if getattr(first, "requires_grad", False):
            first.register_hook(lambda g: check())

    handles = []
    for module in model.modules():
        if next(module.parameters(recurse=False), None) is not None:
            handles.append(module.register_forward_pre_hook(check))
            handles.append(module.register_forward_hook(on_output))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
