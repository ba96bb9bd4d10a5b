"""Heavy state-graph nodes as Ray tasks: a node with ``resources`` or ``heavy=True`` runs in a worker.

Light nodes run inline in the runner's event loop (a Ray task round trip costs ~1.4 ms, far more than a
trivial node); a heavy one is sent to Ray with the node's resources as scheduling options and awaited
without blocking the loop. Ray's own retries are off, so the node's ``RetryPolicy`` is the one that applies.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from engine.physical import ray_options
from engine.spec.models import Resources

if TYPE_CHECKING:
    from engine.graph.builder import NodeDef


def _call_node(fn: Any, state: Any) -> Any:
    """Run a node function inside a Ray worker (async functions get their own event loop)."""
    result = fn(state)
    if inspect.isawaitable(result):

        async def _wait() -> Any:
            return await result

        return asyncio.run(_wait())
    return result


def remote_call(node: NodeDef, state: Any, cache: dict[str, Any]) -> Awaitable[Any]:
    """Start ``node`` on ``state`` as a Ray task (starting a local Ray if this process has none)."""
    import ray

    from engine.runtime.cluster import start_local_ray

    remote = cache.get(node.name)
    if remote is None:
        if not ray.is_initialized():
            start_local_ray()
        options = {**ray_options(node.resources or Resources()), "max_retries": 0}
        remote = cache[node.name] = ray.remote(_call_node).options(**options)
    return _await_ref(remote.remote(node.fn, state))


async def _await_ref(ref: Any) -> Any:
    return await ref
