"""Who runs a run: the owning process (machine:pid:start) and whether it is still alive, and the
advisory file locks that keep two identical jobs from running at once (`Workspace.run_lock`).
"""
from __future__ import annotations

import functools
import os
import socket
import warnings
from pathlib import Path


def process_owner() -> str:
    """machine:pid:start-time of this process. The machine is the host name, its boot id and this
    PID namespace (containers sharing a host name are told apart); the start time tells a reused
    PID apart."""
    return f"{_machine()}:{os.getpid()}:{_start_time(os.getpid())}"


def owner_alive(owner: str) -> bool | None:
    """True/False when the owning process can be checked (same machine and PID namespace), None
    when it cannot (another machine: only the idle timer can tell)."""
    machine, pid, start = ((owner or "").rsplit(":", 2) + ["", ""])[:3]
    if machine != _machine() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return start == _start_time(int(pid))


@functools.cache
def _machine() -> str:
    ids = []
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            ids.append(Path(path).read_text().strip() if "boot" in path else str(os.stat(path).st_ino))
        except OSError:
            ids.append("")
    return "/".join([socket.gethostname(), *ids]).replace(":", "_")


def _start_time(pid: int) -> str:
    """The process' start time in clock ticks since boot (Linux); '' where /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _try_lock(handle) -> bool:
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): identical jobs may both run
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:  # a file system without flock (some NFS / Lustre mounts): run unlocked
        warnings.warn(f"cannot lock {handle.name} ({exc.strerror}); identical jobs started at once may both run",
                      stacklevel=2)
        return True


def _unlock(handle) -> None:
    try:
        import fcntl
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    except (ImportError, OSError):
        pass
