"""Which files and folders the browser may name. Anyone who can open the app can edit its URL, so
data files, workspaces and model folders given through the URL or the sidebar must lie inside an
allowed root (checked after `Path.resolve()`, so `..` and symlinks cannot lead out):

- the project folder (where app.py lives) and the default workspace (`CUD_WORKSPACE` or ./workspace),
  which also holds the files uploaded through the page (`<workspace>/uploads`);
- every folder in the environment variable `CUD_ALLOWED_ROOTS` (separated by os.pathsep, ':' on
  Linux and macOS) and every `--allow-root PATH` after `--` on the command line:
  `streamlit run app.py -- --allow-root /data/tofu --allow-root /scratch/ws`;
- for model folders also the Hugging Face cache and CUD Explorer's own model cache.

`builtin:` datasets, the embedded model and hub ids (read from the local Hugging Face cache) are
always allowed. The command line (`python -m cud_core`) is not restricted."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from cud_core.engine.models import EMBEDDED, cache_dir
from cud_core.store.workspace import DEFAULT_WORKSPACE

PROJECT = Path(__file__).resolve().parents[2]
ENV = "CUD_ALLOWED_ROOTS"
ARG = "--allow-root"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


HELP = ("Data files, workspaces and model folders named here or in the URL must lie inside the project folder, "
        "the default workspace or a folder allowed at start-up: `CUD_ALLOWED_ROOTS=/a:/b streamlit run app.py` "
        f"or `streamlit run app.py -- {ARG} /a {ARG} /b`.")


class PathRefused(ValueError):
    """A path given through the browser lies outside the allowed roots."""

    # static Markdown shown after the (escaped) message; commands in code spans stay literal
    how_to = (f"To allow another folder, start the app with `{ENV}=/that/folder streamlit run app.py` "
              f"or `streamlit run app.py -- {ARG} /that/folder`.")


def argument_roots(argv: list[str]) -> list[str]:
    """The folders given as `--allow-root PATH` or `--allow-root=PATH` in the script's arguments."""
    out = []
    for i, arg in enumerate(argv):
        if arg == ARG and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif arg.startswith(f"{ARG}="):
            out.append(arg.split("=", 1)[1])
    return out


def allowed_roots() -> list[Path]:
    """The folders data files and workspaces given through the browser must lie in (resolved, in order)."""
    given = [str(PROJECT), os.environ.get("CUD_WORKSPACE") or DEFAULT_WORKSPACE]
    given += os.environ.get(ENV, "").split(os.pathsep) + argument_roots(sys.argv[1:])
    roots: list[Path] = []
    for g in given:
        if g.strip():
            root = Path(g.strip()).expanduser().resolve()
            if root not in roots:
                roots.append(root)
    return roots


def model_caches() -> list[Path]:
    """Where model folders may lie besides the allowed roots: the Hugging Face cache and ours."""
    from huggingface_hub.constants import HF_HUB_CACHE

    return [Path(HF_HUB_CACHE).resolve(), cache_dir().resolve()]


def _inside(value: str, roots: list[Path]) -> bool:
    try:
        path = Path(value).resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop, a name too long
        return False
    return any(path == root or root in path.parents for root in roots)


def check(value: str, param: str, extra: list[Path] | None = None) -> None:
    """Raise PathRefused, naming `param` and the allowed roots, unless `value` lies inside one."""
    roots = allowed_roots() + (extra or [])
    if not value.strip():
        raise PathRefused(f"{param} is empty; enter a path inside one of: {', '.join(map(str, roots))}")
    if not _inside(value, roots):
        raise PathRefused(f"{param} {value!r} is outside the folders this app may use "
                          f"({', '.join(map(str, roots))}); nothing was read or created.")


def check_data(spec: str) -> None:
    if not spec.startswith("builtin:"):
        check(spec, "data")


def check_workspace(root: str) -> None:
    check(root, "workspace")


def is_hub_id(spec: str) -> bool:
    """`org/name` (or `name`) that is not a local path: transformers reads it from the Hugging Face cache."""
    return bool(_HUB_ID.fullmatch(spec)) and not os.path.lexists(spec)


def check_model(spec: str) -> None:
    """The embedded model and hub ids pass (they are read from caches); a local folder must lie in
    an allowed root, the Hugging Face cache or CUD Explorer's model cache."""
    if spec == EMBEDDED or is_hub_id(spec):
        return
    check(spec, "model", model_caches())
