"""What one Ray task or actor needs, set against what each Ray node has.

Ray places a task or an actor on one node: every resource it asks for must be free on that one node.
A cluster of two 1-CPU nodes has 2 CPUs in all, yet a task asking for 2 CPUs can never run there and
Ray keeps it pending for ever. So capacity is judged node by node, both when a pipeline is compiled
against a cluster (:func:`engine.physical.check_capacity`) and while it runs, when nodes come and go
(:mod:`engine.runtime.cluster_watch`). Pure functions on plain mappings; no Ray here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

NodeResources = Mapping[str, float]
"""One node's total resources, as Ray names them (``CPU``, ``GPU``, ``memory``, custom names)."""

_BYTES = ("memory", "object_store_memory")
_SKIP_PREFIXES = ("node:", "accelerator_type:")
"""Resources every node has of its own (its IP, its accelerator): noise in a message."""


def needs(options: Mapping[str, Any]) -> dict[str, float]:
    """The resources a task or actor with these Ray options asks for (amounts above zero only)."""
    wanted: dict[str, float] = {
        "CPU": float(options.get("num_cpus") or 0.0),
        "GPU": float(options.get("num_gpus") or 0.0),
        "memory": float(options.get("memory") or 0.0),
    }
    wanted.update({k: float(v) for k, v in (options.get("resources") or {}).items()})
    return {k: v for k, v in wanted.items() if v > 0}


def fits(need: Mapping[str, float], node: NodeResources) -> bool:
    """Whether one node offers every resource of ``need`` (a small tolerance for float sums)."""
    return all(amount <= node.get(key, 0.0) + 1e-9 for key, amount in need.items())


def fits_somewhere(need: Mapping[str, float], nodes: Sequence[NodeResources]) -> bool:
    """Whether at least one of ``nodes`` could hold a task or actor asking for ``need``."""
    return any(fits(need, node) for node in nodes)


def short_of(need: Mapping[str, float], nodes: Sequence[NodeResources]) -> list[str]:
    """The resources of ``need`` that no single node has enough of (empty: each is somewhere, though
    maybe not all on one node)."""
    return [key for key, amount in need.items() if not any(amount <= n.get(key, 0.0) + 1e-9 for n in nodes)]


def amount(key: str, value: float) -> str:
    """``2 CPU``, ``200 MiB memory``: one resource amount for a message."""
    if key in _BYTES:
        return f"{_bytes(value)} {key}"
    return f"{value:g} {key}"


def describe_need(need: Mapping[str, float]) -> str:
    """``1 CPU, 1 llm_gateway``; ``nothing`` for an empty need."""
    return ", ".join(amount(k, v) for k, v in need.items()) or "nothing"


def describe_nodes(nodes: Sequence[NodeResources]) -> str:
    """``2 nodes: {1 CPU, 1 llm_gateway}, {1 CPU}``: what each node offers, for a message."""
    if not nodes:
        return "no alive node"
    shown = []
    for node in nodes:
        items = [
            amount(k, v)
            for k, v in sorted(node.items())
            if v > 0 and k != "object_store_memory" and not k.startswith(_SKIP_PREFIXES)
        ]
        shown.append("{" + ", ".join(items) + "}")
    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: " + ", ".join(shown)


def refusal(what: str, need: Mapping[str, float], nodes: Sequence[NodeResources]) -> str | None:
    """Why ``what`` (``node 'x' needs ... per task``) could never be placed on any of ``nodes``; None
    when one node can hold it."""
    if fits_somewhere(need, nodes):
        return None
    missing = short_of(need, nodes)
    why = (
        f"no node has {' or '.join(amount(k, need[k]) for k in missing)}"
        if missing
        else "no single node has all of it at once"
    )
    return f"{what} {describe_need(need)}; {why} (Ray places each on one node; {describe_nodes(nodes)})"


def _bytes(value: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:g} B"
