"""The service's HTTP app (FastAPI): the ``/v1`` API, health, metrics, and the order of its middleware.

Every route but ``/healthz`` and ``/readyz`` needs a bearer token, and its role and tenants decide what
it may do (:mod:`engine.service.auth`). Middleware, outermost first: every change and every refusal
audited (:mod:`engine.service.audit_trail`), then request bodies bounded in size and time
(:mod:`engine.service.guard`). Routes: :mod:`engine.service.api_runs` (runs),
:mod:`engine.service.api_pipelines` (validate, estimate), :mod:`engine.service.api_schedules`,
:mod:`engine.service.api_tokens`, and
the web view at ``/`` (:mod:`engine.service.web`).
The OpenAPI document is at ``/openapi.json``.
:func:`create_app` takes what the server holds (the runs, the authenticator, the audit log), so tests
assemble it the same way.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse, PlainTextResponse

from engine.audit import AuditLog
from engine.service.api_pipelines import router as pipelines_router
from engine.service.api_runs import router as runs_router
from engine.service.api_schedules import router as schedules_router
from engine.service.api_tokens import router as tokens_router
from engine.service.audit_trail import AuditTrail
from engine.service.auth import Authenticator, Viewer
from engine.service.guard import DEFAULT_MAX_BYTES, DEFAULT_READ_TIMEOUT_S, BodyGuard
from engine.service.runs import ServedRuns
from engine.service.web import router as web_router

API_VERSION = "v1"


def create_app(
    runs: ServedRuns | None,
    authenticator: Authenticator,
    audit: AuditLog | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BYTES,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
) -> FastAPI:
    """The API over ``runs`` (set later through ``app.state.runs`` when None: the server binds them to
    its event loop at start-up); ``audit``: the log its changes and refusals go to (default: the
    default audit log, as ``headrace audit`` reads it); request bodies above ``max_body_bytes`` get 413,
    bodies slower than ``read_timeout_s`` 408."""
    app = FastAPI(
        title="headrace service",
        version=_version(),
        summary="Submit, follow, cancel and resume headrace runs; tokens with roles and tenants; audited.",
    )
    app.state.runs = runs
    app.state.authenticator = authenticator
    app.state.stopping = False
    app.state.schedules = None  # the server's ScheduleStore, set with the runs at start-up
    # the one added last is outermost: the audit trail sees the guard's refusals (413, 408) too
    app.add_middleware(BodyGuard, max_bytes=max_body_bytes, read_timeout_s=read_timeout_s)
    app.add_middleware(AuditTrail, log=audit or AuditLog())
    app.include_router(runs_router, prefix=f"/{API_VERSION}")
    app.include_router(pipelines_router, prefix=f"/{API_VERSION}")
    app.include_router(schedules_router, prefix=f"/{API_VERSION}")
    app.include_router(tokens_router, prefix=f"/{API_VERSION}")
    app.include_router(web_router)

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

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def metrics(caller: Viewer) -> PlainTextResponse:
        """The engine's Prometheus metrics (runs by status, nodes' rows and cost, queue depth by tenant)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from engine.metrics import REGISTRY

        return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("headrace")
    except PackageNotFoundError:
        return "0"
