"""``SqliteStore``: the embedded default, one SQLite file holding every run.

Durability: WAL journal with ``synchronous=NORMAL``. Every append is its own committed transaction,
so a process killed at any moment (SIGKILL, OOM) loses nothing it appended; only a power loss or OS
crash can lose the last few commits, which WAL replays or discards whole, never torn. That is the
trade the runner wants: ``synchronous=FULL`` would fsync per step and cap a run at a few hundred
steps a second. Batching commits across separate ``append`` calls was rejected: a crash would lose
nodes that had finished, and resume would run them (and their side effects) again.

A commit is the expensive part (WAL frames written, file locks taken and released: ~10 system calls),
so the runner makes exactly one per superstep: ``create_run(run, steps)`` creates a run with its input
record, ``append``/``append_many`` commit a step's records, and ``append_many(..., status=...)`` commits
a run's last step (or its pause) together with its final status. A 3-node chain is thus 4 commits,
not 6 (create, input, 3 steps and the status each on their own).

One connection per store, shared by every thread under a lock (``check_same_thread=False``): the runner
calls from its asyncio thread and from ``to_thread`` workers, and SQLite serialises writers anyway.
Other processes may open the same file; ``busy_timeout`` makes them wait for each other's commits.

An append is one statement that inserts only if the step continues the run's history, so contiguity
holds even with several processes writing, without a read-then-write race.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.graph.checkpoints import _rules
from engine.graph.checkpoints._core import StoreCore
from engine.graph.checkpoints.base import FORMAT, JSON, RunRecord, RunStatus, StepRecord
from engine.graph.checkpoints.errors import CheckpointCorrupt, RunNotFound
from engine.graph.checkpoints.serial import check_json, dumps, loads, run_from_dict, step_from_dict

SCHEMA_VERSION = 1  # of the tables; PRAGMA user_version. Records carry their own FORMAT as well.

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    graph       TEXT NOT NULL,
    graph_hash  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    status      TEXT NOT NULL,
    parent_run  TEXT,
    parent_step INTEGER,
    base        INTEGER NOT NULL,  -- the step before the run's first own step: -1, or the fork step
    meta        TEXT NOT NULL,
    format      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at);
CREATE TABLE IF NOT EXISTS steps (
    run_id     TEXT NOT NULL,
    step       INTEGER NOT NULL,
    node       TEXT NOT NULL,
    delta      TEXT NOT NULL,
    next       TEXT NOT NULL,
    created_at REAL NOT NULL,
    meta       TEXT NOT NULL,
    format     INTEGER NOT NULL,
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
"""

# Inserts only when the step is the run's next one: max(own step), or the run's base, plus one.
_APPEND = """
INSERT INTO steps (run_id, step, node, delta, next, created_at, meta, format)
SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 FROM runs
WHERE runs.run_id = ?1
  AND ?2 = coalesce((SELECT max(step) FROM steps WHERE steps.run_id = ?1), runs.base) + 1
"""
_INSERT_STEP = (
    "INSERT INTO steps (run_id, step, node, delta, next, created_at, meta, format)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_RUN_COLUMNS = "run_id, graph, graph_hash, created_at, status, parent_run, parent_step, meta, format"
_STEP_COLUMNS = "run_id, step, node, delta, next, created_at, meta, format"


class SqliteStore(StoreCore):
    """A ``CheckpointStore`` in one SQLite file (created with its folder if missing)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0) -> None:
        super().__init__()
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: statements autocommit unless we BEGIN; we manage transactions ourselves.
        self._db = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._db.close()
            raise CheckpointCorrupt(
                f"{self.path}: checkpoint schema version {version} is newer than this headrace reads "
                f"({SCHEMA_VERSION}); upgrade headrace to open it"
            )
        self._db.executescript(_SCHEMA)
        if version < SCHEMA_VERSION:
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _where(self) -> str:
        return f"sqlite {self.path}"

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._check_open()
            # IMMEDIATE takes the write lock now, so the reads inside see what the writes will follow.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # also when COMMIT itself failed (busy, disk full)
                    self._db.execute("ROLLBACK")
                raise

    # -- the hot path: one statement per call -------------------------------------------------------
    # Each invocation of a graph creates a run, appends a few steps and sets a final status; each of
    # these is one autocommitted statement here (not BEGIN/SELECT/WRITE/COMMIT), which halves their cost.

    def create_run(self, run: RunRecord, steps: Sequence[StepRecord] = ()) -> None:
        """Record a new run, with its first ``steps`` in the same transaction (all or none);
        ``CheckpointConflict`` if the id exists, ``RunNotFound`` for a missing parent."""
        if run.parent is not None:
            super().create_run(run, steps)  # a fork checks its parent's history inside a transaction
            return
        _rules.check_run_id(run.run_id)
        _rules.check_status(run.status)
        _rules.check_first_steps(run, steps)
        rows = [_step_row(r) for r in steps]
        try:
            if not rows:
                with self._lock:
                    self._check_open()
                    self._save_run(run, new=True)
                return
            with self._transaction():  # the run and its first steps: one commit, not one per row
                self._save_run(run, new=True)
                self._db.executemany(_INSERT_STEP, rows)
        except sqlite3.IntegrityError:
            raise _rules.exists_conflict(run.run_id) from None

    def set_status(self, run_id: str, status: RunStatus, meta: Mapping[str, JSON] | None = None) -> None:
        """Change a run's status; ``meta``'s keys are merged over the run's meta."""
        if meta:
            super().set_status(run_id, status, meta)  # the merge reads the old meta in a transaction
            return
        _rules.check_status(status)
        with self._lock:
            self._check_open()
            changed = self._db.execute(
                "UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id)
            ).rowcount
        if changed != 1:
            raise RunNotFound(run_id, self._where())

    def append(self, record: StepRecord) -> None:
        """Add the run's next step (last + 1, or fork step + 1 for a fork's first); else a conflict."""
        row = _step_row(record)
        with self._lock:
            self._check_open()
            inserted = self._db.execute(_APPEND, row).rowcount
        if inserted != 1:
            super().append_many((record,))  # finds and raises the precise error (or wins a race)

    def append_many(
        self,
        records: Sequence[StepRecord],
        *,
        status: RunStatus | None = None,
        meta: Mapping[str, JSON] | None = None,
    ) -> None:
        """Append several steps in one transaction: all are written or, on any error, none. With
        ``status`` (all records then belong to one run), that run's status is set (``meta`` merged
        over its meta) in the same transaction, after the steps."""
        run_id = _rules.status_target(records, status)
        if run_id is None:
            return
        rows = [_step_row(r) for r in records]
        if status is not None and meta:
            check_json(meta, "meta")
        try:
            with self._lock:  # _transaction inlined: this is the runner's per-step path
                self._check_open()
                db = self._db
                db.execute("BEGIN IMMEDIATE")
                try:
                    if len(rows) == 1:
                        inserted = db.execute(_APPEND, rows[0]).rowcount
                    else:
                        inserted = db.executemany(_APPEND, rows).rowcount
                    if inserted != len(rows):
                        raise _Retry
                    if status is not None:
                        self._set_status(run_id, status, meta)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:  # also when COMMIT itself failed (busy, disk full)
                        db.execute("ROLLBACK")
                    raise
        except _Retry:
            super().append_many(records, status=status, meta=meta)  # rolled back; names the culprit

    def _set_status(self, run_id: str, status: str, meta: Mapping[str, JSON] | None) -> None:
        # inside a transaction that appended to the run, so the run exists
        if not meta:
            self._db.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))
            return
        run = self._require(run_id)
        merged = dumps({**run.meta, **meta}, "meta")
        self._db.execute("UPDATE runs SET status = ?, meta = ? WHERE run_id = ?", (status, merged, run_id))

    # -- primitives ---------------------------------------------------------------------------------

    def last_step(self, run_id: str) -> StepRecord | None:
        """The last step of the run's history (a fresh fork's is its fork step); ``None`` if empty."""
        sql = f"SELECT {_STEP_COLUMNS} FROM steps WHERE run_id = ? ORDER BY step DESC LIMIT 1"
        with self._lock:
            self._check_open()
            row = self._db.execute(sql, (run_id,)).fetchone()
        return self._step(row) if row is not None else super().last_step(run_id)

    def _load_run(self, run_id: str) -> RunRecord | None:
        row = self._db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else self._run(row)

    def _all_runs(self) -> list[RunRecord]:
        return [self._run(row) for row in self._db.execute(f"SELECT {_RUN_COLUMNS} FROM runs")]

    def list_runs(
        self, *, status: RunStatus | None = None, graph: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        """Runs matching the filters, newest first, at most ``limit``."""
        sql = (
            f"SELECT {_RUN_COLUMNS} FROM runs"
            " WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR graph = ?2)"
            " ORDER BY created_at DESC, run_id DESC LIMIT ?3"
        )
        with self._lock:
            self._check_open()
            return [self._run(row) for row in self._db.execute(sql, (status, graph, max(limit, 0)))]

    def _save_run(self, run: RunRecord, *, new: bool) -> None:
        parent_run, parent_step = run.parent if run.parent is not None else (None, None)
        values = (
            run.run_id,
            run.graph,
            run.graph_hash,
            run.created_at,
            run.status,
            parent_run,
            parent_step,
            _rules.first_step(run) - 1,
            dumps(run.meta, "meta"),
            FORMAT,
        )
        verb = "INSERT" if new else "REPLACE"
        self._db.execute(
            f"{verb} INTO runs (run_id, graph, graph_hash, created_at, status, parent_run, parent_step,"
            " base, meta, format) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )

    def _own_steps(self, run_id: str, upto: int | None) -> list[StepRecord]:
        sql = f"SELECT {_STEP_COLUMNS} FROM steps WHERE run_id = ? AND step <= ? ORDER BY step"
        limit = upto if upto is not None else 2**62
        return [self._step(row) for row in self._db.execute(sql, (run_id, limit))]

    def _own_last_number(self, run_id: str) -> int | None:
        row = self._db.execute("SELECT max(step) FROM steps WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else row[0]

    def _write_steps(self, records: Sequence[StepRecord]) -> None:
        self._db.executemany(_INSERT_STEP, [_step_row(r) for r in records])

    def _delete_runs(self, run_ids: Sequence[str]) -> None:
        keys = [(rid,) for rid in run_ids]
        self._db.executemany("DELETE FROM steps WHERE run_id = ?", keys)
        self._db.executemany("DELETE FROM runs WHERE run_id = ?", keys)

    def close(self) -> None:
        """Close the connection; the store is unusable afterwards."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    # -- rows to records ----------------------------------------------------------------------------

    def _run(self, row: tuple[Any, ...]) -> RunRecord:
        run_id, graph, graph_hash, created_at, status, parent_run, parent_step, meta, fmt = row
        where = f"{self.path}, table runs, row run_id='{run_id}'"
        fields: Mapping[str, Any] = {
            "run_id": run_id,
            "graph": graph,
            "graph_hash": graph_hash,
            "created_at": created_at,
            "status": status,
            "parent": None if parent_run is None else [parent_run, parent_step],
            "meta": loads(meta, f"{where} (column meta)"),
            "format": fmt,
        }
        return run_from_dict(fields, where)

    def _step(self, row: tuple[Any, ...]) -> StepRecord:
        run_id, step, node, delta, nxt, created_at, meta, fmt = row
        where = f"{self.path}, table steps, row (run_id='{run_id}', step={step})"
        fields: Mapping[str, Any] = {
            "run_id": run_id,
            "step": step,
            "node": node,
            "delta": loads(delta, f"{where} (column delta)"),
            "next": loads(nxt, f"{where} (column next)"),
            "created_at": created_at,
            "meta": loads(meta, f"{where} (column meta)"),
            "format": fmt,
        }
        return step_from_dict(fields, where)


class _Retry(Exception):
    """The fast path could not append every row: roll back and let the checked path explain why."""


def _step_row(r: StepRecord) -> tuple[object, ...]:
    # dumps validates before anything is written, naming the field path of a non-JSON value.
    _rules.check_step(r)
    return (
        r.run_id,
        r.step,
        r.node,
        dumps(r.delta, "delta"),
        dumps(list(r.next), "next"),
        r.created_at,
        dumps(r.meta, "meta"),
        r.format,
    )
