"""Record store backends: in memory, SQLite (the default, the same file as checkpoints) and fsspec.

Each appends a batch of events in one step that either happens whole or not at all, keeps a header
per run for ``list_runs``, and passes ``tests/conformance/test_record_stores.py``.
"""

from __future__ import annotations

import json
import os
import posixpath
import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.records.base import (
    RecordsError,
    by_run,
    check_continues,
    fold_header,
    matches,
    newest_first,
)
from engine.records.events import Event, RunHeader


class MemoryRecords:
    """Records in this process's memory (tests, and engines that keep no history)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, list[Event]] = {}
        self._headers: dict[str, RunHeader] = {}

    def append(self, events: Sequence[Event]) -> None:
        """See :meth:`RecordStore.append`."""
        with self._lock:
            staged = {}
            for run_id, group in by_run(events).items():
                check_continues(len(self._events.get(run_id, [])) - 1, group, run_id)
                staged[run_id] = (group, fold_header(self._headers.get(run_id), group))
            for run_id, (group, header) in staged.items():
                self._events.setdefault(run_id, []).extend(group)
                self._headers[run_id] = header  # type: ignore[assignment]

    def events(self, run_id: str, kinds: Collection[str] | None = None) -> list[Event]:
        """See :meth:`RecordStore.events`."""
        with self._lock:
            if run_id not in self._events:
                raise RecordsError(f"no run {run_id} in this record store")
            return [e for e in self._events[run_id] if kinds is None or e.kind in kinds]

    def last_seq(self, run_id: str) -> int:
        """See :meth:`RecordStore.last_seq`."""
        with self._lock:
            return len(self._events.get(run_id, [])) - 1

    def header(self, run_id: str) -> RunHeader | None:
        """See :meth:`RecordStore.header`."""
        with self._lock:
            return self._headers.get(run_id)

    def list_runs(self, **filters: Any) -> list[RunHeader]:
        """See :meth:`RecordStore.list_runs`."""
        limit = filters.pop("limit", 20)
        with self._lock:
            found = [h for h in self._headers.values() if _passes(h, filters)]
        return newest_first(found, limit)

    def delete(self, run_ids: Collection[str]) -> None:
        """See :meth:`RecordStore.delete`."""
        with self._lock:
            for run_id in run_ids:
                self._events.pop(run_id, None)
                self._headers.pop(run_id, None)

    def close(self) -> None:
        """Nothing to release."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS record_runs (
    run_id      TEXT PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    tenant      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    started_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    finished_at REAL,
    cost_usd    REAL NOT NULL,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS record_runs_by_start ON record_runs (started_at);
CREATE TABLE IF NOT EXISTS record_events (
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    at     REAL NOT NULL,
    kind   TEXT NOT NULL,
    node   TEXT,
    data   TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
"""
_MARKS = ",".join("?" * 10)
_HEADER_COLUMNS = (
    "run_id, pipeline, tenant, kind, status, started_at, updated_at, finished_at, cost_usd, error"
)


class SqliteRecords:
    """Records in a SQLite file: the tables sit beside the checkpoint store's in the same ``runs.db``.

    WAL with ``synchronous=NORMAL``, like the checkpoint store: a killed process loses nothing it
    appended. A batch is one transaction; the recorder batches a run's events every fraction of a
    second, so a run costs a few commits a second however many batches it moves.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def append(self, events: Sequence[Event]) -> None:
        """See :meth:`RecordStore.append`."""
        if not events:
            return
        with self._transaction():
            for run_id, group in by_run(events).items():
                check_continues(self._last_seq(run_id), group, run_id)
                header = fold_header(self._header(run_id), group)
                self._db.executemany(
                    "INSERT INTO record_events (run_id, seq, at, kind, node, data) VALUES (?,?,?,?,?,?)",
                    [(e.run_id, e.seq, e.at, e.kind, e.node, _dumps(e.data)) for e in group],
                )
                assert header is not None  # fold_header raised otherwise
                self._db.execute(
                    f"INSERT OR REPLACE INTO record_runs ({_HEADER_COLUMNS}) VALUES ({_MARKS})",
                    _header_row(header),
                )

    def events(self, run_id: str, kinds: Collection[str] | None = None) -> list[Event]:
        """See :meth:`RecordStore.events`."""
        with self._lock:
            if self._header(run_id) is None:
                raise RecordsError(f"no run {run_id} in {self.path}")
            rows = self._db.execute(
                "SELECT run_id, seq, at, kind, node, data FROM record_events WHERE run_id = ? ORDER BY seq",
                (run_id,),
            ).fetchall()
        found = [Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]
        return [e for e in found if kinds is None or e.kind in kinds]

    def last_seq(self, run_id: str) -> int:
        """See :meth:`RecordStore.last_seq`."""
        with self._lock:
            return self._last_seq(run_id)

    def header(self, run_id: str) -> RunHeader | None:
        """See :meth:`RecordStore.header`."""
        with self._lock:
            return self._header(run_id)

    def list_runs(
        self,
        *,
        status: str | None = None,
        pipeline: str | None = None,
        tenant: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 20,
    ) -> list[RunHeader]:
        """See :meth:`RecordStore.list_runs`."""
        sql = (
            f"SELECT {_HEADER_COLUMNS} FROM record_runs WHERE (?1 IS NULL OR status = ?1)"
            " AND (?2 IS NULL OR pipeline = ?2) AND (?3 IS NULL OR tenant = ?3)"
            " AND (?4 IS NULL OR started_at >= ?4) AND (?5 IS NULL OR started_at < ?5)"
            " ORDER BY started_at DESC, run_id DESC LIMIT ?6"
        )
        with self._lock:
            rows = self._db.execute(sql, (status, pipeline, tenant, since, until, max(limit, 0))).fetchall()
        return [RunHeader(*row) for row in rows]

    def delete(self, run_ids: Collection[str]) -> None:
        """See :meth:`RecordStore.delete`."""
        ids = [(r,) for r in run_ids]
        with self._transaction():
            self._db.executemany("DELETE FROM record_events WHERE run_id = ?", ids)
            self._db.executemany("DELETE FROM record_runs WHERE run_id = ?", ids)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction under the lock: all of it is committed, or none."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _last_seq(self, run_id: str) -> int:
        row = self._db.execute("SELECT max(seq) FROM record_events WHERE run_id = ?", (run_id,)).fetchone()
        return -1 if row[0] is None else int(row[0])

    def _header(self, run_id: str) -> RunHeader | None:
        row = self._db.execute(
            f"SELECT {_HEADER_COLUMNS} FROM record_runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        return None if row is None else RunHeader(*row)


class FsspecRecords:
    """Records as files under ``<root>/records/`` on any fsspec filesystem (a folder, s3, gs...)::

        records/<run_id>/header.json                 the RunHeader, replaced after each batch
        records/<run_id>/events/000000012.jsonl      one batch of events, named by its first seq

    A batch is one object written with one PUT (atomic on object stores; tmp + rename on local disk),
    so readers never see half a batch. One writer per run, as for the checkpoint store's folders.
    """

    def __init__(self, url: str) -> None:
        from connectors.files import filesystem  # connectors sit beside engine; imported on use

        self.url = url
        self._fs, root = filesystem(url)
        self._root = posixpath.join(root.rstrip("/") or "/", "records")
        self._lock = threading.Lock()

    def append(self, events: Sequence[Event]) -> None:
        """See :meth:`RecordStore.append`."""
        with self._lock:
            staged = []
            for run_id, group in by_run(events).items():
                check_continues(self._last_seq(run_id), group, run_id)
                staged.append((run_id, group, fold_header(self._header(run_id), group)))
            for run_id, group, header in staged:
                lines = "".join(_dumps(e.as_dict()) + "\n" for e in group)
                self._put(posixpath.join(self._run_dir(run_id), "events", f"{group[0].seq:09d}.jsonl"), lines)
                self._put(posixpath.join(self._run_dir(run_id), "header.json"), _dumps(header.as_dict()))  # type: ignore[union-attr]

    def events(self, run_id: str, kinds: Collection[str] | None = None) -> list[Event]:
        """See :meth:`RecordStore.events`."""
        with self._lock:
            if self._header(run_id) is None:
                raise RecordsError(f"no run {run_id} in {self.url}")
            found: list[Event] = []
            for path in self._batches(run_id):
                with self._fs.open(path, "r", encoding="utf-8") as f:
                    found.extend(_event(json.loads(line)) for line in f if line.strip())
        return [e for e in found if kinds is None or e.kind in kinds]

    def last_seq(self, run_id: str) -> int:
        """See :meth:`RecordStore.last_seq`."""
        with self._lock:
            return self._last_seq(run_id)

    def header(self, run_id: str) -> RunHeader | None:
        """See :meth:`RecordStore.header`."""
        with self._lock:
            return self._header(run_id)

    def list_runs(self, **filters: Any) -> list[RunHeader]:
        """See :meth:`RecordStore.list_runs`."""
        limit = filters.pop("limit", 20)
        with self._lock:
            paths = self._fs.glob(posixpath.join(self._root, "*", "header.json"))
            headers = [self._read_header(p) for p in paths]
        return newest_first([h for h in headers if _passes(h, filters)], limit)

    def delete(self, run_ids: Collection[str]) -> None:
        """See :meth:`RecordStore.delete` (the header goes first, so a half-deleted run is not listed)."""
        with self._lock:
            for run_id in run_ids:
                folder = self._run_dir(run_id)
                header = posixpath.join(folder, "header.json")
                if self._fs.exists(header):
                    self._fs.rm(header)
                if self._fs.exists(folder):
                    self._fs.rm(folder, recursive=True)

    def close(self) -> None:
        """Nothing to release."""

    def _run_dir(self, run_id: str) -> str:
        if "/" in run_id or run_id in ("", ".", ".."):
            raise RecordsError(f"run id {run_id!r} cannot name a folder")
        return posixpath.join(self._root, run_id)

    def _batches(self, run_id: str) -> list[str]:
        folder = posixpath.join(self._run_dir(run_id), "events")
        if not self._fs.exists(folder):
            return []
        return sorted(p for p in self._fs.ls(folder, detail=False) if p.endswith(".jsonl"))

    def _last_seq(self, run_id: str) -> int:
        batches = self._batches(run_id)
        if not batches:
            return -1
        with self._fs.open(batches[-1], "r", encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        return int(json.loads(lines[-1])["seq"])

    def _header(self, run_id: str) -> RunHeader | None:
        path = posixpath.join(self._run_dir(run_id), "header.json")
        return self._read_header(path) if self._fs.exists(path) else None

    def _read_header(self, path: str) -> RunHeader:
        with self._fs.open(path, "r", encoding="utf-8") as f:
            return RunHeader(**json.load(f))

    def _put(self, path: str, text: str) -> None:
        self._fs.makedirs(posixpath.dirname(path), exist_ok=True)
        protocol = self._fs.protocol
        local = (protocol[0] if isinstance(protocol, tuple | list) else protocol) in ("file", "local")
        target = path + ".tmp" if local else path
        with self._fs.open(target, "w", encoding="utf-8") as f:
            f.write(text)
        if local:
            self._fs.mv(target, path)


def _passes(header: RunHeader, filters: dict[str, Any]) -> bool:
    return matches(
        header,
        filters.get("status"),
        filters.get("pipeline"),
        filters.get("tenant"),
        filters.get("since"),
        filters.get("until"),
    )


def _header_row(h: RunHeader) -> tuple[Any, ...]:
    return (
        h.run_id,
        h.pipeline,
        h.tenant,
        h.kind,
        h.status,
        h.started_at,
        h.updated_at,
        h.finished_at,
        h.cost_usd,
        h.error,
    )


def _event(d: dict[str, Any]) -> Event:
    return Event(d["run_id"], d["seq"], d["at"], d["kind"], d.get("node"), d.get("data") or {})


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
