"""The actor pool of an LLM node: async Ray actors that answer the rows of the batches tasks hand them.

A fused task reaches an LLM node, sends its batch to one actor of the node's pool and waits (a task
blocked on ``ray.get`` gives its CPU back, so reading and writing go on elsewhere). The actor answers every
row concurrently, at most ``concurrency`` requests in flight per actor, and returns the batch with the
node's column added, less the rows that failed (with their errors), so the task can apply the node's
error policy: skip, dead-letter or fail. Answers do not move through the driver.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray

from engine import telemetry
from engine.errors import BudgetExceeded
from engine.runtime.llm.batch import BatchRowCaller
from engine.runtime.llm.calls import CallServices, CallSettings, RowCaller, RowFailed
from engine.runtime.llm.ledger import Charge
from engine.spec.models import RateLimits
from operators.llm import LlmSpec
from operators.llm_rows import RowTask
from operators.providers.base import BatchProvider, Provider
from operators.providers.cache import ResponseCache
from operators.providers.pricing import PriceTable
from operators.providers.registry import get_provider


@dataclass(frozen=True)
class PoolSetup:
    """Everything an actor of an LLM node's pool is built from; plain, picklable data."""

    node: str
    spec: LlmSpec
    params: Mapping[str, Any]
    settings: CallSettings
    provider_configs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    prices: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    cache_url: str | None = None
    """None: the cache is off."""


@dataclass(frozen=True)
class PoolResult:
    """A batch back from the pool: the answered rows, and the index and error of each row that failed."""

    table: pa.Table
    failures: list[tuple[int, str]]


class RemoteServices:
    """``CallServices`` over the run's ledger actor and the cluster's rate-limiter actor."""

    def __init__(self, ledger: Any, limiter: Any) -> None:
        self._ledger = ledger
        self._limiter = limiter

    async def reserve_budget(self, node: str, charge: Charge) -> None:
        try:
            await self._ledger.reserve.remote(node, charge)
        except ray.exceptions.RayTaskError as exc:
            raise (exc.cause if isinstance(exc.cause, BudgetExceeded) else exc) from None

    async def settle_budget(
        self, node: str, reserved: Charge, actual: Charge | None, requests: int = 1
    ) -> None:
        await self._ledger.settle.remote(node, reserved, actual, requests)

    async def reserve_rate(
        self, key: str, limits: RateLimits, input_tokens: int, output_tokens: int
    ) -> float:
        delay: float = await self._limiter.reserve.remote(key, limits, input_tokens, output_tokens)
        return delay

    def refund_rate(self, key: str, output_tokens: int) -> None:
        self._limiter.refund.remote(key, output_tokens)

    async def record_cached(self, node: str, requests: int, input_tokens: int, output_tokens: int) -> None:
        await self._ledger.record_cached.remote(node, requests, input_tokens, output_tokens)


class LlmPoolActor:
    """One actor of an LLM node's pool (an async Ray actor)."""

    def __init__(self, setup: PoolSetup, ledger: Any, limiter: Any) -> None:
        self.setup = setup
        self._services: CallServices = RemoteServices(ledger, limiter)
        self._caller: RowCaller | None = None
        self._batcher: BatchRowCaller | None = None

    def _row_caller(self) -> RowCaller:
        # Providers are built on first use, inside the actor's event loop: SDK clients pool
        # connections per loop, and credentials are read from this machine's environment.
        if self._caller is None:
            setup = self.setup
            names = {t.provider for t in setup.settings.targets}
            providers: dict[str, Provider] = {
                name: get_provider(name, setup.provider_configs.get(name, {})) for name in names
            }
            self._caller = RowCaller(
                RowTask(setup.spec, setup.params),
                setup.settings,
                providers,
                PriceTable(setup.prices),
                ResponseCache(setup.cache_url) if setup.cache_url else None,
                self._services,
                setup.spec.concurrency,
            )
        return self._caller

    def _batch_caller(self) -> BatchRowCaller:
        if self._batcher is None:
            setup = self.setup
            target = setup.settings.targets[0]
            provider = get_provider(target.provider, setup.provider_configs.get(target.provider, {}))
            if not isinstance(provider, BatchProvider):
                raise TypeError(f"provider {target.provider!r} has no batch API")  # checked at compile time
            self._batcher = BatchRowCaller(
                RowTask(setup.spec, setup.params),
                setup.settings,
                provider,
                PriceTable(setup.prices),
                ResponseCache(setup.cache_url) if setup.cache_url else None,
                self._services,
                setup.spec.batch_poll_s,
            )
        return self._batcher

    async def process(self, table: pa.Table, trace: Mapping[str, str] | None = None) -> PoolResult:
        """Answer every row of ``table``; raises ``BudgetExceeded`` (after the calls in flight finish).

        ``trace`` is the calling task's trace context (None: tracing is off)."""
        if not trace:
            return await self._process(table)
        attributes = {"headrace.node": self.setup.node, "headrace.rows": table.num_rows}
        with telemetry.worker_span("llm.batch", trace, attributes) as span:
            result = await self._process(table)
            span.set_attribute("headrace.failed_rows", len(result.failures))
            return result

    async def _process(self, table: pa.Table) -> PoolResult:
        rows = table.to_pylist()
        outcomes: list[Any]
        if self.setup.spec.mode == "batch":
            batcher = self._batch_caller()
            task = batcher.task
            outcomes = await batcher.answer_all(rows)
        else:
            caller = self._row_caller()
            task = caller.task
            outcomes = await asyncio.gather(*(caller.answer(row) for row in rows), return_exceptions=True)
            await caller.flush()
        values: list[Any] = []
        ok: list[bool] = []
        failures: list[tuple[int, str]] = []
        stop: BudgetExceeded | None = None
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, BudgetExceeded):
                stop = stop or outcome
            elif isinstance(outcome, RowFailed):
                failures.append((index, str(outcome)))
            elif isinstance(outcome, BaseException):
                raise outcome
            values.append(None if isinstance(outcome, BaseException) else outcome)
            ok.append(not isinstance(outcome, BaseException))
        if stop is not None:
            raise stop
        return PoolResult(task.assemble(table, values, ok), failures)

    def pid(self) -> int:
        """The actor's process id (tests kill it to check recovery)."""
        return os.getpid()
