"""``/v1/schedules``: create or replace (admin), list (viewer) and delete (admin) the service's schedules,
each within the caller's tenants (see :mod:`engine.service.schedules` for what a schedule is)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status

from engine.service.auth import Admin, Viewer, for_tenant, note
from engine.service.schedules import ScheduleSpec, ScheduleStore

router = APIRouter(tags=["schedules"])


def _store(request: Request) -> ScheduleStore:
    store: ScheduleStore | None = request.app.state.schedules
    if store is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is starting")
    return store


@router.post("/schedules", status_code=status.HTTP_201_CREATED)
def put_schedule(body: ScheduleSpec, request: Request, caller: Admin) -> Any:
    """Create a schedule, or replace the one of that name (it keeps its last fire: nothing fires twice)."""
    note(request, schedule=body.name)
    store = _store(request)
    existing = store.get(body.name)
    if existing is not None:
        for_tenant(request, caller, existing.spec.tenant)
    for_tenant(request, caller, body.tenant)
    return store.put(body).as_dict()


@router.get("/schedules")
def list_schedules(request: Request, caller: Viewer) -> Any:
    """The schedules of the caller's tenants, with their last and next fire and their last run."""
    return {"schedules": [s.as_dict() for s in _store(request).all() if caller.may_act_for(s.spec.tenant)]}


@router.delete("/schedules/{name}")
def delete_schedule(name: str, request: Request, caller: Admin) -> Any:
    """Remove a schedule (its runs stay)."""
    note(request, schedule=name)
    store = _store(request)
    existing = store.get(name)
    if existing is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no schedule {name!r}")
    for_tenant(request, caller, existing.spec.tenant)
    store.delete(name)
    return {"deleted": name}
