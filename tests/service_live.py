"""A real service for tests: the app on uvicorn on 127.0.0.1 (a free port) in a thread, an ``Engine``
without Ray (state-graph pipelines run on its loop), a token store and an audit log under a temporary
``$HEADRACE_HOME``. Clients are real httpx clients."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from engine.audit import AuditLog
from engine.policy import Policy
from engine.runtime.engine import Engine
from engine.runtime.tenants import TenantQuota
from engine.service.app import create_app
from engine.service.auth import LocalToken, ServiceTokens
from engine.service.schedules import ScheduleSpec
from engine.service.server import ServiceServer, open_served_runs, start_schedules
from engine.service.tokens import TokenStore

GRAPH = """version: 1
name: tiny-graph
state:
  fields:
    n: {type: integer, default: 0}
nodes:
  add:
    op: call
    fn: tests.service_nodes:add_one
edges:
  - {from: START, to: add}
  - {from: add, to: END}
"""


@dataclass
class LiveService:
    """A running service and what tests need to talk to it and inspect it."""

    url: str
    owner: str
    """The discovery file's token: an admin of every tenant."""
    store: TokenStore
    audit: AuditLog
    app: Any
    home: Path

    def client(self, token: str | None) -> httpx.Client:
        """An httpx client sending ``token`` (None: no Authorization header)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)  # a loaded CI machine

    def token(self, role: str, *tenants: str, expires: float | None = None) -> str:
        """A new token of the store."""
        return self.store.create(role, tenants, expires=expires)[0]

    def api_entries(self) -> list[dict[str, Any]]:
        """The audit log's ``api`` entries."""
        return [e for e in self.audit.entries() if e.get("event") == "api"]


@contextmanager
def live_service(
    home: Path,
    *,
    engine: bool = True,
    quotas: dict[str, TenantQuota] | None = None,
    tls: tuple[Path, Path] | None = None,
    max_concurrent_runs: int = 8,
    schedules: list[ScheduleSpec] | None = None,
    policies: dict[str, Policy] | None = None,
    **app_options: Any,
) -> Iterator[LiveService]:
    """Serve the app until the block ends (``home`` must be ``$HEADRACE_HOME`` of the test); ``quotas``:
    the engine's tenants; ``tls``: (certificate, key) to serve HTTPS with; ``policies``: the tenants' own
    policies (as the configuration's ``tenants.T.policy``); dataflow runs use the Ray this process has
    (the ``ray_cluster`` fixture's)."""
    tokens = ServiceTokens(LocalToken(), TokenStore(home / "tokens.json"))
    audit = AuditLog(home / "audit.jsonl")
    app = create_app(None, tokens, audit, **app_options)
    running = (
        Engine(
            start_ray=False, max_concurrent_runs=max_concurrent_runs, metrics_port=0, tenants=quotas
        ).start()
        if engine
        else None
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    ready = threading.Event()

    def started() -> None:
        if running is not None:
            app.state.runs = open_served_runs(running, asyncio.get_running_loop(), policies)
            app.state.schedules = start_schedules(app.state.runs, schedules or [], audit)
        ready.set()

    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        access_log=False,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
    )
    server = ServiceServer(config, started, lambda: None)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "the test server did not start"
        scheme = "https" if tls else "http"
        yield LiveService(f"{scheme}://127.0.0.1:{port}", tokens.token, tokens.store, audit, app, home)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        if running is not None:
            # bounded: a cancelled pipeline-graph run can miss its interrupt (it lands between two of the
            # run thread's own waits) and keep the engine's close waiting; its threads are daemons
            closer = threading.Thread(target=running.close, kwargs={"cancel": True}, daemon=True)
            closer.start()
            closer.join(30)


def wait_status(client: httpx.Client, run_id: str, *want: str, timeout: float = 60) -> dict[str, Any]:
    """The run's view once its status is one of ``want``."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/v1/runs/{run_id}")
        body = response.json()
        if response.status_code == 200 and body["status"] in want:
            return body
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never became {want}: {body}")
