"""How much memory this process could use on a device (for the batch guard in `memory`).

`available_memory(device)` is what this process could have in total: for the CPU, its own anonymous
resident memory now (the loaded model included) plus what the system (MemAvailable) and its cgroup
(limit − usage, page cache not counted as used) could still give it; for CUDA, the free device
memory plus what torch's caching allocator already holds. `CUD_MEMORY_LIMIT` (bytes, or 4G, 512M,
1.5GiB; powers of 1024) replaces the detection, e.g. for a box shared with others.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

ENV_LIMIT = "CUD_MEMORY_LIMIT"


_UNITS = {"": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}


def parse_memory(text: str) -> int:
    """Bytes from '8000000000', '4G', '512M', '1.5GiB', '4gb' (K/M/G/T are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read a memory size from {text!r}; use bytes or a number with K, M, G or T "
                         "(e.g. 4G, 512M)")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a memory size must be more than 0, got {text!r}")
    return int(value)


def available_memory(device="cpu") -> int:
    """Bytes this process could use in total on `device` (see the module docstring), or the value of
    the environment variable CUD_MEMORY_LIMIT when it is set."""
    override = os.environ.get(ENV_LIMIT, "").strip()
    if override:
        try:
            return parse_memory(override)
        except ValueError as exc:
            raise ValueError(f"{ENV_LIMIT}: {exc}") from None
    device = torch.device(getattr(device, "device", device) if not isinstance(device, (str, torch.device))
                          else device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device))
    return _cpu_available()  # the CPU, and Apple's unified memory (mps)


def _cpu_available() -> int:
    own, room = _own_resident(), _meminfo_available()
    if room is None:
        try:
            import psutil  # optional, only where /proc is missing
        except ImportError:
            psutil = None
        if psutil is not None:
            room, own = psutil.virtual_memory().available, psutil.Process().memory_info().rss
        else:
            room = _sysconf_available()
    cgroup = _cgroup_room()
    if cgroup is not None:
        room = cgroup if room is None else min(room, cgroup)
    if room is None:
        return 2 ** 62  # nothing to go by: never lower a batch
    return int((own or 0) + max(0, room))


def _read_kv(path, scale: int = 1) -> dict[str, int]:
    """`key value [kB]` lines (meminfo, status, memory.stat) as ints (kB lines times 1024)."""
    out = {}
    try:
        text = Path(path).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1]) * (1024 if len(parts) > 2 and parts[2] == "kB" else scale)
    return out


def _own_resident(path="/proc/self/status") -> int | None:
    """This process's anonymous and shared-memory resident bytes (file-backed pages, e.g. memory-mapped
    weights, are page cache that MemAvailable already counts)."""
    status = _read_kv(path)
    if "RssAnon" in status:
        return status["RssAnon"] + status.get("RssShmem", 0)
    return status.get("VmRSS")


def _meminfo_available(path="/proc/meminfo") -> int | None:
    info = _read_kv(path)
    if "MemAvailable" in info:
        return info["MemAvailable"]
    if "MemFree" in info:  # kernels before 3.14
        return info["MemFree"] + info.get("Cached", 0)
    return None


def _sysconf_available() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


_NO_LIMIT = 2 ** 60


def _cgroup_room(cgroup_file="/proc/self/cgroup", mountinfo="/proc/self/mountinfo") -> int | None:
    """The least room left under a memory limit of this process's cgroup or any of its ancestors
    (cgroup v2 memory.max / memory.high, v1 memory.limit_in_bytes): limit − (usage − page cache).
    None when no limit applies or nothing can be read."""
    rooms = [room for folder in _cgroup_folders(cgroup_file, mountinfo) if (room := _folder_room(folder)) is not None]
    return min(rooms) if rooms else None


def _cgroup_folders(cgroup_file, mountinfo) -> list[Path]:
    try:
        memberships = Path(cgroup_file).read_text().splitlines()
        mounts = Path(mountinfo).read_text().splitlines()
    except OSError:
        return []
    paths = {}  # version → path of this process's cgroup
    for line in memberships:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            paths.setdefault("v2", parts[2])
        elif "memory" in parts[1].split(","):
            paths["v1"] = parts[2]
    folders: list[Path] = []
    for line in mounts:
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) < sep + 3 or sep < 5:
            continue
        root, mount, fstype, options = fields[3], Path(fields[4]), fields[sep + 1], fields[sep + 3]
        version = "v2" if fstype == "cgroup2" else "v1" if fstype == "cgroup" and "memory" in options.split(",") \
            else None
        if version is None or version not in paths:
            continue
        own = paths[version]
        candidates = [mount / own.lstrip("/")]
        if root != "/" and (own + "/").startswith(root.rstrip("/") + "/"):
            candidates.append(mount / own[len(root.rstrip("/")):].lstrip("/"))
        for folder in candidates:
            if folder.is_dir():
                while True:  # the cgroup and each ancestor up to the mount point
                    if folder not in folders:
                        folders.append(folder)
                    if folder == mount or mount not in folder.parents:
                        break
                    folder = folder.parent
                break
    return folders


def _folder_room(folder: Path) -> int | None:
    def number(name):
        try:
            text = (folder / name).read_text().strip()
        except OSError:
            return None
        return _NO_LIMIT if text == "max" else int(text) if text.isdigit() else None

    if (folder / "memory.max").exists() or (folder / "memory.current").exists():  # v2
        limits = [v for v in (number("memory.max"), number("memory.high")) if v is not None]
        usage = number("memory.current")
        stat = _read_kv(folder / "memory.stat")
        cache = stat.get("active_file", 0) + stat.get("inactive_file", 0)
    else:  # v1
        limits = [v for v in (number("memory.limit_in_bytes"),) if v is not None]
        usage = number("memory.usage_in_bytes")
        stat = _read_kv(folder / "memory.stat")
        cache = stat.get("total_active_file", stat.get("active_file", 0)) + \
            stat.get("total_inactive_file", stat.get("inactive_file", 0))
    limit = min(limits, default=_NO_LIMIT)
    if limit >= _NO_LIMIT or usage is None:
        return None
    return max(0, limit - max(0, usage - cache))


