"""headrace's engine: pipeline format, plan, optimizer, physical planning, runtime and CLI.

The public API is listed in ``__all__``; names that pull in Ray are imported on first use, so that
``headrace validate`` and friends start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.errors import ConfigError, DataError, Diagnostic, HeadraceError, PlanError, RunError

if TYPE_CHECKING:
    from engine.check import CheckedPipeline, check_file
    from engine.graph import Command, Graph, Send
    from engine.runtime import RunSummary, run_checked
    from engine.runtime.engine import Engine, EngineBusy, RunHandle, TenantQuota
    from engine.spec.loader import load_pipeline
    from engine.spec.models import END, FORMAT_VERSION, START, NodeSpec, Pipeline
    from engine.spec.registry import register_op

# The pipeline models (pydantic, ~0.3 s to build) load on first use too: `headrace run` through a warm
# engine never needs them.
_LAZY = {
    "END": "engine.spec.models",
    "FORMAT_VERSION": "engine.spec.models",
    "START": "engine.spec.models",
    "NodeSpec": "engine.spec.models",
    "Pipeline": "engine.spec.models",
    "register_op": "engine.spec.registry",
    "CheckedPipeline": "engine.check",
    "check_file": "engine.check",
    "Command": "engine.graph",
    "Engine": "engine.runtime.engine",
    "EngineBusy": "engine.runtime.engine",
    "Graph": "engine.graph",
    "Send": "engine.graph",
    "load_pipeline": "engine.spec.loader",
    "RunHandle": "engine.runtime.engine",
    "RunSummary": "engine.runtime",
    "TenantQuota": "engine.runtime.engine",
    "run_checked": "engine.runtime",
}

__all__ = [
    "END",
    "FORMAT_VERSION",
    "START",
    "CheckedPipeline",
    "Command",
    "ConfigError",
    "DataError",
    "Diagnostic",
    "Engine",
    "EngineBusy",
    "Graph",
    "HeadraceError",
    "NodeSpec",
    "Pipeline",
    "PlanError",
    "RunError",
    "RunHandle",
    "RunSummary",
    "Send",
    "TenantQuota",
    "check_file",
    "load_pipeline",
    "register_op",
    "run_checked",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
