"""The record store interface, and the pure rules every backend shares."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace
from typing import Protocol

from engine.records.events import EVENT_KINDS, Event, RunHeader
from engine.records.leases import Lease

_FINAL_KEYS = ("status", "error", "cost_usd")


class RecordsError(Exception):
    """A record store cannot be read or written as asked (a gap in a run's log, an unknown run...)."""


class RecordStore(Protocol):
    """Where run records live. One writer per run appends; any number of readers."""

    def append(self, events: Sequence[Event]) -> None:
        """Add events (of one or several runs) in order; all or none are written. A run's events must
        continue its log: ``seq`` is its last seq + 1, and its first event is ``run_started``."""
        ...

    def events(self, run_id: str, kinds: Collection[str] | None = None) -> list[Event]:
        """The run's events in order (only ``kinds`` when given); ``RecordsError`` for an unknown run."""
        ...

    def last_seq(self, run_id: str) -> int:
        """The run's last event number, -1 when it has none."""
        ...

    def header(self, run_id: str) -> RunHeader | None:
        """The run's header, ``None`` when the store has no such run."""
        ...

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
        """Runs started in ``[since, until)`` matching the filters, newest first, at most ``limit``."""
        ...

    def claim(self, key: str, owner: str, ttl_s: float) -> Lease:
        """Take or renew the lease on ``key`` for ``owner`` for ``ttl_s`` seconds, in one step; the lease
        that holds afterwards: ``owner``'s, or another owner's live one (then nothing changed)."""
        ...

    def release(self, key: str, owner: str) -> None:
        """Give up ``owner``'s lease on ``key`` (nothing when another owner holds it)."""
        ...

    def lease(self, key: str) -> Lease | None:
        """The lease on ``key``, live or lapsed; ``None`` when there is none."""
        ...

    def delete(self, run_ids: Collection[str]) -> None:
        """Retention: remove these runs' records whole (unknown ids are ignored)."""
        ...

    def close(self) -> None:
        """Release files and connections; the store is unusable afterwards."""
        ...


def fold_header(header: RunHeader | None, events: Iterable[Event]) -> RunHeader | None:
    """``header`` after ``events`` of its run (the header a ``run_started`` event creates)."""
    for event in events:
        if event.kind == "run_started":
            data = event.data
            header = RunHeader(
                run_id=event.run_id,
                pipeline=str(data.get("pipeline", "")),
                tenant=str(data.get("tenant", "default")),
                kind=str(data.get("kind", "dataflow")),
                status="running",
                started_at=header.started_at if header is not None else event.at,
                updated_at=event.at,
            )
            continue
        if header is None:
            raise RecordsError(f"run {event.run_id}: its log must begin with run_started, not {event.kind}")
        changes: dict[str, object] = {"updated_at": event.at}
        if event.kind == "run_finished":
            changes.update({k: event.data.get(k) for k in _FINAL_KEYS})
            changes["cost_usd"] = float(event.data.get("cost_usd") or 0.0)
            changes["finished_at"] = event.at
        header = replace(header, **changes)  # type: ignore[arg-type]
    return header


def run_key(run_id: str) -> str:
    """The lease key of the driver that runs (or resumes) ``run_id``."""
    return f"run:{run_id}"


def with_lease(header: RunHeader, lease: Lease | None, now: float) -> RunHeader:
    """``header`` as readers see it: a ``running`` run whose driver's lease lapsed has ``died``."""
    if header.status == "running" and lease is not None and lease.lapsed(now):
        return replace(header, status="died")
    return header


def check_continues(last: int, events: Sequence[Event], run_id: str) -> int:
    """Check that ``events`` (all of ``run_id``) number on from ``last``; return the new last."""
    for event in events:
        if event.kind not in EVENT_KINDS:
            raise RecordsError(f"run {run_id}: unknown event kind {event.kind!r}")
        if event.seq != last + 1:
            raise RecordsError(
                f"run {run_id}: event {event.seq} does not follow event {last} (two writers for one run?)"
            )
        last = event.seq
    return last


def by_run(events: Sequence[Event]) -> dict[str, list[Event]]:
    """``events`` grouped by run, each group in its given order."""
    groups: dict[str, list[Event]] = {}
    for event in events:
        groups.setdefault(event.run_id, []).append(event)
    return groups


def matches(
    header: RunHeader,
    status: str | None,
    pipeline: str | None,
    tenant: str | None,
    since: float | None,
    until: float | None,
) -> bool:
    """Whether ``header`` passes ``list_runs``' filters."""
    return (
        (status is None or header.status == status)
        and (pipeline is None or header.pipeline == pipeline)
        and (tenant is None or header.tenant == tenant)
        and (since is None or header.started_at >= since)
        and (until is None or header.started_at < until)
    )


def newest_first(headers: Iterable[RunHeader], limit: int) -> list[RunHeader]:
    """``headers`` sorted newest first (by start, then id), at most ``limit``."""
    return sorted(headers, key=lambda h: (h.started_at, h.run_id), reverse=True)[: max(limit, 0)]
