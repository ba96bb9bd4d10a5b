"""Starting a run's LLM machinery: the ledger, the shared limiter, the pools.

The pools' providers, models and prices were checked when the pipeline was compiled
(:mod:`engine.compile.providers`), before Ray started. In the Ray session the run gets its own
``LedgerActor``, joins the cluster's one ``RateLimiterActor`` (named and detached, so every pipeline on
the cluster shares it), and starts the actors of each node's pool.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import ray

from engine.physical import Placement, PoolPlan
from engine.runtime.llm.calls import CallSettings, account_id
from engine.runtime.llm.ledger import LedgerActor, TenantScope
from engine.runtime.llm.limiter import LIMITER_NAME, NAMESPACE, RateLimiterActor
from engine.runtime.llm.pool import LlmPoolActor, PoolSetup
from engine.spec.models import Budget, Pipeline
from operators.llm import LlmSpec

_POLL_S = 0.5


@dataclass
class LlmServices:
    """A run's LLM actors, and the live usage the driver polls from its ledger (None, like ``pools``
    empty, for a run without LLM nodes)."""

    ledger: Any
    pools: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)
    _pending: Any = None

    def poll(self) -> bool:
        """Pick up the ledger's latest usage if it has answered; never blocks. True when it changed."""
        if self._pending is None:
            self._pending = self.ledger.usage.remote()
            return False
        ready, _ = ray.wait([self._pending], timeout=0)
        if not ready:
            return False
        self.usage = ray.get(self._pending)
        self._pending = None
        return True

    def final_usage(self) -> dict[str, dict[str, Any]]:
        """The ledger's usage once every call has settled."""
        self.usage = ray.get(self.ledger.usage.remote())
        return self.usage


def start_services(
    pools: list[PoolPlan],
    pipeline: Pipeline,
    run_id: str,
    cache_url: str | None,
    tenant: TenantScope | None = None,
    placement: Placement | None = None,
) -> LlmServices:
    """The run's ledger and every pool's actors (call inside a Ray session); ``tenant`` is the run's
    tenant scope when its tenant has a cost quota, ``placement`` its tenant's CPU placement group (the
    run's own actors go there; the cluster's shared rate limiter does not)."""
    if not pools:
        # Only LLM calls reserve and settle cost; starting the actor anyway cost a run without LLM
        # nodes a Python process (about a CPU-second) competing with its split tasks.
        return LlmServices(None)

    def placed(options: dict[str, Any]) -> dict[str, Any]:
        return options if placement is None else placement.apply(options)

    node_budgets = {
        p.node: Budget(max_cost_usd=p.spec.budget.max_cost_usd)
        for p in pools
        if isinstance(p.spec, LlmSpec) and p.spec.budget is not None
    }
    ledger = (
        ray.remote(LedgerActor)
        .options(**placed({"num_cpus": 0}))
        .remote(pipeline.budget, node_budgets, tenant)
    )
    services = LlmServices(ledger)
    limiter = (
        ray.remote(RateLimiterActor)
        .options(name=LIMITER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0)
        .remote()
    )
    actor = ray.remote(LlmPoolActor)
    for pool in pools:
        names = {t.provider for t in pool.targets}
        configs = {name: pipeline.provider_config(name) for name in names}
        settings = CallSettings(
            node=pool.node,
            targets=pool.targets,
            retry=pool.retry,
            limits={
                name: s.rate_limits
                for name, s in pipeline.providers.items()
                if name in names and s.rate_limits is not None
            },
            accounts={name: account_id(name, configs[name], os.environ) for name in names},
            priced_as={name: pipeline.priced_as(name) for name in names},
            budgeted=pipeline.budget is not None or pool.node in node_budgets or tenant is not None,
        )
        setup = PoolSetup(
            node=pool.node,
            spec=pool.spec,  # type: ignore[arg-type]
            params=dict(pipeline.params),
            settings=settings,
            provider_configs=configs,
            prices=pipeline.price_overrides(),
            cache_url=cache_url,
        )
        services.pools[pool.node] = tuple(
            actor.options(**placed(dict(pool.ray_options))).remote(setup, ledger, limiter)
            for _ in range(pool.size)
        )
    return services


def usage_totals(usage: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Sums over nodes of every usage figure."""
    totals: dict[str, float] = {}
    for figures in usage.values():
        for key, value in figures.items():
            totals[key] = totals.get(key, 0) + value
    return totals
