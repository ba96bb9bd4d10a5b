"""Calling one node for one task: threads for sync nodes, timeouts, retries, Ray tasks, telemetry.

- A sync node runs in a worker thread (``asyncio.to_thread``) when other tasks share its superstep,
  so parallel branches of plain functions overlap; alone in its step it is called in place (nothing
  could overlap with it, and a thread hop would cost more than a small node).
- ``timeout_s`` bounds each attempt (a sync node with one runs in a thread, so it can be abandoned).
- ``retry`` retries an attempt's exception when its ``retry_on`` says so (see ``engine.graph.retry``);
  ``interrupt()`` is never retried.
- Nodes with ``resources`` or ``heavy=True`` run as Ray tasks (``engine.graph.remote``).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import TYPE_CHECKING, Any

from engine import telemetry
from engine.graph.builder import NodeDef
from engine.graph.errors import GraphInterrupt
from engine.graph.remote import remote_call
from engine.graph.retry import should_retry
from engine.graph.tasks import SCOPE, Scope, Task

if TYPE_CHECKING:
    from engine.physical import Placement


class Caller:
    """Runs nodes for one runner: knows its run id, Ray cache and placement, and where events go."""

    def __init__(
        self,
        run_id: str,
        remote: dict[str, Any],
        placement: Placement | None,
        events: list[tuple[str, Any]] | None,
        subgraphs: Any = None,
    ) -> None:
        self.run_id = run_id
        self._remote = remote
        self._placement = placement
        self._events = events  # None: no "events" stream mode, nothing to report
        self.subgraphs = subgraphs

    async def call(self, node: NodeDef, task: Task, state: Any, step: int, threaded: bool) -> Any:
        """The node's return value for ``task`` (after retries), or its exception."""
        if telemetry.recording():
            attributes = {"headrace.run_id": self.run_id, "headrace.node": node.name, "headrace.step": step}
            with telemetry.span("graph.node", attributes):
                return await self._call(node, task, state, threaded)
        return await self._call(node, task, state, threaded)

    async def _call(self, node: NodeDef, task: Task, state: Any, threaded: bool) -> Any:
        if node.subgraph is not None:
            return await self.subgraphs.call(node, task, state)
        if node.remote or node.retry is not None or node.timeout_s is not None:
            return await self._attempts(node, task, state, threaded)
        token = SCOPE.set(Scope(task, self.run_id))
        try:
            if node.is_async:
                return await node.fn(state)
            if threaded:
                result = await asyncio.to_thread(node.fn, state)
            else:
                result = node.fn(state)
            if type(result) is dict or result is None:  # the common case: no awaitable check
                return result
            return (await result) if inspect.isawaitable(result) else result
        finally:
            SCOPE.reset(token)

    async def _attempts(self, node: NodeDef, task: Task, state: Any, threaded: bool) -> Any:
        attempt = 0
        while True:
            attempt += 1
            token = SCOPE.set(Scope(task, self.run_id))  # each attempt re-runs the node from its start
            try:
                return await self._attempt(node, state, threaded)
            except GraphInterrupt:
                raise
            except Exception as exc:
                retry = node.retry
                if retry is None or attempt >= retry.max_attempts or not should_retry(retry, exc):
                    raise
                if self._events is not None:
                    ev = {"event": "node_retry", "node": node.name, "attempt": attempt, "error": repr(exc)}
                    self._events.append(("events", ev))
                await asyncio.sleep(retry.backoff_s(attempt))
            finally:
                SCOPE.reset(token)

    async def _attempt(self, node: NodeDef, state: Any, threaded: bool) -> Any:
        if node.remote:
            call = remote_call(node, state, self._remote, self._placement)
        elif node.is_async:
            call = node.fn(state)
        elif node.timeout_s is not None or threaded:
            call = asyncio.to_thread(node.fn, state)
        else:
            result = node.fn(state)
            return (await result) if inspect.isawaitable(result) else result
        if node.timeout_s is None:
            result = await call
        else:
            try:
                result = await asyncio.wait_for(call, node.timeout_s)
            except asyncio.TimeoutError:
                raise TimeoutError(
                    f"node {node.name!r} took longer than timeout_s={node.timeout_s}"
                ) from None
        return (await result) if inspect.isawaitable(result) else result
