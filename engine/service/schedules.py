"""Schedules: a pipeline run for a tenant on a cron expression or an interval, kept in the service's
database so they survive a restart, and claimed fire by fire so none fires twice.

- **When.** ``cron`` (five fields, parsed and iterated by ``croniter``, in UTC) or ``every_s``
  (counted from the schedule's creation). :func:`due` is the pure rule: the fire times since the last
  one, cut down by the catch-up policy.
- **Catch-up after downtime.** A fire time is *on time* when it passed less than ``GRACE_S`` ago.
  ``none``: only on-time fires run (those missed while the server was down are dropped); ``last``: the
  latest missed fire runs once; ``all``: every missed fire within ``catch_up_within_s`` runs, oldest
  first (at most ``MAX_CATCH_UP``).
- **Overlap**, when the previous run of the schedule is still in flight at a fire: ``skip`` drops the
  fire, ``queue`` waits for the previous run to end (the fire stays due), ``cancel`` cancels it and
  starts the new one.
- **Never twice.** Firing advances the schedule's ``last_fire`` with one conditional UPDATE (``WHERE
  last_fire = <what this process read>``): of two processes sharing the database only one wins, and a
  restart never re-runs a fire it recorded. A crash between the claim and the submission loses that
  fire (at most once).
- **``${schedule.time}``** (the fire time, ISO 8601 UTC) and ``${schedule.name}`` in ``overrides`` are
  replaced before the run is submitted.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

GRACE_S = 60.0
MAX_CATCH_UP = 100

ScheduleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]


class ScheduleSpec(BaseModel):
    """A pipeline to run on a cron expression or an interval, for a tenant."""

    model_config = ConfigDict(extra="forbid")

    name: ScheduleName = Field(description="Unique name (letters, digits, '.', '_', '-').")
    tenant: str = Field(description="The tenant its runs belong to.")
    path: str | None = Field(None, description="A pipeline file on the server (under its allowed roots).")
    pipeline: str | None = Field(None, description="The pipeline's YAML or JSON text (instead of `path`).")
    overrides: list[str] = Field(
        default_factory=list,
        description="`--set` strings; `${schedule.time}` (ISO 8601 UTC) and `${schedule.name}` are replaced.",
    )
    cron: str | None = Field(None, description="A five-field cron expression, in UTC.")
    every_s: float | None = Field(None, ge=1, description="An interval in seconds (instead of `cron`).")
    overlap: Literal["skip", "queue", "cancel"] = Field(
        "skip", description="When the previous run is still in flight: skip, queue behind it, or cancel it."
    )
    catch_up: Literal["none", "last", "all"] = Field(
        "last", description="Fires missed while the server was down: none, the last one, or all within N."
    )
    catch_up_within_s: float = Field(
        86_400.0, gt=0, description="With `catch_up: all`: only missed fires this recent run."
    )
    priority: int = Field(0, description="Its runs' priority within the tenant.")
    inputs: dict[str, Any] | None = Field(None, description="A state graph's input state.")

    @model_validator(mode="after")
    def _one_of_each(self) -> ScheduleSpec:
        if (self.path is None) == (self.pipeline is None):
            raise ValueError("give exactly one of `path` and `pipeline`")
        if (self.cron is None) == (self.every_s is None):
            raise ValueError("give exactly one of `cron` and `every_s`")
        return self

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"cron {value!r} is not a valid cron expression (five fields: m h dom mon dow)")
        return value


def fire_times(
    spec: ScheduleSpec, created: float, after: float, now: float, limit: int = 10_000
) -> list[float]:
    """The schedule's fire times in ``(after, now]``, oldest first (at most ``limit``, the latest kept)."""
    out: list[float] = []
    if spec.every_s is not None:
        k = max(int((after - created) // spec.every_s) + 1, 1)
        while (t := created + k * spec.every_s) <= now:
            out.append(t)
            k += 1
            if len(out) > limit:
                out.pop(0)
        return out
    assert spec.cron is not None
    it = croniter(spec.cron, datetime.fromtimestamp(after, timezone.utc))
    while (t := float(it.get_next(float))) <= now:
        out.append(t)
        if len(out) > limit:
            out.pop(0)
    return out


def due(spec: ScheduleSpec, created: float, last: float, now: float) -> tuple[list[float], float | None]:
    """What to run now: the fire times to submit, and the new ``last_fire`` (None: nothing passed)."""
    missed = fire_times(spec, created, last, now)
    if not missed:
        return [], None
    if spec.catch_up == "last":
        return [missed[-1]], missed[-1]
    if spec.catch_up == "all":
        recent = [t for t in missed if now - t <= spec.catch_up_within_s]
        return recent[-MAX_CATCH_UP:], missed[-1]
    return [t for t in missed if now - t <= GRACE_S], missed[-1]


def next_fire(spec: ScheduleSpec, created: float, after: float) -> float:
    """The first fire time after ``after``."""
    if spec.every_s is not None:
        k = max(int((after - created) // spec.every_s) + 1, 1)
        return created + k * spec.every_s
    assert spec.cron is not None
    return float(croniter(spec.cron, datetime.fromtimestamp(after, timezone.utc)).get_next(float))


def stamp(when: float) -> str:
    """``${schedule.time}``: ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def overrides_at(spec: ScheduleSpec, when: float) -> list[str]:
    """The schedule's overrides with ``${schedule.time}`` and ``${schedule.name}`` replaced."""
    return [
        o.replace("${schedule.time}", stamp(when)).replace("${schedule.name}", spec.name)
        for o in spec.overrides
    ]


@dataclass(frozen=True)
class Stored:
    """A schedule as the database holds it."""

    spec: ScheduleSpec
    created: float
    last_fire: float
    last_run_id: str | None

    def as_dict(self) -> dict[str, Any]:
        """What ``GET /v1/schedules`` shows."""
        return {
            **self.spec.model_dump(exclude={"pipeline", "inputs"}),
            "created": self.created,
            "last_fire": self.last_fire if self.last_fire > self.created else None,
            "last_run_id": self.last_run_id,
            "next_fire": next_fire(self.spec, self.created, max(self.last_fire, time.time())),
        }


_SCHEMA = """
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    spec TEXT NOT NULL,
    created REAL NOT NULL,
    last_fire REAL NOT NULL,
    last_run_id TEXT
);
"""


class ScheduleStore:
    """The schedules of a service (SQLite, beside its ledger of accepted runs)."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    def put(self, spec: ScheduleSpec, now: float | None = None) -> Stored:
        """Create or replace a schedule; a replaced one keeps its creation and last fire."""
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute(
                "INSERT INTO schedules VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT(name) DO UPDATE SET "
                "tenant = excluded.tenant, spec = excluded.spec",
                (spec.name, spec.tenant, spec.model_dump_json(), now, now),
            )
        stored = self.get(spec.name)
        assert stored is not None
        return stored

    def delete(self, name: str) -> bool:
        """Remove a schedule; whether it existed."""
        with self._lock:
            return self._db.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount == 1

    def get(self, name: str) -> Stored | None:
        """One schedule."""
        with self._lock:
            row = self._db.execute(
                "SELECT spec, created, last_fire, last_run_id FROM schedules WHERE name = ?", (name,)
            ).fetchone()
        return _stored(row) if row else None

    def all(self) -> list[Stored]:
        """Every schedule, by name."""
        with self._lock:
            rows = self._db.execute(
                "SELECT spec, created, last_fire, last_run_id FROM schedules ORDER BY name"
            ).fetchall()
        return [_stored(r) for r in rows]

    def claim(self, name: str, seen: float, new: float) -> bool:
        """Advance ``last_fire`` from ``seen`` to ``new``; False when another claim got there first."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE schedules SET last_fire = ? WHERE name = ? AND last_fire = ?", (new, name, seen)
            )
        return cursor.rowcount == 1

    def ran(self, name: str, run_id: str) -> None:
        """Remember the schedule's latest run (for its overlap policy)."""
        with self._lock:
            self._db.execute("UPDATE schedules SET last_run_id = ? WHERE name = ?", (run_id, name))


def _stored(row: tuple[Any, ...]) -> Stored:
    spec, created, last_fire, last_run_id = row
    return Stored(ScheduleSpec.model_validate(json.loads(spec)), created, last_fire, last_run_id)
