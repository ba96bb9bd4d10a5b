"""What the service knows about a run, from three places: the runs it holds in memory (live status and
events), its ledger of accepted runs (every run it ever answered 201 for, with its tenant), and the runs
store's records (the per-node table, the report; written by the run itself).

:func:`find` says which tenant a run belongs to (for the 403 check) and :func:`describe` what
``GET /v1/runs/{id}`` answers; :func:`listing` is ``GET /v1/runs``; :func:`settle` closes the runs an
earlier server process left unended (see :mod:`engine.service.ledger`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engine.records import RecordsError, RecordStore, RunHeader, RunView
from engine.records.base import run_key, with_lease
from engine.service.ledger import FINAL, Accepted
from engine.service.runs import ServedRun, ServedRuns, UnknownRun, view

LIVE = frozenset({"queued", "running"})


@dataclass(frozen=True)
class Found:
    """A run the service can tell about."""

    run_id: str
    tenant: str
    served: ServedRun | None
    """Held in memory (submitted since this server started)."""
    accepted: Accepted | None
    """Its ledger row (any run this service accepted)."""
    header: RunHeader | None
    """Its record's header (any run with a record in the runs store), the lease applied."""


def find(runs: ServedRuns, records: RecordStore | None, run_id: str) -> Found:
    """The run ``run_id`` if the service accepted it, or :class:`UnknownRun` (runs others started in the
    same runs store are not shown to the service's tokens)."""
    try:
        served: ServedRun | None = runs.get(run_id)
    except UnknownRun:
        served = None
    accepted = runs.ledger.get(run_id) if runs.ledger is not None else None
    header = _header(records, run_id)
    if served is not None:
        tenant = served.handle.tenant
    elif accepted is not None:
        tenant = accepted.tenant
    else:  # a run in the store that the service did not accept (a local `headrace run`) is not its own
        raise UnknownRun(run_id)
    return Found(run_id, tenant, served, accepted, header)


def describe(found: Found, records: RecordStore | None) -> dict[str, Any]:
    """``GET /v1/runs/{id}``: its status (and, once it ended, summary or error) plus ``record``, the
    per-node table from the runs store (``headrace runs show --json``'s ``record``) when it has one."""
    if found.served is not None:
        out = view(found.served.handle)
    else:
        out = {"run_id": found.run_id, "tenant": found.tenant, "status": _stored_status(found)}
        if found.accepted is not None and found.accepted.reason:
            out["error"] = {"code": found.accepted.status, "message": found.accepted.reason}
    record = record_view(records, found)
    out["record"] = record.as_dict() if record is not None else None
    if found.accepted is not None:
        out["pipeline"] = found.accepted.pipeline
        out["submitted_at"] = found.accepted.submitted_at
        out["submitted_by"] = found.accepted.token
        out["overrides"] = found.accepted.request.get("overrides", [])
    return out


def record_view(records: RecordStore | None, found: Found) -> RunView | None:
    """The run's record folded into its view (status ``died`` when its driver's lease lapsed)."""
    if records is None or found.header is None:
        return None
    try:
        record = RunView.of(records.events(found.run_id))
    except (RecordsError, ValueError):
        return None
    record.tenant = found.tenant  # a state graph's record names its label's tenant; the service knows
    if found.served is None and found.header.status == "died":
        record.status = "died"
    return record


def listing(
    runs: ServedRuns,
    *,
    tenants: Iterable[str] | None,
    status: str | None,
    pipeline: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """``GET /v1/runs``: the accepted runs newest first, with their live status while they are held."""
    assert runs.ledger is not None
    statuses = None if status is None else (["queued"] if status in LIVE else [status])
    rows = runs.ledger.list(
        tenants=tenants,
        statuses=statuses,
        pipeline=pipeline,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    out = []
    for row in rows:
        item = row.as_dict()
        if row.status not in FINAL:
            with contextlib.suppress(UnknownRun):
                item["status"] = runs.get(row.run_id).handle.status()
        if status is None or item["status"] == status:
            out.append(item)
    return out


def settle(runs: ServedRuns, records: RecordStore | None) -> list[str]:
    """Close the runs an earlier server process accepted and never saw end: as their record says they
    ended, else ``died`` (resumable with their id). Returns their ids."""
    assert runs.ledger is not None
    settled = []
    for row in runs.ledger.unended():
        header = _header(records, row.run_id)
        if header is None:
            runs.ledger.finish(
                row.run_id,
                "died",
                "the server stopped before the run started; submit it again (or resume it with its id)",
            )
        elif header.status in FINAL:
            runs.ledger.finish(row.run_id, header.status, header.error)
        else:
            runs.ledger.finish(
                row.run_id,
                "died",
                "the server stopped during the run; POST /v1/runs/{id}/resume continues it",
            )
        settled.append(row.run_id)
    return settled


def _stored_status(found: Found) -> str:
    if found.accepted is not None and found.accepted.status in FINAL:
        return found.accepted.status
    if found.header is not None:
        return found.header.status
    return "died"  # accepted by an earlier server, never started, not yet settled


def _header(records: RecordStore | None, run_id: str) -> RunHeader | None:
    if records is None:
        return None
    header = records.header(run_id)
    if header is None:
        return None
    return with_lease(header, records.lease(run_key(run_id)), time.time())
