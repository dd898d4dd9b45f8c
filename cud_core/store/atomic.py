"""Files that appear whole or not at all: a temp file beside the target, fsync, rename. A kill
leaves at most a `.<name>.*.partial` temp file (`Workspace.remove_temp_files` clears them).
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

TEMP_SUFFIX = ".partial"  # what a write in progress is called; a kill can leave one behind


@contextmanager
def atomic_file(path: str | Path):
    """`with atomic_file(path) as f:` write a binary file that appears whole (temp file, fsync,
    rename) or not at all; a kill leaves at most a `.<name>.*.partial` temp file beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}


def atomic_write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None):
    """Write a safetensors file atomically, one tensor at a time (a model-sized checkpoint is never
    held twice in memory, and GPU tensors are copied to the host one by one)."""
    header, offset = {}, 0
    names = sorted(tensors)
    for name in names:
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    with atomic_file(path) as f:
        f.write(len(head).to_bytes(8, "little") + head)
        for name in names:
            data = tensors[name].detach().to("cpu").contiguous().reshape(-1)
            f.write(memoryview(data.view(torch.uint8).numpy()))
