"""The service's ledger of accepted runs: every run it answered ``201`` for, durably, before the answer.

A run's record in the runs store (:mod:`engine.records`) is written once the run starts; a run still
queued when the server is killed has none. The ledger (SQLite, ``service.db`` under
``$HEADRACE_HOME``) keeps each accepted run's id, tenant, pipeline, submitter and the request it came
from, and its final status once it ends. ``GET /v1/runs`` lists from it, so no accepted run is lost
from the listing: when a server starts, the runs an earlier process left unended are settled from the
runs store (finished, or ``died`` when their driver's lease lapsed) or, never started, marked ``died``
(resubmit them, or resume them with the same id).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEDGER_FILE = "service.db"
FINAL = frozenset({"succeeded", "failed", "budget_exceeded", "cancelled", "interrupted", "died"})
_SCHEMA = """
CREATE TABLE IF NOT EXISTS accepted (
    run_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    token TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    status TEXT NOT NULL,
    finished_at REAL,
    reason TEXT,
    request TEXT NOT NULL,
    server TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS accepted_by_time ON accepted (submitted_at DESC, run_id DESC);
"""


@dataclass(frozen=True)
class Accepted:
    """One accepted run as the ledger holds it."""

    run_id: str
    tenant: str
    pipeline: str
    token: str
    submitted_at: float
    status: str
    """``queued`` until it ends (the live status is the engine's), then how it ended."""
    finished_at: float | None
    reason: str | None
    request: dict[str, Any]
    """The submission (without ``env``), for ``resume``."""
    server: str
    """Which server process accepted it."""

    def as_dict(self) -> dict[str, Any]:
        """What ``GET /v1/runs`` lists (without the request)."""
        return {
            "run_id": self.run_id,
            "tenant": self.tenant,
            "pipeline": self.pipeline,
            "token": self.token,
            "submitted_at": self.submitted_at,
            "status": self.status,
            "finished_at": self.finished_at,
            "reason": self.reason,
        }


class RunLedger:
    """The accepted runs of a service, in one SQLite file (thread-safe; one connection)."""

    def __init__(self, path: Path | str, server: str) -> None:
        self.path = Path(path)
        self.server = server
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process kill
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    def accept(self, run_id: str, tenant: str, pipeline: str, token: str, request: dict[str, Any]) -> None:
        """Record an accepted run (a resumed run's row starts over as ``queued``)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO accepted VALUES (?, ?, ?, ?, ?, 'queued', NULL, NULL, ?, ?)",
                (run_id, tenant, pipeline, token, time.time(), json.dumps(request), self.server),
            )

    def restore(self, run_id: str, previous: Accepted | None) -> None:
        """Undo :meth:`accept` of a run the engine then refused: its earlier row back, or none."""
        with self._lock:
            if previous is None:
                self._db.execute("DELETE FROM accepted WHERE run_id = ?", (run_id,))
                return
            p = previous
            self._db.execute(
                "INSERT OR REPLACE INTO accepted VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    p.run_id,
                    p.tenant,
                    p.pipeline,
                    p.token,
                    p.submitted_at,
                    p.status,
                    p.finished_at,
                    p.reason,
                    json.dumps(p.request),
                    p.server,
                ),
            )

    def finish(self, run_id: str, status: str, reason: str | None = None) -> None:
        """Record how a run ended."""
        with self._lock:
            self._db.execute(
                "UPDATE accepted SET status = ?, finished_at = ?, reason = ? WHERE run_id = ?",
                (status, time.time(), reason, run_id),
            )

    def get(self, run_id: str) -> Accepted | None:
        """The run's row, if this service accepted it."""
        with self._lock:
            row = self._db.execute("SELECT * FROM accepted WHERE run_id = ?", (run_id,)).fetchone()
        return _accepted(row) if row is not None else None

    def unended(self) -> list[Accepted]:
        """Runs accepted by another (earlier) server process and not recorded as ended."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM accepted WHERE status NOT IN ({}) AND server != ?".format(
                    ",".join("?" * len(FINAL))
                ),
                (*sorted(FINAL), self.server),
            ).fetchall()
        return [_accepted(r) for r in rows]

    def list(
        self,
        *,
        tenants: Iterable[str] | None,
        statuses: Iterable[str] | None = None,
        pipeline: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Accepted]:
        """Runs newest first; ``tenants`` None means every tenant."""
        where: list[str] = []
        args: list[Any] = []
        for column, values in (("tenant", tenants), ("status", statuses)):
            if values is not None:
                kept = sorted(set(values))
                where.append(f"{column} IN ({','.join('?' * len(kept))})" if kept else "0")
                args.extend(kept)
        if pipeline is not None:
            where.append("pipeline = ?")
            args.append(pipeline)
        if since is not None:
            where.append("submitted_at >= ?")
            args.append(since)
        if until is not None:
            where.append("submitted_at < ?")
            args.append(until)
        sql = "SELECT * FROM accepted"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY submitted_at DESC, run_id DESC LIMIT ? OFFSET ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit, offset)).fetchall()
        return [_accepted(r) for r in rows]


def _accepted(row: tuple[Any, ...]) -> Accepted:
    run_id, tenant, pipeline, token, submitted, status, finished, reason, request, server = row
    return Accepted(
        run_id, tenant, pipeline, token, submitted, status, finished, reason, json.loads(request), server
    )
