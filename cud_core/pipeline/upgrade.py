"""`python -m cud_core upgrade --workspace W`: convert, once, what an older CUD Explorer wrote into a workspace
to the formats this one reads (the reading code accepts only these and names this command otherwise):

- the database schema: version 1 has no `artifacts` table, version 2 no `runs.owner` column; both become
  `SCHEMA_VERSION`;
- score-file format 1 (batch files keyed by sample id: `ID`, `ID::idx`, `ID::val`, a circuit as `ID` → its
  edge indices) becomes `score_files.FORMAT` (keys by position, the ids in the file's metadata);
- ablation-grid cells without `reused_scoring` get it from the context their scoring run stored;
- runs made with `--model` naming a cached fine-tune's folder, stored under that path, are stored under the
  fine-tune's name (`models.finetune_name`), the name a run made by this version gets.
"""
from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from safetensors import safe_open

from cud_core.engine.models import finetune_name
from cud_core.pipeline.ablation import CELLS
from cud_core.pipeline.outcomes import RUN_KIND as CALIBRATION_KIND
from cud_core.store.score_files import FORMAT, batch_metadata
from cud_core.store.workspace import SCHEMA, SCHEMA_VERSION, Workspace, WorkspaceError, stored_schema_version


def upgrade(root: str | Path) -> list[str]:
    """Upgrade the workspace at `root` in place; one line per change made (none: it was current)."""
    db_path = Path(root) / "cud.sqlite"
    if not db_path.is_file():
        raise WorkspaceError(f"{root} holds no CUD Explorer workspace (no cud.sqlite)")
    done = []
    version = upgrade_schema(db_path)
    if version is not None:
        done.append(f"database schema {version} → {SCHEMA_VERSION}")
    workspace = Workspace(root)
    done += [f"score file {f} → format {FORMAT}" for f in upgrade_score_files(workspace)]
    done += [f"ablation cells of {r}: reused scoring runs recorded" for r in mark_reused_scoring(workspace)]
    done += [f"{n} runs of model {old} → {new}" for old, new, n in name_fine_tunes(workspace)]
    return done


def name_fine_tunes(workspace: Workspace) -> list[tuple[str, str, int]]:
    """Rename the models stored under a cached fine-tune's folder path to its name: (path, name, runs)."""
    done = []
    for model in workspace.models():
        name = finetune_name(model) if Path(model).is_dir() else None
        if name and name != model:
            done.append((model, name, workspace.rename_model(model, name)))
    return done


def upgrade_schema(db_path: Path) -> int | None:
    """Bring the database at `db_path` to `SCHEMA_VERSION`; the version it had (None: already current)."""
    with closing(sqlite3.connect(db_path, timeout=30)) as db, db:
        version = stored_schema_version(db)
        if version is None or version >= SCHEMA_VERSION:
            return None
        db.executescript(SCHEMA)  # the tables version 1 lacks
        try:
            db.execute("ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        except sqlite3.OperationalError as exc:  # version 2 has it
            if "duplicate column" not in str(exc):
                raise
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
    return version


def upgrade_score_files(workspace: Workspace) -> list[str]:
    """Rewrite every format-1 batch file of edge scores or circuits in `FORMAT`; their `run/name`s."""
    done = []
    for path in sorted((workspace.root / "tensors").glob("*/*.safetensors")):
        if not path.stem.startswith(("scores-", "circuits-")):
            continue
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
        if meta.get("format") == FORMAT:
            continue
        run_id, name = path.parent.name, path.stem
        ids = list(dict.fromkeys(k[:-5] if k.endswith(("::idx", "::val")) else k for k in keys))
        tensors = workspace.load_tensors(run_id, name)
        dense = "" if name.startswith("scores") else ".idx"  # a format-1 circuit is its edge indices
        renamed = {}
        for i, sid in enumerate(ids):
            for old, new in ((sid, f"e{i}{dense}"), (f"{sid}::idx", f"e{i}.idx"), (f"{sid}::val", f"e{i}.val")):
                if old in tensors:
                    renamed[new] = tensors[old]
        workspace.save_tensors(run_id, name, renamed, {**meta, **batch_metadata(ids)})
        done.append(f"{run_id}/{name}")
    return done


def mark_reused_scoring(workspace: Workspace) -> list[str]:
    """Give every stored ablation cell without "reused_scoring" the calibration whose scoring run it reused
    (its id; None when its own grid made the run), from the context the run's creator stored; the ids of
    the calibrations changed."""
    done = []
    for run in workspace.list_runs(CALIBRATION_KIND):
        stored = workspace.load_artifact(run["id"], CELLS) or {}
        changed = False
        for entry in stored.values():
            if "reused_scoring" not in entry:
                context = workspace.load_artifact(entry["score_run"], "context", {}) or {}
                made_here = context.get("ablation") and context.get("calibration") == run["id"]
                entry["reused_scoring"] = None if made_here else (context.get("calibration") or entry["score_run"])
                changed = True
        if changed:
            workspace.save_artifact(run["id"], CELLS, stored)
            done.append(run["id"])
    return done
