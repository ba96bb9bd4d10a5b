"""Errors of the state-graph API, all under :class:`engine.errors.HeadraceError`.

    HeadraceError
    └── GraphError                a state graph cannot be built, compiled or run
        ├── InvalidGraph          compile-time problem: unknown node, missing entry edge, bad option
        ├── InvalidUpdate         a node returned an update the state model does not accept (node, key)
        ├── GraphRecursionError   a run took more steps than ``recursion_limit`` (names the loop)
        └── NodeFailed            kept for callers that catch it; a node's own exception now reaches
                                  the caller as itself (with ``node``/``step`` and a note naming them)

    (an unknown run id raises ``engine.graph.checkpoints.errors.RunNotFound``, the store's error)

    GraphInterrupt                raised by :func:`engine.graph.interrupt` inside a node; the runner
                                  catches it and pauses the run (not an error: it never reaches users)

Every message names the node (and key, step or run) involved and says what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.errors import HeadraceError


class GraphError(HeadraceError):
    """Base of every state-graph error."""

    code = "graph_error"
    exit_code = 3


class InvalidGraph(GraphError):
    """The graph as built cannot be compiled; the message names the node or edge at fault."""

    code = "graph_invalid"
    exit_code = 1


class InvalidUpdate(GraphError):
    """A node's update has a key the state model does not declare, or a value of the wrong type."""

    code = "graph_invalid_update"

    def __init__(self, message: str, *, node: str, key: str) -> None:
        super().__init__(message)
        self.node = node
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), {"node": self.node, "key": self.key}))


class GraphRecursionError(GraphError):
    """A run reached ``recursion_limit`` steps without reaching END."""

    code = "graph_recursion_limit"

    def __init__(self, message: str, *, limit: int, loop: Sequence[str]) -> None:
        super().__init__(message)
        self.limit = limit
        self.loop = list(loop)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), {"limit": self.limit, "loop": self.loop}))


class NodeFailed(GraphError):
    """A node raised (after its retries) and no ``on_error`` edge handles it; the run is ``failed``."""

    code = "graph_node_failed"

    def __init__(self, message: str, *, node: str, run_id: str | None = None) -> None:
        super().__init__(message)
        self.node = node
        self.run_id = run_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), {"node": self.node, "run_id": self.run_id}))


class GraphInterrupt(Exception):
    """Raised by ``interrupt(value)`` to pause a run; ``value`` is shown to whoever resumes it."""

    def __init__(self, value: Any, info: dict[str, Any] | None = None) -> None:
        super().__init__(value)
        self.value = value
        self.info = info if info is not None else {"node": "", "when": "inside", "value": value}


def _rebuild(cls: type[GraphError], message: str, fields: dict[str, Any]) -> GraphError:
    # keyword-only arguments do not survive the default pickling across Ray processes
    return cls(message, **fields)
