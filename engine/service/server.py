"""``headrace serve``'s process: Ray and an :class:`~engine.runtime.engine.Engine` kept warm, the HTTP
API on uvicorn, and the discovery file that lets ``headrace run`` find it.

Start-up: the engine (and Ray) start in the main thread, the socket is bound (port 0 picks one), the
server starts listening, and only then is the discovery file written. Stopping (SIGTERM, Ctrl-C): the
server stops taking runs and cancels those in flight at once, so their event streams end with
``cancelled`` and their records say so; uvicorn then closes the connections, the engine waits for the
runs to wind down, Ray stops, and the discovery file goes.
"""

from __future__ import annotations

import asyncio
import faulthandler
import ipaddress
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn

from engine.audit import AuditLog
from engine.errors import HeadraceError
from engine.policy import Policy
from engine.runtime.engine import Engine
from engine.service.app import create_app
from engine.service.auth import LocalToken, ServiceTokens
from engine.service.catalog import settle
from engine.service.compile_cache import CompileCache
from engine.service.config import ServiceConfig, load_service_config
from engine.service.discovery import (
    EngineInfo,
    discovery_path,
    headrace_home,
    live_info,
    remove_info,
    write_info,
)
from engine.service.ledger import LEDGER_FILE, RunLedger
from engine.service.runs import ServedRuns
from engine.service.scheduler import Scheduler
from engine.service.schedules import ScheduleSpec, ScheduleStore
from engine.service.tokens import TokenStore

_log = logging.getLogger(__name__)
_GRACE_S = 30


@dataclass(frozen=True)
class ServeOptions:
    """How ``headrace serve`` runs."""

    host: str = "127.0.0.1"
    port: int = 8537
    address: str | None = None
    """A Ray cluster to join (``auto``, ``ray://host:10001``); None: start a local Ray."""
    max_concurrent_runs: int = 64
    max_queued: int = 10_000
    log_level: str = "warning"
    tls_cert: str | None = None
    """PEM certificate (chain) to serve HTTPS with; with ``tls_key``."""
    tls_key: str | None = None
    """PEM private key of ``tls_cert``."""
    insecure: bool = False
    """Allow plain HTTP beyond loopback (tokens then cross the network in clear)."""
    config: str | None = None
    """The service's configuration file (tenants' quotas and policy, schedules)."""


class ServiceServer(uvicorn.Server):
    """uvicorn's server, told when it listens and when a signal asks it to stop."""

    def __init__(self, config: uvicorn.Config, on_started: Any, on_stop: Any) -> None:
        super().__init__(config)
        self._on_started = on_started
        self._on_stop = on_stop

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            self._on_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            self._on_stop()
        super().handle_exit(sig, frame)


def serve(options: ServeOptions, *, announce: Any = print) -> None:
    """Run the warm engine until SIGTERM or Ctrl-C; ``announce(text)`` tells the user where it listens."""
    where = discovery_path()
    running = live_info(where)
    if running is not None and running.pid != os.getpid():
        raise HeadraceError(
            f"an engine already serves this HEADRACE_HOME at {running.url} (pid {running.pid}); stop it "
            f"first, or give this one another HEADRACE_HOME"
        )
    check_exposure(options.host, options.tls_cert, options.tls_key, insecure=options.insecure)
    settings = load_service_config(options.config) if options.config else ServiceConfig()
    if settings.policy is not None:
        os.environ.update(settings.policy.policy().environ())  # the compile cache and workers read it
    chosen = close_unless_loopback(options.host, os.environ)
    sock = _bind(options.host, options.port)
    url = _url(options.host, sock.getsockname()[1], tls=options.tls_cert is not None)
    if chosen is not None:
        announce(chosen)
    tokens = ServiceTokens(LocalToken(), TokenStore())
    app = create_app(None, tokens)
    # metrics_port: the engine tracks its runs' figures only while this process serves metrics; the
    # port is loopback's, and /metrics (behind a token) is how others read them
    engine = Engine(
        options.address,
        max_concurrent_runs=options.max_concurrent_runs,
        max_queued=options.max_queued,
        tenants=settings.quotas(),
        metrics_port=0,
    )
    engine.start()  # Ray starts here, in the main thread (where it installs its signal handlers)
    info = EngineInfo(url, os.getpid(), time.time(), tokens.token)
    state: dict[str, Any] = {}

    def started() -> None:
        runs = open_served_runs(engine, asyncio.get_running_loop(), settings.policies())
        runs.start_ticker()
        app.state.schedules = start_schedules(runs, settings.schedules, AuditLog())
        state["runs"] = app.state.runs = runs
        write_info(info, where)
        announce(f"headrace engine at {url} (pid {info.pid}); discovery file {where}")

    def stopping() -> None:
        app.state.stopping = True
        runs: ServedRuns | None = state.get("runs")
        if runs is not None:
            # cancelled now, not when uvicorn gets round to it: their streams end with the outcome
            threading.Thread(target=runs.cancel_all, name="headrace-serve-cancel", daemon=True).start()

    config = uvicorn.Config(
        app,
        log_level=options.log_level,
        timeout_graceful_shutdown=_GRACE_S,
        lifespan="off",
        access_log=False,
        ssl_certfile=options.tls_cert,
        ssl_keyfile=options.tls_key,
    )
    server = ServiceServer(config, started, stopping)
    # uvicorn re-raises the signal that stopped it once it has: keep that from killing us before the
    # cleanup below (Ray's handlers, installed by ray.init, would end the process too)
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: every thread's stack
    try:
        server.run(sockets=[sock])
    finally:
        app.state.stopping = True
        remove_info(where, info.pid)
        try:
            engine.close(cancel=True)
        finally:
            sock.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        announce("headrace engine stopped")


def open_served_runs(
    engine: Engine, loop: asyncio.AbstractEventLoop, policies: Mapping[str, Policy] | None = None
) -> ServedRuns:
    """The runs of a service starting on ``loop``: its ledger (``service.db`` under ``$HEADRACE_HOME``),
    the runs store's records, and the runs an earlier process left unended settled (see
    :mod:`engine.service.ledger`); ``policies``: the tenants' own policies (the configuration's)."""
    from engine.records import open_records
    from engine.runtime.graphs import ensure_store_folder, store_url

    url = store_url(None)
    ensure_store_folder(url)
    ledger = RunLedger(headrace_home() / LEDGER_FILE, server=f"{socket.gethostname()}:{os.getpid()}")
    runs = ServedRuns(
        engine, CompileCache(), loop, ledger=ledger, records=open_records(url), policies=policies
    )
    settled = settle(runs, runs.records)
    if settled:
        _log.warning("%d run(s) accepted by an earlier server were left unended: settled", len(settled))
    return runs


def check_exposure(host: str, tls_cert: str | None, tls_key: str | None, *, insecure: bool) -> None:
    """Refuse what would send tokens in clear over a network: a bind beyond loopback without TLS (unless
    ``insecure``); and half a TLS setup (a certificate without its key, or the reverse)."""
    if (tls_cert is None) != (tls_key is None):
        raise HeadraceError("give both --tls-cert and --tls-key (PEM files), or neither")
    for flag, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None and not os.path.isfile(path):
            raise HeadraceError(f"{flag} {path}: no such file")
    if tls_cert is None and not insecure and not _is_loopback(host):
        raise HeadraceError(
            f"refusing to listen on {host} without TLS: bearer tokens would cross the network in clear; "
            "give --tls-cert and --tls-key, or --insecure (behind a TLS-terminating proxy)"
        )


def start_schedules(runs: ServedRuns, specs: list[ScheduleSpec], audit: AuditLog) -> ScheduleStore:
    """The schedule store (beside the ledger), with the configuration's schedules created or updated,
    and the scheduler ticking on the running loop."""
    store = ScheduleStore(headrace_home() / LEDGER_FILE)
    for spec in specs:
        store.put(spec)
    scheduler = Scheduler(store, runs, audit)
    _tasks.add(asyncio.get_running_loop().create_task(scheduler.run()))
    return store


_tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to its tasks


def close_unless_loopback(host: str, environ: MutableMapping[str, str]) -> str | None:
    """Choose the closed policy for a server others can reach: bound beyond loopback, with no
    ``HEADRACE_POLICY`` set, it sets ``HEADRACE_POLICY=closed`` in ``environ`` (the server's checks, its
    compile cache and a local Ray's workers read it there). Returns what to tell the operator, or None.

    On loopback only the owner of the discovery file's token can submit, who could run the same
    pipelines with ``headrace run``: the environment's policy applies, as it does to ``headrace run``.
    """
    if _is_loopback(host):
        return None
    chosen = (environ.get("HEADRACE_POLICY") or "").strip().lower()
    if not chosen:
        environ["HEADRACE_POLICY"] = "closed"
        return (
            f"listening beyond loopback ({host}): the closed policy applies; allow roots, schemes and "
            "modules with HEADRACE_ALLOWED_ROOTS, HEADRACE_ALLOWED_SCHEMES and HEADRACE_ALLOWED_MODULES"
        )
    if chosen == "open":
        return (
            f"warning: listening beyond loopback ({host}) with HEADRACE_POLICY=open: whoever holds the "
            "token may read and write any file this server can"
        )
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ignore(signum: int, frame: FrameType | None) -> None:
    _log.info("signal %d after the server stopped: cleaning up", signum)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise HeadraceError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int, *, tls: bool = False) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"
