"""Where units of work run: here, or on a Ray cluster.

- `local` (the default): in this process, exactly as without an executor; Ray is never imported.
- `ray`: one actor per worker slot holds the model (loaded once, from a path every node can read) and
  computes units (scoring batches, unlearning runs, ablation-grid circuit sizes, faithfulness curves;
  data every unit needs goes into the object store once, `shared=`); results come back through Ray's object
  store and only the driver writes the workspace (one writer, the same atomic writes and resume).
  `address`: "auto" (a running cluster, e.g. `ray start --head`), "HOST:PORT", or "local-cluster" (a private
  Ray instance on this machine, for testing). A worker that dies is restarted and its unit retried (`max_retries`).

Results are bit-identical to the local executor on the same device type and intra-op thread count: a
unit is the same batch, computed by the same function on the same weights. (Ray gives a CPU worker
`num_cpus` threads; a CPU kernel sums in another order with another thread count, so a 1-CPU worker
matches a local run with `torch.set_num_threads(1)` bit for bit and a 2-thread one to ~1e-7 relative.)
"""
from __future__ import annotations

import math
import re
import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from cud_core.engine.models import EMBEDDED, EMBEDDED_NAME, load_model, model_fingerprint

KINDS = ("local", "ray")
_NO_SHARED = object()


@dataclass
class ExecutorSettings:
    kind: str = "local"
    address: str = "local-cluster"  # ray: auto | HOST:PORT | local-cluster
    workers: int | None = None      # actors (default: one per GPU with num_gpus ≥ 1, else the cluster's CPUs)
    num_gpus: float = 0.0           # per worker (a fraction shares a GPU between small models)
    num_cpus: float = 1.0           # per worker
    max_retries: int = 2

    def validate(self) -> None:
        """Flags that cannot work, named (before any model is loaded)."""
        if self.kind not in KINDS:
            raise ValueError(f"unknown executor {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.kind == "local" and self.workers is not None:
            raise ValueError("--workers needs --executor ray (the local executor runs in this process)")
        if not (math.isfinite(self.num_cpus) and self.num_cpus > 0):
            raise ValueError(f"--num-cpus must be a number above 0, got {self.num_cpus}")
        if not (math.isfinite(self.num_gpus) and self.num_gpus >= 0):
            raise ValueError(f"--num-gpus must be a number of at least 0, got {self.num_gpus}")
        if self.kind == "ray" and self.address not in ("auto", "local-cluster"):
            host_port(self.address)

    def check_reachable(self) -> None:
        """A cluster at HOST:PORT answers within CONNECT_TIMEOUT_S, or a ValueError says it did not
        (ray.init would retry for minutes without a word)."""
        if self.kind != "ray" or self.address in ("auto", "local-cluster"):
            return
        host, port = host_port(self.address)
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise ValueError(f"--ray-address {self.address}: no Ray cluster answers there within "
                             f"{CONNECT_TIMEOUT_S:g} s "
                             f"({exc.strerror or exc}); start one with `ray start --head` or use --ray-address "
                             "local-cluster") from None


CONNECT_TIMEOUT_S = 10.0


def host_port(address: str) -> tuple[str, int]:
    """`HOST:PORT` (or `ray://HOST:PORT`) as (host, port); ValueError naming the flag otherwise."""
    match = re.fullmatch(r"(?:ray://)?([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(\d{1,5})", address.strip())
    if not match or not 0 < int(match[2]) < 65536:
        raise ValueError(f"--ray-address {address!r}: expected auto, local-cluster or HOST:PORT (e.g. 10.0.0.5:6379)")
    return match[1].strip("[]"), int(match[2])


def model_spec(lm) -> dict:
    """How a worker loads the same model: the embedded name, or the folder it came from."""
    return {"source": EMBEDDED if lm.name == EMBEDDED_NAME else lm.source, "name": lm.name,
            "dtype": str(lm.dtype).replace("torch.", ""), "fingerprint": model_fingerprint(lm.model)}


def make(settings: ExecutorSettings | None, lm):
    """The executor `settings` describe, for `lm` (None or local: the in-process path)."""
    if settings is None:
        return None
    settings.validate()
    if settings.kind == "local":
        return None
    settings.check_reachable()
    return RayExecutor(settings, model_spec(lm))


class _Worker:
    """A Ray actor's state: the model, loaded once."""

    def __init__(self, spec: dict):
        import os
        import socket

        source = spec["source"]
        if source != "embedded" and not os.path.exists(source):
            raise FileNotFoundError(f"worker on {socket.gethostname()} cannot find the model folder {source!r}: "
                                    "put it on a folder every node can read (or in each node's Hugging Face cache)")
        self.lm = load_model(source, dtype=spec["dtype"], device="auto")
        self.lm.name = spec["name"]
        if model_fingerprint(self.lm.model) != spec["fingerprint"]:
            raise ValueError(f"the model at {source!r} on {socket.gethostname()} has other weights than the driver's")

    def where(self) -> dict:
        import os
        import socket

        import torch

        return {"host": socket.gethostname(), "pid": os.getpid(), "threads": torch.get_num_threads(),
                "device": str(next(self.lm.model.parameters()).device)}

    def run(self, fn: Callable, unit, *shared):
        return fn(self.lm, unit, *shared)


def run_units(executor, lm, fn: Callable, units: list, shared=_NO_SHARED, should_stop: Callable[[], bool] | None = None,
              progress: Callable[[str], None] | None = None) -> Iterator:
    """fn(lm, unit[, shared]) for every unit, results in the order of `units`: on the executor's workers
    (`executor.remote`), else here one after the other. Stops early (yielding fewer results) on should_stop()."""
    if executor is not None and executor.remote:
        yield from executor.map(fn, units, shared=shared, should_stop=should_stop, progress=progress)
        return
    extra = () if shared is _NO_SHARED else (shared,)
    for unit in units:
        if should_stop and should_stop():
            return
        yield fn(lm, unit, *extra)


class RayExecutor:
    remote = True

    def __init__(self, settings: ExecutorSettings, spec: dict):
        import ray

        self.settings, self._ray = settings, ray
        self._started = False
        if not ray.is_initialized():
            if settings.address == "local-cluster":
                ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=settings.address, include_dashboard=False, log_to_driver=False)
            self._started = True
        resources = ray.cluster_resources()
        n = settings.workers or max(1, int(resources.get("GPU", 0) // settings.num_gpus) if settings.num_gpus
                                    else int(resources.get("CPU", 1) // settings.num_cpus))
        for kind, each in (("CPU", settings.num_cpus), ("GPU", settings.num_gpus)):
            if n * each > resources.get(kind, 0) + 1e-9:  # the actors would wait for room forever
                self.close()
                raise ValueError(f"{n} workers × {each} {kind} need {n * each:g} {kind}s, but the Ray cluster at "
                                 f"{settings.address} has {resources.get(kind, 0):g}: ask for fewer --workers "
                                 f"or less --num-{kind.lower()}s per worker")
        actor = ray.remote(num_cpus=settings.num_cpus, num_gpus=settings.num_gpus,
                           max_restarts=settings.max_retries, max_task_retries=settings.max_retries)(_Worker)
        self.actors = [actor.remote(spec) for _ in range(n)]
        self.busy: dict[int, int] = {}
        self.done = self.total = 0
        self._hosts: list[str] | None = None

    def workers(self) -> list[dict]:
        """Each worker's host and process id (waits for the actors to have loaded the model)."""
        return self._ray.get([a.where.remote() for a in self.actors])

    def status(self) -> str:
        """Units done / total and which workers are busy, e.g. "3/10 units; busy: 2/2 workers (node-a ×2)"."""
        if self._hosts is None:
            try:
                self._hosts = [w["host"] for w in self.workers()]
            except Exception:  # a worker being restarted: name no hosts this time
                return f"{self.done}/{self.total} units; busy: {len(self.busy)}/{len(self.actors)} workers"
        by_host: dict[str, int] = {}
        for a in self.busy:
            by_host[self._hosts[a]] = by_host.get(self._hosts[a], 0) + 1
        hosts = ", ".join(f"{h} ×{k}" for h, k in sorted(by_host.items()))
        return (f"{self.done}/{self.total} units; busy: {len(self.busy)}/{len(self.actors)} workers"
                + (f" ({hosts})" if hosts else ""))

    def map(self, fn: Callable, units: list, shared=_NO_SHARED, should_stop: Callable[[], bool] | None = None,
            progress: Callable[[str], None] | None = None) -> Iterator:
        """fn(lm, unit[, shared]) for every unit on the workers (`shared` goes into the object store once);
        yields results in the order of `units` (so the driver writes them in order); stops submitting and
        cancels what is running on should_stop()."""
        ray = self._ray
        extra = () if shared is _NO_SHARED else (ray.put(shared),)
        pending, results, next_unit, next_yield = {}, {}, 0, 0
        self.done, self.total = 0, len(units)
        free = list(range(len(self.actors)))
        last = time.monotonic()
        while next_yield < len(units):
            if should_stop and should_stop():
                for ref in pending:
                    ray.cancel(ref)  # a running actor task is interrupted; its result is dropped
                return
            while free and next_unit < len(units):
                a = free.pop(0)
                pending[self.actors[a].run.remote(fn, units[next_unit], *extra)] = (next_unit, a)
                self.busy[a] = next_unit
                next_unit += 1
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                k, a = pending.pop(ref)
                results[k] = ray.get(ref)
                self.busy.pop(a, None)
                free.append(a)
                self.done += 1
            while next_yield in results:
                yield results.pop(next_yield)
                next_yield += 1
            if progress and time.monotonic() - last > 5:
                last = time.monotonic()
                progress(self.status())

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            self._ray.kill(a)
        self.actors = []
        if self._started:
            self._ray.shutdown()
