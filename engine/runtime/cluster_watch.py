"""A run never waits for ever on work no node can hold.

The compile-time check (:func:`engine.physical.check_capacity`) judges the nodes present when the run
starts. Nodes come and go while it runs: the only node offering ``llm_gateway`` dies, or an autoscaler
cannot add the node a task asks for. Ray then keeps the task (or the LLM pool actor) pending, silently and
for ever. The scheduler asks an :class:`UnplaceableWatch` on each turn of its loop; every few seconds it
reads the alive nodes' resources and, when some work still to do asks for what no single node has for
longer than the deadline, it fails the run with what was asked for and what the nodes have.

The deadline is ``HEADRACE_UNSCHEDULABLE_S`` seconds (60 by default); a cluster whose autoscaler takes
longer to add a node needs it longer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from engine.capacity import NodeResources, describe_need, describe_nodes, fits_somewhere, needs
from engine.errors import ClusterError, UnschedulableError

DEADLINE_VARIABLE = "HEADRACE_UNSCHEDULABLE_S"
DEFAULT_DEADLINE_S = 60.0
_POLL_S = 2.0
"""How often the nodes are read (one call to Ray's GCS)."""

Wanted = tuple[str, str, Mapping[str, float]]
"""The pipeline node, what asks (``node 'x' (one task)``) and what one of its tasks or actors needs."""


def deadline_s(environ: Mapping[str, str] | None = None) -> float:
    """The configured deadline in seconds (``HEADRACE_UNSCHEDULABLE_S``, default 60)."""
    env = os.environ if environ is None else environ
    raw = env.get(DEADLINE_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_DEADLINE_S
    try:
        value = float(raw)
    except ValueError:
        raise ClusterError(f"{DEADLINE_VARIABLE}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ClusterError(f"{DEADLINE_VARIABLE}={raw!r} must be above 0 seconds")
    return value


def stage_wants(
    ray_options: Mapping[str, Any], pools: Iterable[Any], nodes: Sequence[tuple[str, Any]], on_runner: bool
) -> list[Wanted]:
    """What a stage's work asks of a node: one task (nothing when it runs on a shared split runner,
    which asks for no resource) and one actor of each LLM pool it sends batches to. ``nodes``: the
    stage's (id, spec) pairs, the sink last; the task is named by the node that asks for the most."""
    wanted: list[Wanted] = []
    if not on_runner:
        need = needs(ray_options)
        node = _asking(nodes, need)
        wanted.append((node, f"node '{node}' (one task)", need))
    for client in pools:
        batch = client.batch
        wanted.append((batch.node, f"LLM node '{batch.node}' (one pool actor)", needs(batch.options)))
    return wanted


class UnplaceableWatch:
    """Fails the run when some wanted work has fitted on no alive node for longer than the deadline."""

    def __init__(
        self,
        read_nodes: Callable[[], Sequence[NodeResources]],
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read_nodes
        self.deadline = deadline_s() if deadline is None else deadline
        self._clock = clock
        self._next = 0.0
        self._since: dict[str, float] = {}

    def check(self, wanted: Iterable[Wanted]) -> None:
        """Raise ``ClusterError`` if some of ``wanted`` has had no node to go to for too long."""
        now = self._clock()
        if now < self._next:
            return
        self._next = now + min(_POLL_S, self.deadline / 4)
        nodes = list(self._read())
        stuck = {what: (node, need) for node, what, need in wanted if not fits_somewhere(need, nodes)}
        self._since = {what: self._since.get(what, now) for what in stuck}
        for what, since in self._since.items():
            if now - since >= self.deadline:
                node, need = stuck[what]
                raise UnschedulableError(
                    f"{what} asks for {describe_need(need)}, and no alive Ray node has had it for "
                    f"{now - since:.0f}s ({describe_nodes(nodes)}); the run stops instead of waiting for "
                    f"ever. Add a node that offers it (or let the autoscaler add one), or lower the "
                    f"request; {DEADLINE_VARIABLE} sets how long a run waits (now {self.deadline:g}s)",
                    node=node,
                )


def _asking(nodes: Sequence[tuple[str, Any]], need: Mapping[str, float]) -> str:
    """The first node whose own resources ask for something beyond a CPU (else for CPUs), else the sink."""
    for keys in ([k for k in need if k != "CPU"], ["CPU"]):
        for node, spec in nodes:
            pooled = getattr(spec, "pooled", False)  # its resources are its pool actors'
            own = spec.resources if spec.resources is not None and not pooled else None
            if own is not None and any(k in needs(own.ray_options(default_cpus=0.0)) for k in keys):
                return node
    return nodes[-1][0]
