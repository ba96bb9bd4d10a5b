"""``/v1/runs``: submit (operator), list and read (viewer), follow as server-sent events, report, cancel
and resume (operator); each run checked against the caller's tenants (403 outside them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from engine.errors import ConfigError
from engine.policy import PolicyViolation
from engine.records.events import RECORD_STATUSES
from engine.runtime.admission import EngineBusy
from engine.service import catalog
from engine.service.auth import Operator, Principal, Viewer, for_tenant, note, tenant_of
from engine.service.catalog import Found
from engine.service.models import Problems, ResumeRequest, RunCreated, RunPage, RunRequest
from engine.service.runs import DuplicateRun, ServedRuns, UnknownRun

router = APIRouter(tags=["runs"])
_KEEPALIVE_S = 15.0
_STATUSES = ("queued", *RECORD_STATUSES)  # queued: accepted by the service, not started yet


def served_runs(request: Request) -> ServedRuns:
    """The engine's runs, or 503 while it starts or stops."""
    runs: ServedRuns | None = request.app.state.runs
    if runs is None or request.app.state.stopping:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the engine is starting or stopping")
    return runs


def _found(request: Request, run_id: str, caller: Principal) -> Found:
    runs: ServedRuns | None = request.app.state.runs
    if runs is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the engine is starting")
    note(request, run_id=run_id)
    try:
        found = catalog.find(runs, runs.records, run_id)
    except UnknownRun:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id!r} on this service") from None
    for_tenant(request, caller, found.tenant)
    return found


def _read_run(run_id: str, request: Request, caller: Viewer) -> Found:
    return _found(request, run_id, caller)


def submit_run(runs: ServedRuns, body: RunRequest, request: Request, caller: Principal) -> Any:
    """Start ``body`` for ``caller``: 201, or 422 with located problems, 403, 409 or 429."""
    if body.tenant is None:
        body = body.model_copy(update={"tenant": tenant_of(caller)})
    assert body.tenant is not None
    for_tenant(request, caller, body.tenant)
    note(request, target=body.path or "(text)", run_id=body.resume or body.run_id)
    try:
        served, warnings = runs.submit(body, token=caller.name)
    except ConfigError as exc:
        return problems_response(exc)
    except PolicyViolation as exc:
        note(request, reason=str(exc))
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
    except DuplicateRun as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except EngineBusy as exc:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc)) from None
    note(request, run_id=served.handle.run_id)
    return {"run_id": served.handle.run_id, "status": served.handle.status(), "warnings": warnings}


def problems_response(exc: ConfigError) -> JSONResponse:
    """422 with every problem located as ``headrace validate`` prints it."""
    problems = [d.as_dict() for d in exc.diagnostics]
    errors = sum(1 for d in exc.diagnostics if d.severity == "error")
    return JSONResponse(
        {"detail": f"the pipeline has {errors} problem(s)", "problems": problems},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


@router.post(
    "/runs",
    status_code=status.HTTP_201_CREATED,
    response_model=RunCreated,
    responses={422: {"model": Problems, "description": "The pipeline is invalid."}},
)
def submit(body: RunRequest, request: Request, caller: Operator) -> Any:
    """Check the pipeline (cached per content, overrides and environment) and start it (operator)."""
    return submit_run(served_runs(request), body, request, caller)


@router.get("/runs", response_model=RunPage)
def list_runs(
    request: Request,
    caller: Viewer,
    status_: Annotated[
        str | None, Query(alias="status", description=f"One of {', '.join(_STATUSES)}.")
    ] = None,
    pipeline: Annotated[str | None, Query(description="Only runs of this pipeline (its name).")] = None,
    tenant: Annotated[str | None, Query(description="Only runs of this tenant (one of the token's).")] = None,
    since: Annotated[float | None, Query(description="Submitted at or after (unix seconds).")] = None,
    until: Annotated[float | None, Query(description="Submitted before (unix seconds).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Any:
    """The runs this service accepted, newest first, in the caller's tenants (viewer)."""
    if status_ is not None and status_ not in _STATUSES:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"status: one of {', '.join(_STATUSES)}")
    if tenant is not None:
        for_tenant(request, caller, tenant)
    tenants = [tenant] if tenant is not None else (None if caller.tenants is None else sorted(caller.tenants))
    runs = catalog.listing(
        served_runs(request),
        tenants=tenants,
        status=status_,
        pipeline=pipeline,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    return {"runs": runs, "next_offset": offset + limit if len(runs) == limit else None}


@router.get("/runs/{run_id}")
def get_run(run_id: str, request: Request, caller: Viewer) -> Any:
    """The run's status and, once it ended, its summary (as `headrace run --json` prints it) or error;
    `record`: its per-node table from the runs store (as `headrace runs show --json`)."""
    found = _found(request, run_id, caller)
    return catalog.describe(found, served_runs(request).records)


@router.get("/runs/{run_id}/report", response_class=HTMLResponse)
def run_report(run_id: str, request: Request, caller: Viewer) -> HTMLResponse:
    """The run's HTML report (as `headrace runs report` writes it)."""
    from engine.records.report import render_report

    found = _found(request, run_id, caller)
    record = catalog.record_view(served_runs(request).records, found)
    if record is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"run {run_id!r} has no record yet (it has not started)"
        )
    return HTMLResponse(render_report(record))


@router.get("/runs/{run_id}/events", response_class=EventSourceResponse)
async def run_events(
    request: Request,
    found: Annotated[Found, Depends(_read_run)],
    after: Annotated[int, Depends(_last_event_id)],
) -> AsyncIterator[ServerSentEvent]:
    """The run's events as server-sent events: `accepted`, `progress` (the live summary, every half
    second while it changes), `end` (the run as `GET /v1/runs/{id}` says it). Reconnect with
    `Last-Event-ID` to go on. A run this server does not hold gets its `end` at once."""
    if found.served is None:
        runs = served_runs(request)
        yield ServerSentEvent(data=catalog.describe(found, runs.records), event="end", id="1")
        return
    log = found.served.events
    while True:
        for event in log.after(after):
            after = event.id
            yield ServerSentEvent(data=event.data, event=event.kind, id=str(event.id))
            if event.kind == "end":
                return
        if await request.is_disconnected():
            return
        await log.wait(after, _KEEPALIVE_S)


@router.post("/runs/{run_id}/cancel")
def cancel_run(run_id: str, request: Request, caller: Operator) -> Any:
    """Cancel the run (a no-op once it ended); it ends `cancelled` with what it committed kept."""
    found = _found(request, run_id, caller)
    runs = served_runs(request)
    if found.served is not None:
        found.served.handle.cancel()
    return catalog.describe(catalog.find(runs, runs.records, run_id), runs.records)


@router.post(
    "/runs/{run_id}/resume",
    status_code=status.HTTP_201_CREATED,
    response_model=RunCreated,
    responses={422: {"model": Problems, "description": "The pipeline is invalid now."}},
)
def resume_run(run_id: str, body: ResumeRequest, request: Request, caller: Operator) -> Any:
    """Continue a run this service accepted (cancelled, failed, died, or waiting at an `interrupt()`,
    answered with `value`), from its pipeline as it was submitted."""
    found = _found(request, run_id, caller)
    if found.accepted is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"run {run_id!r} was not submitted to this service: resume it where it ran",
        )
    submitted = {k: v for k, v in found.accepted.request.items() if k not in ("run_id", "resume")}
    again = RunRequest.model_validate(
        {**submitted, "resume": run_id, "tenant": found.tenant, "env": body.env}
    )
    if "value" in body.model_fields_set:
        again = again.model_copy(update={"value": body.value})
        again.model_fields_set.add("value")
    return submit_run(served_runs(request), again, request, caller)


def _last_event_id(last_event_id: Annotated[str | None, Header()] = None) -> int:
    """The ``Last-Event-ID`` header's id (0 without one); checked before the stream starts."""
    if last_event_id is None:
        return 0
    try:
        return max(0, int(last_event_id))
    except ValueError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Last-Event-ID must be an event id") from None
