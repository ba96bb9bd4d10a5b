"""The engine's HTTP API (FastAPI): ``/v1/runs`` to submit, read, follow and cancel runs; health.

Every route but ``/healthz`` and ``/readyz`` needs the bearer token (:mod:`engine.service.auth`). The
OpenAPI document is at ``/openapi.json``. :func:`create_app` takes what the server holds (the runs and
the authenticator), so tests and the multi-user service can assemble it differently.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request, status
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from engine.errors import ConfigError
from engine.runtime.admission import EngineBusy
from engine.service.auth import Authenticator, Principal, authenticated
from engine.service.models import Problems, RunCreated, RunRequest, RunView
from engine.service.runs import DuplicateRun, ServedRun, ServedRuns, UnknownRun, view

API_VERSION = "v1"
_KEEPALIVE_S = 15.0

Caller = Annotated[Principal, Depends(authenticated)]


def create_app(runs: ServedRuns | None, authenticator: Authenticator) -> FastAPI:
    """The API over ``runs`` (set later through ``app.state.runs`` when None: the server binds them to
    its event loop at start-up)."""
    app = FastAPI(
        title="headrace engine",
        version=_version(),
        summary="Submit, follow and cancel headrace runs on a warm engine.",
    )
    app.state.runs = runs
    app.state.authenticator = authenticator
    app.state.stopping = False

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The server answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz(request: Request) -> JSONResponse:
        """The engine takes runs (503 while it starts or stops)."""
        ready = request.app.state.runs is not None and not request.app.state.stopping
        code = status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE
        return JSONResponse({"status": "ready" if ready else "unavailable"}, status_code=code)

    @app.post(
        f"/{API_VERSION}/runs",
        status_code=status.HTTP_201_CREATED,
        response_model=RunCreated,
        responses={422: {"model": Problems, "description": "The pipeline is invalid."}},
        tags=["runs"],
    )
    def submit(body: RunRequest, request: Request, caller: Caller) -> Any:
        """Check the pipeline (cached per content, overrides and environment) and start it."""
        served_runs = _runs(request)
        try:
            served, warnings = served_runs.submit(body)
        except ConfigError as exc:
            problems = [d.as_dict() for d in exc.diagnostics]
            errors = sum(1 for d in exc.diagnostics if d.severity == "error")
            return JSONResponse(
                {"detail": f"the pipeline has {errors} problem(s)", "problems": problems},
                status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            )
        except DuplicateRun as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        except EngineBusy as exc:
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc)) from None
        return {"run_id": served.handle.run_id, "status": served.handle.status(), "warnings": warnings}

    @app.get(f"/{API_VERSION}/runs/{{run_id}}", response_model=RunView, tags=["runs"])
    def get_run(run_id: str, request: Request, caller: Caller) -> Any:
        """The run's status, and once it ended its summary (as `headrace run --json` prints it)."""
        return view(_served(request, run_id).handle)

    @app.post(f"/{API_VERSION}/runs/{{run_id}}/cancel", response_model=RunView, tags=["runs"])
    def cancel_run(run_id: str, request: Request, caller: Caller) -> Any:
        """Cancel the run (a no-op once it ended); it ends `cancelled` with what it committed kept."""
        handle = _served(request, run_id).handle
        handle.cancel()
        return view(handle)

    @app.get(f"/{API_VERSION}/runs/{{run_id}}/events", response_class=EventSourceResponse, tags=["runs"])
    async def run_events(
        run_id: str,
        request: Request,
        caller: Caller,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> AsyncIterator[ServerSentEvent]:
        """The run's events as server-sent events: `accepted`, `progress` (the live summary, every half
        second while it changes), `end` (a RunView). Reconnect with `Last-Event-ID` to go on."""
        served = _served(request, run_id)
        after = _event_id(last_event_id)
        async for event in _follow(served, after, request):
            yield event

    return app


async def _follow(served: ServedRun, after: int, request: Request) -> AsyncIterator[ServerSentEvent]:
    log = served.events
    while True:
        for event in log.after(after):
            after = event.id
            yield ServerSentEvent(data=event.data, event=event.kind, id=str(event.id))
            if event.kind == "end":
                return
        if await request.is_disconnected():
            return
        await log.wait(after, _KEEPALIVE_S)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("headrace")
    except PackageNotFoundError:
        return "0"


def _runs(request: Request) -> ServedRuns:
    runs: ServedRuns | None = request.app.state.runs
    if runs is None or request.app.state.stopping:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the engine is starting or stopping")
    return runs


def _served(request: Request, run_id: str) -> ServedRun:
    runs: ServedRuns | None = request.app.state.runs
    if runs is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the engine is starting")
    try:
        return runs.get(run_id)
    except UnknownRun:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"no run {run_id!r} on this engine (`headrace runs show {run_id}` reads past runs' records)",
        ) from None


def _event_id(header: str | None) -> int:
    if header is None:
        return 0
    try:
        return max(0, int(header))
    except ValueError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Last-Event-ID must be an event id") from None
