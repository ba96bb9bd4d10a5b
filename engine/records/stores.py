"""Record store backends: in memory, SQLite (the default, the same file as checkpoints) and fsspec.

Each appends a batch of events in one step that either happens whole or not at all, keeps a header
per run for ``list_runs``, and passes ``tests/conformance/test_record_stores.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import sqlite3
import threading
import time
import urllib.parse
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
    run_key,
    with_lease,
)
from engine.records.events import Event, RunHeader
from engine.records.leases import Lease, decide


class MemoryRecords:
    """Records in this process's memory (tests, and engines that keep no history)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, list[Event]] = {}
        self._headers: dict[str, RunHeader] = {}
        self._leases: dict[str, Lease] = {}

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
            header = self._headers.get(run_id)
            return (
                None if header is None else with_lease(header, self._leases.get(run_key(run_id)), time.time())
            )

    def list_runs(self, **filters: Any) -> list[RunHeader]:
        """See :meth:`RecordStore.list_runs`."""
        limit = filters.pop("limit", 20)
        now = time.time()
        with self._lock:
            seen = [with_lease(h, self._leases.get(run_key(h.run_id)), now) for h in self._headers.values()]
        return newest_first([h for h in seen if _passes(h, filters)], limit)

    def claim(self, key: str, owner: str, ttl_s: float) -> Lease:
        """See :meth:`RecordStore.claim`."""
        with self._lock:
            lease = decide(self._leases.get(key), key, owner, ttl_s, time.time())
            self._leases[key] = lease
            return lease

    def release(self, key: str, owner: str) -> None:
        """See :meth:`RecordStore.release`."""
        with self._lock:
            if (held := self._leases.get(key)) is not None and held.owner == owner:
                del self._leases[key]

    def lease(self, key: str) -> Lease | None:
        """See :meth:`RecordStore.lease`."""
        with self._lock:
            return self._leases.get(key)

    def delete(self, run_ids: Collection[str]) -> None:
        """See :meth:`RecordStore.delete`."""
        with self._lock:
            for run_id in run_ids:
                self._events.pop(run_id, None)
                self._headers.pop(run_id, None)
                self._leases.pop(run_key(run_id), None)

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
CREATE TABLE IF NOT EXISTS record_leases (
    key        TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_at REAL NOT NULL
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
            header = self._header(run_id)
            if header is None or header.status != "running":
                return header
            return with_lease(header, self._lease(run_key(run_id)), time.time())

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
        # running and died are both stored as running: which one a run is, its lease decides
        stored = "running" if status in ("running", "died") else status
        sql = (
            f"SELECT {_HEADER_COLUMNS}, l.owner, l.expires_at FROM record_runs"
            " LEFT JOIN record_leases AS l ON l.key = 'run:' || run_id WHERE (?1 IS NULL OR status = ?1)"
            " AND (?2 IS NULL OR pipeline = ?2) AND (?3 IS NULL OR tenant = ?3)"
            " AND (?4 IS NULL OR started_at >= ?4) AND (?5 IS NULL OR started_at < ?5)"
            " ORDER BY started_at DESC, run_id DESC"
        )
        found: list[RunHeader] = []
        now = time.time()
        with self._lock:
            cursor = self._db.execute(sql, (stored, pipeline, tenant, since, until))
            for row in cursor:
                header = RunHeader(*row[:10])
                lease = None if row[10] is None else Lease(run_key(header.run_id), row[10], row[11])
                header = with_lease(header, lease, now)
                if status is None or header.status == status:
                    found.append(header)
                    if len(found) >= max(limit, 0):
                        break
        return found

    def claim(self, key: str, owner: str, ttl_s: float) -> Lease:
        """See :meth:`RecordStore.claim`."""
        with self._transaction():
            lease = decide(self._lease(key), key, owner, ttl_s, time.time())
            if lease.owner == owner:
                self._db.execute(
                    "INSERT OR REPLACE INTO record_leases (key, owner, expires_at) VALUES (?, ?, ?)",
                    (key, owner, lease.expires_at),
                )
        return lease

    def release(self, key: str, owner: str) -> None:
        """See :meth:`RecordStore.release`."""
        with self._transaction():
            self._db.execute("DELETE FROM record_leases WHERE key = ? AND owner = ?", (key, owner))

    def lease(self, key: str) -> Lease | None:
        """See :meth:`RecordStore.lease`."""
        with self._lock:
            return self._lease(key)

    def delete(self, run_ids: Collection[str]) -> None:
        """See :meth:`RecordStore.delete`."""
        ids = [(r,) for r in run_ids]
        with self._transaction():
            self._db.executemany("DELETE FROM record_events WHERE run_id = ?", ids)
            self._db.executemany("DELETE FROM record_runs WHERE run_id = ?", ids)
            self._db.executemany("DELETE FROM record_leases WHERE key = ?", [(run_key(r),) for r in run_ids])

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

    def _lease(self, key: str) -> Lease | None:
        row = self._db.execute("SELECT owner, expires_at FROM record_leases WHERE key = ?", (key,)).fetchone()
        return None if row is None else Lease(key, row[0], row[1])


class FsspecRecords:
    """Records as files under ``<root>/records/`` on any fsspec filesystem (a folder, s3, gs...)::

        records/<run_id>/header.json                 the RunHeader, replaced after each batch
        records/<run_id>/events/000000012.jsonl      one batch of events, named by its first seq
        record-leases/<quoted key>.json              a lease (:mod:`engine.records.leases`)

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
            header = self._header(run_id)
            if header is None or header.status != "running":
                return header
            return with_lease(header, self._lease(run_key(run_id)), time.time())

    def list_runs(self, **filters: Any) -> list[RunHeader]:
        """See :meth:`RecordStore.list_runs`."""
        limit = filters.pop("limit", 20)
        now = time.time()
        with self._lock:
            paths = self._fs.glob(posixpath.join(self._root, "*", "header.json"))
            headers = [self._read_header(p) for p in paths]
            headers = [
                with_lease(h, self._lease(run_key(h.run_id)), now) if h.status == "running" else h
                for h in headers
            ]
        return newest_first([h for h in headers if _passes(h, filters)], limit)

    def claim(self, key: str, owner: str, ttl_s: float) -> Lease:
        """See :meth:`RecordStore.claim`. Claims are serialised by a lock file on a local folder; on an
        object store two claims in the same instant may both read the key free (the later write wins,
        and the loser finds its lease taken at its next renewal)."""
        with self._lock, self._leases_locked():
            lease = decide(self._lease(key), key, owner, ttl_s, time.time())
            if lease.owner == owner:
                self._put(self._lease_path(key), _dumps(dataclasses.asdict(lease)))
            return lease

    def release(self, key: str, owner: str) -> None:
        """See :meth:`RecordStore.release`."""
        with self._lock, self._leases_locked():
            held = self._lease(key)
            if held is not None and held.owner == owner:
                self._fs.rm(self._lease_path(key))

    def lease(self, key: str) -> Lease | None:
        """See :meth:`RecordStore.lease`."""
        with self._lock:
            return self._lease(key)

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
                lease = self._lease_path(run_key(run_id))
                if self._fs.exists(lease):
                    self._fs.rm(lease)

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

    def _lease_path(self, key: str) -> str:
        name = urllib.parse.quote(key, safe="") + ".json"
        return posixpath.join(posixpath.dirname(self._root), "record-leases", name)

    def _lease(self, key: str) -> Lease | None:
        path = self._lease_path(key)
        try:
            with self._fs.open(path, "r", encoding="utf-8") as f:
                return Lease(**json.load(f))
        except FileNotFoundError:
            return None

    @contextmanager
    def _leases_locked(self) -> Iterator[None]:
        """An exclusive lock over the lease files when the folder is local (``flock``); else nothing."""
        if not self._local():
            yield
            return
        import fcntl  # POSIX only, as are the local folders this guards

        folder = posixpath.dirname(self._lease_path("x"))
        self._fs.makedirs(folder, exist_ok=True)
        with open(posixpath.join(folder, ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _local(self) -> bool:
        protocol = self._fs.protocol
        return (protocol[0] if isinstance(protocol, tuple | list) else protocol) in ("file", "local")

    def _read_header(self, path: str) -> RunHeader:
        with self._fs.open(path, "r", encoding="utf-8") as f:
            return RunHeader(**json.load(f))

    def _put(self, path: str, text: str) -> None:
        self._fs.makedirs(posixpath.dirname(path), exist_ok=True)
        local = self._local()
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
