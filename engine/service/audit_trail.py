"""Every API call that changes something, and every refused request, into the hash-chained audit log.

An ASGI middleware around the whole app: when a response starts it knows the method, the path and the
status, and the route has left the rest in the request's state (:func:`engine.service.auth.note`: the
token id, role, tenant, run or schedule, and why a request was refused). It appends one ``api`` entry to
the audit log (:mod:`engine.audit`) *before* the response goes out, so a client that got its answer
finds the entry in ``headrace audit show``, and ``headrace audit verify`` covers it like every entry.

Audited: every request answered 401 or 403, and every ``POST``/``PUT``/``PATCH``/``DELETE`` except
those that only read (``/v1/validate``, ``/v1/estimate``, the web view's sign-in form).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from engine.audit import AuditLog

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_READ_ONLY_POSTS = frozenset({"/v1/validate", "/v1/estimate", "/signin"})
_FACTS = ("token", "role", "tenant", "run_id", "schedule", "target", "reason")


def audited(method: str, path: str, status: int) -> bool:
    """Whether a request gets an audit entry."""
    if status in (401, 403):
        return True
    return method not in _READS and path not in _READ_ONLY_POSTS


def outcome(status: int) -> str:
    """``ok``, ``refused`` (401/403), ``rejected`` (another 4xx) or ``error`` (5xx)."""
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "refused"
    return "rejected" if status < 500 else "error"


def entry_fields(method: str, path: str, status: int, state: MutableMapping[str, Any], client: str) -> dict:
    """The audit entry of one request."""
    fields: dict[str, Any] = {
        "method": method,
        "path": path,
        "status": status,
        "outcome": outcome(status),
        "client": client,
    }
    for key in _FACTS:
        fields[key] = state.get(key)
    return fields


_WRITERS = 64
"""Threads waiting on the audit log's group commits: apart from the request threads, so requests waiting
for their entry to be on disk never hold a thread that a route needs (the log writes them in groups)."""


class AuditTrail:
    """ASGI middleware appending the audited requests' entries (see the module's docstring)."""

    def __init__(self, app: _ASGIApp, log: AuditLog) -> None:
        self.app = app
        self.log = log
        self._writers = ThreadPoolExecutor(_WRITERS, thread_name_prefix="headrace-audit")

    async def _append(self, fields: dict[str, Any]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._writers, self.log.append, "api", fields)

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        method, path = str(scope["method"]), str(scope["path"])
        client = scope.get("client")
        where = f"{client[0]}:{client[1]}" if client else ""
        started = False

        async def send_after_audit(message: _Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                status = int(message["status"])
                if audited(method, path, status):
                    fields = entry_fields(method, path, status, state, where)
                    await self._append(fields)
            await send(message)

        try:
            await self.app(scope, receive, send_after_audit)
        except Exception:
            if not started and audited(method, path, 500):
                fields = entry_fields(method, path, 500, state, where)
                await self._append(fields)
            raise
