"""Heavy state-graph nodes as Ray tasks: a node with ``resources`` or ``heavy=True`` runs in a worker.

Light nodes run inline in the runner's event loop (a Ray task round trip costs ~1.4 ms, far more than a
trivial node); a heavy one is sent to Ray with the node's resources as scheduling options and awaited
without blocking the loop. Ray's own retries are off, so the node's ``RetryPolicy`` is the one that applies.
A run given a :class:`~engine.physical.Placement` (a tenant's CPU quota) sends its heavy nodes into it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any

from engine.errors import PlanError
from engine.physical import Placement
from engine.spec.models import Resources

if TYPE_CHECKING:
    from engine.graph.builder import NodeDef

_remote_fn: Any = None  # one Ray remote function for every node: Ray exports it once per job


def _call_node(fn: Any, state: Any) -> Any:
    """Run a node function inside a Ray worker (async functions get their own event loop)."""
    result = fn(state)
    if inspect.isawaitable(result):

        async def _wait() -> Any:
            return await result

        return asyncio.run(_wait())
    return result


def check_placement(nodes: Iterable[NodeDef], placement: Placement) -> None:
    """Raise ``PlanError`` naming every heavy node that could never be scheduled inside ``placement``."""
    problems = [
        refusal
        for node in nodes
        if node.remote and (refusal := placement.refusal(node.name, _options(node)["num_cpus"])) is not None
    ]
    if problems:
        raise PlanError("; ".join(problems) + "; lower the node's num_cpus, or raise the tenant's max_cpus")


def remote_call(
    node: NodeDef, state: Any, cache: dict[str, Any], placement: Placement | None = None
) -> Awaitable[Any]:
    """Start ``node`` on ``state`` as a Ray task (starting a local Ray if this process has none)."""
    global _remote_fn
    import ray

    from engine.runtime.cluster import start_local_ray

    options = cache.get(node.name)
    if options is None:
        if not ray.is_initialized():
            start_local_ray()
        options = cache[node.name] = _options(node)
    if _remote_fn is None:
        _remote_fn = ray.remote(_call_node)
    if placement is not None:
        options = placement.apply(options)
    return _await_ref(_remote_fn.options(**options).remote(node.fn, state))


def _options(node: NodeDef) -> dict[str, Any]:
    return {**(node.resources or Resources()).ray_options(), "max_retries": 0}


async def _await_ref(ref: Any) -> Any:
    return await ref
