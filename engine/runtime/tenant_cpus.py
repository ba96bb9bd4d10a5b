"""A tenant's CPU quota (``TenantQuota.max_cpus``), enforced by Ray with one placement group per tenant.

Ray has no quota on a set of tasks, but it has reservations: a placement group holds bundles of
resources, and a task or actor scheduled into the group (``PlacementGroupSchedulingStrategy``) may only
use what the group holds. So every Ray task and actor of a capped tenant's runs (split and tail tasks,
barrier actors, LLM pool actors, the run's ledger, planning tasks, heavy state-graph nodes, and with
``placement_group_capture_child_tasks`` whatever they start) goes into the tenant's group, and Ray never
runs more than ``max_cpus`` of them at once, on any engine, whatever the cluster's size. A driver that
only counted its own tasks could not see the other engines' tasks; Ray's scheduler sees them all. A task
waiting for an LLM pool keeps its CPU while it waits (:mod:`engine.runtime.llm.pool` waits without
telling Ray it is blocked), so the cap bounds the work under way, not only the CPU reserved.

- **Bundles.** ``{"CPU": 1}`` bundles adding up to ``max_cpus``, the fractional rest as a last smaller
  bundle (``2.5`` → 1, 1, 0.5), strategy ``PACK``. One-CPU bundles fit on any machine and let the group
  spread over several when one is full; the cost is that one task may ask for at most one bundle
  (``min(1, max_cpus)`` CPU): a node asking for more is refused before the run starts, naming the node
  and the tenant's ``max_cpus`` (it would otherwise wait forever).
- **A reservation as well as a cap.** While the group exists its CPUs are held for the tenant even when
  it is idle: other tenants cannot use them. The group therefore lives only while an engine that declares
  the tenant's ``max_cpus`` is open: the first run that needs it creates it, and it is removed when the
  last such engine closes. An engine whose driver died is noticed by the ledger actor within seconds
  (its registration token's owner is gone; the actor looks every few seconds) and its group removed.
- **One owner.** The cluster's tenant ledger actor (:mod:`engine.runtime.tenants`) creates and removes
  every group, so two engines asking at once get the same group (actor calls run one at a time). Groups
  are created without ``lifetime="detached"``: they share the fate of that detached actor, so killing it
  (``ray.kill(ray.get_actor("headrace-ledger", namespace="headrace"))``) removes every tenant's
  group with it instead of leaking reservations. The group is named ``headrace-tenant-<tenant>`` for
  ``ray list placement-groups``; Ray scopes placement-group names to the creating job's namespace, so
  engines find it through the ledger, not by name.
- **Too big.** A group the cluster cannot hold (``max_cpus`` beyond the cluster's CPUs less those held
  for other tenants) is refused with a :class:`~engine.errors.QuotaError` instead of pending forever. A
  group that fits but waits for busy CPUs to free is left pending: the tenant's tasks wait in it, and a
  warning says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from engine.errors import QuotaError
from engine.physical import Placement

GROUP_PREFIX = "headrace-tenant-"
_EPSILON = 1e-9


def group_name(tenant: str) -> str:
    """The name of ``tenant``'s placement group."""
    return f"{GROUP_PREFIX}{tenant}"


def bundles(max_cpus: float) -> list[dict[str, float]]:
    """One-CPU bundles adding up to ``max_cpus``, the fractional rest as a last smaller one."""
    whole = math.floor(max_cpus + _EPSILON)
    rest = round(max_cpus - whole, 4)  # Ray counts resources in units of 1/10,000
    return [{"CPU": 1.0}] * whole + ([{"CPU": rest}] if rest > 0 else [])


def largest_bundle(max_cpus: float) -> float:
    """The most CPU one task of the tenant may ask for."""
    return max(b["CPU"] for b in bundles(max_cpus))


def create_group(tenant: str, max_cpus: float, held: Mapping[str, float]) -> Any:
    """Create ``tenant``'s placement group (call it from the tenant ledger actor, its owner).

    ``held`` maps the other tenants that have a group to their ``max_cpus``. Raises ``QuotaError`` when
    the cluster cannot hold the group beside them.
    """
    import ray

    total = float(ray.cluster_resources().get("CPU", 0.0))
    taken = sum(held.values())
    if max_cpus > total - taken + _EPSILON:
        others = ", ".join(f"'{t}' {c:g}" for t, c in sorted(held.items()))
        beside = f", {taken:g} of them held for other tenants' max_cpus ({others})" if held else ""
        raise QuotaError(
            f"tenant '{tenant}' has max_cpus={max_cpus:g}, but the cluster has {total:g} CPUs{beside}: "
            "its placement group could never be created; lower max_cpus, or add nodes to the cluster"
        )
    return ray.util.placement_group(bundles(max_cpus), strategy="PACK", name=group_name(tenant))


def remove_group(group: Any) -> None:
    """Remove a tenant's placement group (its tasks and actors, if any are left, are killed)."""
    import ray

    ray.util.remove_placement_group(group)


def placement(tenant: str, max_cpus: float, group: Any) -> Placement:
    """The :class:`Placement` that puts a run's tasks and actors into ``tenant``'s group."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = PlacementGroupSchedulingStrategy(
        placement_group=group, placement_group_capture_child_tasks=True
    )
    return Placement(
        options={"scheduling_strategy": strategy},
        cpus=max_cpus,
        max_task_cpus=largest_bundle(max_cpus),
        owner=f"tenant '{tenant}' (max_cpus={max_cpus:g})",
    )
