"""The workspace: one folder the command line writes and the app reads.

    workspace/
      cud.sqlite            runs, per-sample results, annotations (schema versioned)
      tensors/<run>/<name>.safetensors

Every file is written atomically (temp file + rename), SQLite writes are transactions, so a crash
never leaves half a result and an interrupted job can resume from what is stored.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch

from cud_core.data.samples import Sample
from cud_core.store.atomic import TEMP_SUFFIX, atomic_write_safetensors
from cud_core.store.owners import _try_lock, _unlock, owner_alive, process_owner

SCHEMA_VERSION = 3
DEFAULT_WORKSPACE = "workspace"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT NOT NULL, dataset TEXT NOT NULL,
    config TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    message TEXT NOT NULL DEFAULT '', owner TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS samples (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, sample_id TEXT NOT NULL,
    question TEXT NOT NULL, answer TEXT NOT NULL, meta TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, sample_id)
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, sample_id TEXT NOT NULL,
    data TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (run_id, sample_id)
);
CREATE TABLE IF NOT EXISTS annotations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, dataset TEXT NOT NULL,
    sample_id TEXT NOT NULL, label TEXT NOT NULL, note TEXT NOT NULL DEFAULT '',
    author TEXT NOT NULL DEFAULT '', created REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, name TEXT NOT NULL,
    data TEXT NOT NULL, updated REAL NOT NULL, PRIMARY KEY (run_id, name)
);
CREATE INDEX IF NOT EXISTS annotations_sample ON annotations (model, dataset, sample_id);
"""


class WorkspaceError(Exception):
    """The workspace cannot be used (e.g. written by a newer or an older version)."""


def older_version_error(what: str, root) -> WorkspaceError:
    """The error for data in the workspace at `root` that an older CUD Explorer wrote in a format this one
    does not read: `python -m cud_core upgrade` converts it once."""
    return WorkspaceError(f"{what} was written by an older CUD Explorer; run `python -m cud_core upgrade "
                          f"--workspace {root}` once to convert it, or open it with the version that wrote it")


def stored_schema_version(db: sqlite3.Connection) -> int | None:
    """The schema version a workspace database records (None: a new, empty database)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is None:
        return None
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return None if row is None else int(row[0])


def _wal(db: sqlite3.Connection, wait: float = 30.0) -> None:
    """Put the database in WAL mode (it stays so). Switching needs a lock that SQLite's busy timeout does not
    wait for: two processes creating one workspace at once can see "database is locked" here, so retry."""
    end = time.monotonic() + wait
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > end:
                raise
            time.sleep(0.05)


class Workspace:
    def __init__(self, root: str | Path = DEFAULT_WORKSPACE):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise WorkspaceError(f"workspace {str(root)!r} is a file, not a folder; choose a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(f"cannot create workspace folder {str(root)!r}: {exc.strerror or exc}") from exc
        self.db_path = self.root / "cud.sqlite"
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            raise WorkspaceError(f"{self.db_path} is not a usable CUD Explorer database: {exc}") from exc

    def _open(self) -> None:
        with self._connect() as db:
            version = stored_schema_version(db)
            if version is not None and version > SCHEMA_VERSION:
                raise WorkspaceError(f"{self.db_path} has schema version {version}, newer than this "
                                     f"CUD Explorer ({SCHEMA_VERSION}); upgrade the tool")
            if version is not None and version < SCHEMA_VERSION:
                raise older_version_error(f"{self.db_path} (schema version {version})", self.root)
            db.executescript(SCHEMA)
            if version is None:  # a new workspace (another process may be creating it at the same time)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    @contextmanager
    def _connect(self):
        db = sqlite3.connect(self.db_path, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys = ON")
        _wal(db)
        try:
            with db:  # one transaction: commit on success, roll back on error
                yield db
        finally:
            db.close()

    def transaction(self):
        """`with workspace.transaction() as db:` one SQLite transaction (commit on success, roll back
        on error) for callers that write many rows at once."""
        return self._connect()

    @property
    def schema_version(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])

    # ------------------------------------------------------------------ runs
    def create_run(self, kind: str, model: str, dataset: str, config: dict, run_id: str | None = None) -> str:
        run_id = run_id or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        now = time.time()
        self.restore_run({"id": run_id, "kind": kind, "model": model, "dataset": dataset, "config": config,
                          "status": "running", "created": now, "updated": now}, owner=process_owner())
        return run_id

    def restore_run(self, run: dict, owner: str = "") -> None:
        """Insert a run record (id, settings, status, times), e.g. as another workspace stored it
        (`bundle.unpack`); fails on an id the workspace has."""
        with self._connect() as db:
            db.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (run["id"], run["kind"], run["model"], run["dataset"], json.dumps(run["config"], sort_keys=True),
                        run["status"], run["created"], run["updated"], run.get("message", ""), owner))

    def find_run(self, kind: str, model: str, dataset: str, config: dict) -> str | None:
        """The newest run with exactly these settings (used to resume an interrupted job)."""
        with self._connect() as db:
            row = db.execute("SELECT id FROM runs WHERE kind=? AND model=? AND dataset=? AND config=? "
                             "ORDER BY created DESC LIMIT 1",
                             (kind, model, dataset, json.dumps(config, sort_keys=True))).fetchone()
        return row["id"] if row else None

    def adopt_fingerprint(self, fingerprint: str, legacy) -> list[str]:
        """Runs whose config names one of the `legacy` model fingerprints are rewritten to name
        `fingerprint` (one transaction); returns their ids."""
        legacy = set(legacy) - {fingerprint}
        if not legacy:
            return []
        with self._connect() as db:
            rows = db.execute("SELECT id, config FROM runs WHERE " + " OR ".join(["config LIKE ?"] * len(legacy)),
                              [f'%"model_fingerprint": "{f}"%' for f in sorted(legacy)]).fetchall()
            adopted = []
            for row in rows:
                config = json.loads(row["config"])
                if config.get("model_fingerprint") in legacy:
                    config["model_fingerprint"] = fingerprint
                    db.execute("UPDATE runs SET config=? WHERE id=?", (json.dumps(config, sort_keys=True), row["id"]))
                    adopted.append(row["id"])
        return adopted

    def models(self) -> list[str]:
        """Every model name a run or an annotation is stored under."""
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT model FROM runs UNION SELECT model FROM annotations "
                                             "ORDER BY 1").fetchall()]

    def rename_model(self, old: str, new: str) -> int:
        """Runs and annotations stored under model name `old` are stored under `new` (one transaction);
        returns how many runs."""
        with self._connect() as db:
            db.execute("UPDATE annotations SET model=? WHERE model=?", (new, old))
            return db.execute("UPDATE runs SET model=? WHERE model=?", (new, old)).rowcount

    def set_status(self, run_id: str, status: str, message: str = "") -> None:
        """Set a run's status; a run set to "running" is owned by this process from now on."""
        with self._connect() as db:
            db.execute("UPDATE runs SET status=?, message=?, updated=?, owner=CASE WHEN ?='running' THEN ? "
                       "ELSE owner END WHERE id=?", (status, message, time.time(), status, process_owner(), run_id))

    def touch(self, run_id: str) -> None:
        """Record progress (a heartbeat): runs that stop making progress are marked interrupted."""
        with self._connect() as db:
            db.execute("UPDATE runs SET updated=? WHERE id=?", (time.time(), run_id))

    def mark_interrupted(self, idle_seconds: float = 1800) -> list[str]:
        """Runs marked running whose process is gone become 'interrupted': on this host, the owner's
        PID no longer runs the process that started the run (checked at once); elsewhere, no progress
        for `idle_seconds`. Rerunning the same command resumes them where that is possible."""
        cutoff = time.time() - idle_seconds
        with self._connect() as db:
            gone = []
            for r in db.execute("SELECT id, owner, updated FROM runs WHERE status='running'").fetchall():
                alive = owner_alive(r["owner"])
                if alive is False:
                    gone.append((r["id"], r["owner"], "its process ended; rerun the same command to resume"))
                elif alive is None and r["updated"] < cutoff:
                    gone.append((r["id"], r["owner"], "no progress for a while; rerun to resume"))
            # only if nobody took the run over in the meantime
            db.executemany("UPDATE runs SET status='interrupted', message=? WHERE id=? AND status='running' AND "
                           "owner=?", [(m, i, o) for i, o, m in gone])
        return [i for i, _, _ in gone]

    def run_lock(self, kind: str, model: str, dataset: str, config: dict, on_wait=None, should_stop=None):
        """Hold the lock of the run with these settings while computing it, so that two identical
        jobs started at once do the work once: the second waits (calling `on_wait(message)` once),
        then finds the first one's results. Yields False if `should_stop()` became true while
        waiting. The OS releases the lock when its process dies, however it dies."""
        key = hashlib.sha256(json.dumps([kind, model, dataset, config], sort_keys=True, default=str).encode())
        return self.lock(key.hexdigest()[:24], f"another job is computing the same {kind} run in {self.root}; "
                         "waiting for it", on_wait, should_stop)

    @contextmanager
    def lock(self, name: str, waiting: str, on_wait=None, should_stop=None):
        """Hold the workspace lock `name` (`locks/<name>.lock`); a second holder waits, calling
        `on_wait(waiting)` once; yields False if `should_stop()` became true while waiting."""
        path = self.root / "locks" / f"{name}.lock"
        path.parent.mkdir(exist_ok=True)
        with open(path, "a+b") as handle:
            if not _try_lock(handle):
                if on_wait:
                    on_wait(waiting)
                while not _try_lock(handle):
                    if should_stop and should_stop():
                        yield False
                        return
                    time.sleep(0.2)
            try:
                yield True
            finally:
                _unlock(handle)

    def get_run(self, run_id: str) -> dict | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return _run_dict(row) if row else None

    def list_runs(self, kind: str | None = None) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs" + (" WHERE kind=?" if kind else "") + " ORDER BY created DESC",
                              (kind,) if kind else ()).fetchall()
        return [_run_dict(r) for r in rows]

    def delete_run(self, run_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE id=?", (run_id,))
        folder = self.root / "tensors" / run_id
        if folder.is_dir():
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
        self.remove_checkpoints(run_id)

    # ------------------------------------------------------------------ per-sample results
    def save_samples(self, run_id: str, samples) -> None:
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO samples VALUES (?,?,?,?,?)",
                           [(run_id, s.id, s.question, s.answer, json.dumps(s.meta or {}, default=str))
                            for s in samples])

    def load_samples(self, run_id: str):
        with self._connect() as db:
            rows = db.execute("SELECT * FROM samples WHERE run_id=? ORDER BY rowid", (run_id,)).fetchall()
        return [Sample(r["question"], r["answer"], r["sample_id"], json.loads(r["meta"])) for r in rows]

    def save_results(self, run_id: str, results: dict[str, dict]) -> None:
        """Merge `{sample_id: {field: value}}` into the run's stored results (one transaction)."""
        now = time.time()
        with self._connect() as db:
            for sid, data in results.items():
                row = db.execute("SELECT data FROM results WHERE run_id=? AND sample_id=?", (run_id, sid)).fetchone()
                merged = {**(json.loads(row["data"]) if row else {}), **data}
                db.execute("INSERT OR REPLACE INTO results VALUES (?,?,?,?)",
                           (run_id, sid, json.dumps(merged, default=float), now))
            db.execute("UPDATE runs SET updated=? WHERE id=?", (now, run_id))

    def load_results(self, run_id: str) -> dict[str, dict]:
        with self._connect() as db:
            rows = db.execute("SELECT sample_id, data FROM results WHERE run_id=? ORDER BY rowid", (run_id,)).fetchall()
        return {r["sample_id"]: json.loads(r["data"]) for r in rows}

    def done_sample_ids(self, run_id: str) -> set[str]:
        with self._connect() as db:
            return {r[0] for r in db.execute("SELECT sample_id FROM results WHERE run_id=?", (run_id,))}

    # ------------------------------------------------------------------ artifacts (run-level JSON)
    def save_artifact(self, run_id: str, name: str, data) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO artifacts VALUES (?,?,?,?)",
                       (run_id, name, json.dumps(data, default=float), time.time()))
            db.execute("UPDATE runs SET updated=? WHERE id=?", (time.time(), run_id))

    def load_artifact(self, run_id: str, name: str, default=None):
        with self._connect() as db:
            row = db.execute("SELECT data FROM artifacts WHERE run_id=? AND name=?", (run_id, name)).fetchone()
        return json.loads(row["data"]) if row else default

    def artifact_names(self, run_id: str) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT name FROM artifacts WHERE run_id=? ORDER BY name", (run_id,))]

    # ------------------------------------------------------------------ tensors
    def tensor_path(self, run_id: str, name: str) -> Path:
        return self.root / "tensors" / run_id / f"{name}.safetensors"

    def checkpoint_path(self, run_id: str, name: str = "") -> Path:
        """Where an unfinished run keeps its training checkpoint (removed when the run finishes)."""
        return self.root / "checkpoints" / f"{run_id}{'-' + name if name else ''}.safetensors"

    def remove_checkpoints(self, run_id: str) -> None:
        """Every checkpoint of a run (and temp files of one being written)."""
        folder = self.root / "checkpoints"
        for p in folder.glob(f"{run_id}*.safetensors") if folder.is_dir() else []:
            p.unlink(missing_ok=True)
        self.remove_temp_files(run_id)

    def remove_temp_files(self, run_id: str) -> int:
        """Delete what a kill inside a write left behind for this run (call with its lock held)."""
        folder = self.root / "tensors" / run_id
        leftovers = [p for p in folder.iterdir() if p.name.startswith(".")] if folder.is_dir() else []
        checkpoints = self.root / "checkpoints"
        if checkpoints.is_dir():
            leftovers += [p for p in checkpoints.glob(f".{run_id}*{TEMP_SUFFIX}")]
        for p in leftovers:
            p.unlink(missing_ok=True)
        return len(leftovers)

    def save_tensors(self, run_id: str, name: str, tensors: dict[str, torch.Tensor], metadata: dict | None = None):
        atomic_write_safetensors(self.tensor_path(run_id, name), tensors, metadata)

    def load_tensors(self, run_id: str, name: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        path = self.tensor_path(run_id, name)
        if not path.is_file():
            raise FileNotFoundError(f"no tensors {name!r} for run {run_id} ({path})")
        return load_file(str(path))

    # ------------------------------------------------------------------ annotations
    def add_annotation(self, model: str, dataset: str, sample_id: str, label: str, note: str = "",
                       author: str = "") -> int:
        if not label.strip():
            raise ValueError("an annotation needs a label")
        now = time.time()
        with self._connect() as db:
            cur = db.execute("INSERT INTO annotations (model, dataset, sample_id, label, note, author, created, "
                             "updated) VALUES (?,?,?,?,?,?,?,?)", (model, dataset, sample_id, label, note, author,
                                                                   now, now))
            return int(cur.lastrowid)

    def update_annotation(self, annotation_id: int, label: str | None = None, note: str | None = None) -> None:
        with self._connect() as db:
            db.execute("UPDATE annotations SET label=COALESCE(?, label), note=COALESCE(?, note), updated=? "
                       "WHERE id=?", (label, note, time.time(), annotation_id))

    def delete_annotation(self, annotation_id: int) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM annotations WHERE id=?", (annotation_id,))

    def annotations(self, model: str | None = None, dataset: str | None = None,
                    sample_id: str | None = None) -> list[dict]:
        clauses, args = [], []
        for col, val in (("model", model), ("dataset", dataset), ("sample_id", sample_id)):
            if val is not None:
                clauses.append(f"{col}=?")
                args.append(val)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM annotations{where} ORDER BY created", args).fetchall()
        return [dict(r) for r in rows]


def _run_dict(row) -> dict:
    d = dict(row)
    d["config"] = json.loads(d["config"])
    return d
