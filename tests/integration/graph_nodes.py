"""Node functions for the state-graph CLI tests, named by import path in their YAML pipelines.

Nodes record what they do in the file ``$GRAPH_NODES_LOG`` (one line per event, flushed and synced), so
a test can count executions across processes, including one killed with SIGKILL.
"""

from __future__ import annotations

import os
import time
from typing import Any

from engine.graph import interrupt

LOG_ENV = "GRAPH_NODES_LOG"
SLEEP_ENV = "GRAPH_NODES_SLEEP_S"


def _record(event: str) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(event + "\n")
        f.flush()
        os.fsync(f.fileno())


def grow(state: Any, prefix: str = "item") -> dict[str, Any]:
    """Append one item to ``found``."""
    _record("grow")
    return {"found": f"{prefix}{len(state.found)}"}


def mark(state: Any, name: str) -> dict[str, Any]:
    """Record ``name`` and append it to ``done``."""
    _record(name)
    return {"done": name}


def slow(state: Any) -> dict[str, Any]:
    """Sleep ``$GRAPH_NODES_SLEEP_S`` seconds between two recorded events."""
    _record("slow:start")
    time.sleep(float(os.environ.get(SLEEP_ENV, "0")))
    _record("slow:end")
    return {"done": "slow"}


def ask(state: Any) -> dict[str, Any]:
    """Pause the run for a human; the resume value becomes ``answer``."""
    answer = interrupt({"question": "ship it?"})
    _record(f"answer:{answer}")
    return {"answer": answer}


def boom(state: Any) -> dict[str, Any]:
    """Always fail."""
    raise RuntimeError("the boom node always fails")


def where(state: Any, key: str) -> dict[str, Any]:
    """Record the process id under ``key`` of the ``pids`` object."""
    return {"pids": {key: os.getpid()}}
