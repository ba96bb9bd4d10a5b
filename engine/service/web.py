"""The web view at ``/``: server-rendered pages (Jinja2, no script or style from anywhere else) of the runs
(with filters), a run (its DAG, live status, cost and rows from the event stream, its per-node table,
its errors with their place in the pipeline file, a link to its report) and the schedules.

Signing in posts a token, which is kept in an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` over
HTTPS); the cookie stands for the token on ``GET`` requests only (pages, the event stream, the report),
so no cross-site form can change anything with it. Roles and tenants apply as on the API: a run of
another tenant is refused (403).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from engine.records.dag import DagNode, dag_svg
from engine.records.events import RECORD_STATUSES
from engine.service import catalog
from engine.service.auth import COOKIE, Authenticator, Principal, Unauthenticated, note
from engine.service.runs import ServedRuns, UnknownRun

router = APIRouter(include_in_schema=False)
_pages = Environment(
    loader=PackageLoader("engine.service", "templates"), autoescape=select_autoescape(["j2"])
)
_STATUSES = ("queued", *RECORD_STATUSES)  # queued: accepted by the service, not started yet
_REFRESH_MS = 3000


def _caller(request: Request) -> Principal | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    authenticator: Authenticator = request.app.state.authenticator
    try:
        caller = authenticator.authenticate(token)
    except Unauthenticated:
        return None
    note(request, token=caller.name, role=caller.role)
    return caller


def _page(name: str, code: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_pages.get_template(name).render(**context), status_code=code)


def _utc(stamp: float | None) -> str:
    if stamp is None:
        return ""
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@router.get("/favicon.ico")
def favicon() -> Response:
    """No icon (browsers ask for one on every page, the report and JSON ones too)."""
    return Response(status_code=204)


@router.get("/signin")
def signin_form() -> HTMLResponse:
    """The sign-in form."""
    return _page("signin.html.j2", title="sign in", who=None, problem=None)


@router.post("/signin")
async def signin(request: Request) -> Response:
    """Check the posted token; keep it in the cookie and go to the runs, or say why not (401)."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    authenticator: Authenticator = request.app.state.authenticator
    try:
        caller = authenticator.authenticate(token)
    except Unauthenticated as exc:
        note(request, token=exc.token_id, reason=f"sign-in refused: {exc.reason}")
        return _page("signin.html.j2", 401, title="sign in", who=None, problem=f"refused: {exc.reason}")
    note(request, token=caller.name, role=caller.role)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/"
    )
    return response


@router.get("/signout")
def signout() -> Response:
    """Forget the cookie."""
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/")
def runs_page(
    request: Request,
    status: str | None = None,
    tenant: str | None = None,
    pipeline: str | None = None,
    offset: int = 0,
) -> Response:
    """The runs the caller may see, newest first, with filters."""
    caller = _caller(request)
    runs: ServedRuns | None = request.app.state.runs
    if caller is None:
        return RedirectResponse("/signin", status_code=303)
    if runs is None:
        return _page(
            "signin.html.j2", 503, title="starting", who=caller.name, problem="the service is starting"
        )
    status, tenant, pipeline = status or None, tenant or None, pipeline or None
    if tenant is not None and not caller.may_act_for(tenant):
        return _refused(caller, f"tenant {tenant!r} is not one of this token's tenants")
    tenants = [tenant] if tenant else (None if caller.tenants is None else sorted(caller.tenants))
    limit = 50
    listed = catalog.listing(
        runs,
        tenants=tenants,
        status=status if status in _STATUSES else None,
        pipeline=pipeline,
        since=None,
        until=None,
        limit=limit,
        offset=max(offset, 0),
    )
    rows = [{**r, "when": _utc(r["submitted_at"])} for r in listed]
    next_offset = offset + limit if len(listed) == limit else None
    query = {k: v for k, v in {"status": status, "tenant": tenant, "pipeline": pipeline}.items() if v}
    return _page(
        "runs.html.j2",
        title="runs",
        who=caller.name,
        runs=rows,
        statuses=_STATUSES,
        status=status,
        tenant=tenant,
        pipeline=pipeline,
        next_offset=next_offset,
        next_link="/?" + urlencode({**query, "offset": next_offset or 0}),
        refresh_ms=_REFRESH_MS,
    )


@router.get("/runs/{run_id}")
def run_page(run_id: str, request: Request) -> Response:
    """One run: DAG, live status and cost, nodes, errors, report link."""
    caller = _caller(request)
    runs: ServedRuns | None = request.app.state.runs
    if caller is None:
        return RedirectResponse("/signin", status_code=303)
    if runs is None:
        return _page(
            "signin.html.j2", 503, title="starting", who=caller.name, problem="the service is starting"
        )
    note(request, run_id=run_id)
    try:
        found = catalog.find(runs, runs.records, run_id)
    except UnknownRun:
        return _page("signin.html.j2", 404, title="no such run", who=caller.name, problem=f"no run {run_id}")
    note(request, tenant=found.tenant)
    if not caller.may_act_for(found.tenant):
        note(request, reason=f"tenant {found.tenant} is not one of the token's")
        return _refused(caller, f"run {run_id} belongs to tenant {found.tenant!r}, not one of this token's")
    described = catalog.describe(found, runs.records)
    record = catalog.record_view(runs.records, found)
    nodes = list(record.nodes.values()) if record is not None else []
    errors = [
        {
            "node": e.get("node") or "",
            "where": _where(e.get("location")),
            "message": e.get("message", ""),
        }
        for e in (record.errors if record is not None else [])
    ]
    if not errors and described.get("error"):
        errors = [{"node": "", "where": "", "message": described["error"].get("message", "")}]
    dag = None
    if record is not None and record.nodes:
        boxes = [DagNode(n.node, n.op or "-", f"{n.rows} rows", "error" if n.errors else "ok") for n in nodes]
        dag = dag_svg(boxes, record.edges)
    return _page(
        "run.html.j2",
        title=run_id,
        who=caller.name,
        run={
            "run_id": run_id,
            "tenant": found.tenant,
            "status": described["status"],
            "pipeline": described.get("pipeline", ""),
        },
        cost=record.cost_usd if record is not None else 0.0,
        rows=(record.rows_written if record is not None else None) or 0,
        nodes=nodes,
        errors=errors,
        dag=dag,
        ended=described["status"] not in ("queued", "running"),
    )


@router.get("/schedules")
def schedules_page(request: Request) -> Response:
    """The schedules of the caller's tenants."""
    caller = _caller(request)
    if caller is None:
        return RedirectResponse("/signin", status_code=303)
    store = request.app.state.schedules
    shown = []
    for stored in store.all() if store is not None else []:
        if not caller.may_act_for(stored.spec.tenant):
            continue
        data = stored.as_dict()
        spec = stored.spec
        shown.append(
            {
                **data,
                "when": f"cron {spec.cron}" if spec.cron else f"every {spec.every_s:g}s",
                "last": _utc(data["last_fire"]),
                "next": _utc(data["next_fire"]),
            }
        )
    return _page("schedules.html.j2", title="schedules", who=caller.name, schedules=shown)


def _refused(caller: Principal, why: str) -> HTMLResponse:
    return _page("signin.html.j2", 403, title="refused", who=caller.name, problem=f"403: {why}")


def _where(location: Any) -> str:
    if not isinstance(location, dict):
        return ""
    return f"{location.get('file', '')}:{location.get('line', '')}:{location.get('col', '')}"
