"""A run's way to the cluster's shared LLM services: its account, its pools.

The pools' providers, models and prices were checked when the pipeline was compiled
(:mod:`engine.compile.providers`), before Ray started. In the Ray session the run opens its account in
the cluster's ledger service, and each LLM node gets a ``PoolClient`` for the shared pool of its
(provider, model, account), carrying what the pool's actors need to answer its batches. Every service is
a named, detached actor started by the first run that needs it (the ledger service, the rate limiter,
each pool's director and actors), so a run starts no actor, and no process, of its own. When the run ends
its account is closed (its final figures go into its record) and its batches still waiting for a pool
are dropped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import ray

from engine.physical import PoolPlan
from engine.runtime.llm.calls import CallSettings, account_id
from engine.runtime.llm.limiter import LIMITER_NAME, NAMESPACE, RateLimiterActor
from engine.runtime.llm.pool import PoolBatch, PoolClient, pool_director, pool_name
from engine.runtime.tenants import RemoteTenant, ledger_service
from engine.spec.models import Budget, Pipeline
from operators.llm import LlmSpec


@dataclass
class LlmServices:
    """A run's account and pools, and the live usage the driver polls from its account (``ledger`` None,
    like ``pools`` empty, for a run without LLM nodes)."""

    ledger: Any
    run_id: str = ""
    pools: dict[str, PoolClient] = field(default_factory=dict)
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)
    _pending: Any = None

    def poll(self) -> bool:
        """Pick up the account's latest usage if it has answered; never blocks. True when it changed."""
        if self._pending is None:
            self._pending = self.ledger.usage.remote(self.run_id)
            return False
        ready, _ = ray.wait([self._pending], timeout=0)
        if not ready:
            return False
        self.usage = ray.get(self._pending)
        self._pending = None
        return True

    def close(self) -> dict[str, dict[str, Any]]:
        """End the run's share of the services: its waiting batches are dropped from its pools (batches
        on pool actors are cancelled) and its account is closed; returns the account's final usage."""
        for pool in {p.name: p for p in self.pools.values()}.values():
            pool.director.drop.remote(self.run_id)
        self.usage = ray.get(self.ledger.close_run.remote(self.run_id))
        return self.usage


def start_services(
    pools: list[PoolPlan],
    pipeline: Pipeline,
    run_id: str,
    cache_url: str | None,
    tenant: RemoteTenant | None = None,
    weight: float = 1.0,
    tenant_name: str = "default",
) -> LlmServices:
    """Open the run's account and give each LLM node its pool (call inside a Ray session); ``tenant`` is
    the run's ticket to its tenant's cost quota when it has one, ``weight`` its tenant's share of the
    pools. Nothing is started that another run has started already."""
    if not pools:
        # Only LLM calls reserve and settle cost: a run without LLM nodes touches no service.
        return LlmServices(None)
    node_budgets = {
        p.node: Budget(max_cost_usd=p.spec.budget.max_cost_usd)
        for p in pools
        if isinstance(p.spec, LlmSpec) and p.spec.budget is not None
    }
    ledger = tenant.ledger if tenant is not None else ledger_service()
    epoch: int = ray.get(
        ledger.open_run.remote(
            run_id, pipeline.budget, node_budgets, tenant.tenant if tenant is not None else None
        )
    )
    services = LlmServices(ledger, run_id)
    limiter = (
        ray.remote(RateLimiterActor)
        .options(
            name=LIMITER_NAME,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            scheduling_strategy="DEFAULT",
        )
        .remote()
    )
    for pool in pools:
        names = {t.provider for t in pool.targets}
        configs = {name: pipeline.provider_config(name) for name in names}
        accounts = {name: account_id(name, configs[name], os.environ) for name in names}
        settings = CallSettings(
            node=pool.node,
            targets=pool.targets,
            retry=pool.retry,
            limits={
                name: s.rate_limits
                for name, s in pipeline.providers.items()
                if name in names and s.rate_limits is not None
            },
            accounts=accounts,
            priced_as={name: pipeline.priced_as(name) for name in names},
            budgeted=pipeline.budget is not None or pool.node in node_budgets or tenant is not None,
        )
        batch = PoolBatch(
            run_id=run_id,
            node=pool.node,
            spec=pool.spec,  # type: ignore[arg-type]
            params=dict(pipeline.params),
            settings=settings,
            ledger=ledger,
            epoch=epoch,
            limiter=limiter,
            provider_configs=configs,
            prices=pipeline.price_overrides(),
            cache_url=cache_url,
            tenant=tenant_name,
            weight=weight,
            actors=pool.size,
            options=dict(pool.ray_options),
        )
        primary = pool.targets[0]
        name = pool_name(primary.provider, primary.model, accounts[primary.provider])
        services.pools[pool.node] = PoolClient(name, batch, pool_director(name))
    return services


def usage_totals(usage: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Sums over nodes of every usage figure."""
    totals: dict[str, float] = {}
    for figures in usage.values():
        for key, value in figures.items():
            totals[key] = totals.get(key, 0) + value
    return totals
