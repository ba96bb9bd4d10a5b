"""The warm engine as a service: ``headrace serve``'s HTTP API over an :class:`~engine.Engine`, the
discovery file through which ``headrace run`` finds it, and the light client that run uses.

Modules: :mod:`~engine.service.server` (process and lifecycle), :mod:`~engine.service.app` (the
FastAPI app and middleware), :mod:`~engine.service.api_runs` and :mod:`~engine.service.api_pipelines`
(routes), :mod:`~engine.service.runs` (runs and their events), :mod:`~engine.service.catalog` and
:mod:`~engine.service.ledger` (what the service knows of a run; its accepted runs, durably),
:mod:`~engine.service.events`, :mod:`~engine.service.compile_cache`, :mod:`~engine.service.auth` and
:mod:`~engine.service.tokens` (tokens, roles, tenants), :mod:`~engine.service.audit_trail`,
:mod:`~engine.service.guard` (bodies' size and time), :mod:`~engine.service.models` (request and
response bodies), :mod:`~engine.service.discovery` and :mod:`~engine.service.client`.
Importing this package imports none of them: the client path must not pay for the server's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.service.app import create_app
    from engine.service.client import EngineClient, EngineTarget, find_engine
    from engine.service.compile_cache import CompileCache
    from engine.service.discovery import EngineInfo, discovery_path
    from engine.service.server import ServeOptions, serve

_LAZY = {
    "CompileCache": "engine.service.compile_cache",
    "EngineClient": "engine.service.client",
    "EngineInfo": "engine.service.discovery",
    "EngineTarget": "engine.service.client",
    "ServeOptions": "engine.service.server",
    "create_app": "engine.service.app",
    "discovery_path": "engine.service.discovery",
    "find_engine": "engine.service.client",
    "serve": "engine.service.server",
}

__all__ = [
    "CompileCache",
    "EngineClient",
    "EngineInfo",
    "EngineTarget",
    "ServeOptions",
    "create_app",
    "discovery_path",
    "find_engine",
    "serve",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine.service' has no attribute {name!r}")
