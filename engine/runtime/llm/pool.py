"""Shared LLM pools: the actors that answer LLM nodes' batches for every run on a cluster.

A fused task reaches an LLM node and hands each batch to the node's :class:`PoolClient`: it leases an
actor from the pool's director (:mod:`engine.runtime.llm.director`), sends the batch to it and waits (a
task blocked on ``ray.get`` gives its CPU back). The actor answers every row concurrently, at most the
node's ``concurrency`` requests in flight per actor, and returns the batch with the node's column added,
less the rows that failed (with their errors), so the task can apply the node's error policy: skip,
dead-letter or fail. Answers do not move through the driver or the director.

Pool actors are shared by every run, so a batch carries everything its rows need (:class:`PoolBatch`):
the node's spec (template, labels or schema), params, retry and fallback settings, provider configs,
prices, the cache URL, the run's account in the ledger service and the trace context. An actor keeps
what is worth keeping between batches: built providers (their connection pools), compiled templates and
open caches.

An actor killed mid-batch loses no row: the task sees it die, tells the director, and sends the whole
batch again to another actor; only the answer it gets back goes into the output, so no row is answered
twice there (answers already paid for come from the response cache).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray

from engine import telemetry
from engine.errors import BudgetExceeded, NodeLostError, TransientError
from engine.runtime.llm.accounts import AccountServices
from engine.runtime.llm.batch import BatchRowCaller
from engine.runtime.llm.calls import CallSettings, RowCaller, RowFailed
from engine.runtime.llm.director import LeaseRequest, PoolDirector
from engine.runtime.llm.health import CallHealth
from engine.runtime.llm.lease_book import LeaseBook
from engine.runtime.llm.ledger import Charge
from engine.runtime.llm.limiter import NAMESPACE
from engine.spec.models import RateLimits
from operators.llm import LlmSpec
from operators.llm_rows import RowTask
from operators.providers.base import BatchProvider, Provider
from operators.providers.cache import ResponseCache
from operators.providers.pricing import PriceTable
from operators.providers.registry import get_provider

_REDISPATCH = 3
"""Times a batch is sent again after its actor died under it."""
_KEPT = 256
"""Compiled row tasks and built providers an actor keeps (least recently used go first)."""


@dataclass(frozen=True)
class PoolBatch:
    """Everything a pool actor needs to answer one run's batches of one LLM node; plain, picklable."""

    run_id: str
    node: str
    spec: LlmSpec
    params: Mapping[str, Any]
    settings: CallSettings
    ledger: Any
    """The cluster's ledger service (the run's account is ``run_id``)."""
    epoch: int
    """The run's account's epoch (from ``open_run``): the actor's leases of it name it."""
    limiter: Any
    """The cluster's rate limiter."""
    provider_configs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    prices: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    cache_url: str | None = None
    """None: the cache is off."""
    tenant: str = "default"
    weight: float = 1.0
    """The tenant's weight (its share of the pool against other tenants)."""
    actors: int = 1
    """The most actors the node gives its pool."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Ray options of a pool actor."""


@dataclass(frozen=True)
class PoolResult:
    """A batch back from the pool: the answered rows, and the index and error of each row that failed."""

    table: pa.Table
    failures: list[tuple[int, str]]


def pool_name(provider: str, model: str, account: str) -> str:
    """The Ray name of the pool of (provider, model, account)."""
    return f"headrace-pool:{provider}:{model}:{account}"


def pool_director(name: str) -> Any:
    """The pool's director, started by the first caller on the cluster (inside a Ray session)."""
    return (
        ray.remote(PoolDirector)
        .options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            scheduling_strategy="DEFAULT",  # a cluster service, never in a tenant's placement group
            max_concurrency=10_000,
        )
        .remote(name)
    )


@dataclass(frozen=True)
class PoolClient:
    """A node's way to its pool, carried by its tasks: lease an actor, send the batch, give it back."""

    name: str
    batch: PoolBatch
    director: Any

    def ask(self, table: pa.Table, trace: Mapping[str, str] | None = None) -> PoolResult:
        """Answer every row of ``table`` on a pool actor; raises ``BudgetExceeded`` (after the calls in
        flight finish) and re-sends the batch when its actor dies under it."""
        ref = ray.put(table)
        batch = self.batch
        request = LeaseRequest(
            batch.run_id, batch.tenant, batch.weight, table.num_rows, batch.actors, batch.options
        )
        director = self.director
        for attempt in range(_REDISPATCH + 1):
            try:
                lease = _answer(director.lease.remote(request))
            except ray.exceptions.RayActorError:  # the director was killed: the next caller restarts it
                director = pool_director(self.name)
                continue
            if lease is None:
                raise TransientError(
                    f"node '{batch.node}': the run ended while this batch waited for its pool"
                )
            died = False
            try:
                result: PoolResult = _answer(lease.actor.process.remote(batch, ref, trace))
                return result
            except ray.exceptions.RayActorError as exc:
                died = True
                if batch.ledger is not None:  # its calls in flight will never settle
                    batch.ledger.release_holder.remote(lease.holder)
                if attempt == _REDISPATCH:  # the cluster, not the provider, is at fault: say so
                    raise NodeLostError(_lost(batch.node, attempt + 1, exc), node=batch.node) from None
            finally:
                director.release.remote(lease.id, died)
        raise TransientError(f"node '{batch.node}': the pool {self.name} could not be reached")


def _answer(ref: Any) -> Any:
    """The director's lease or the actor's answer. A task in a tenant's placement group (``max_cpus``)
    waits for it holding its CPU: ``ray.get`` would hand the CPU back while it waits, and the group would
    start another of the tenant's tasks in its place, so more than ``max_cpus`` would be under way."""
    if ray.util.get_current_placement_group() is not None:
        ref.future().result()  # a plain wait on a callback: Ray does not see the task as blocked
    return ray.get(ref)


def _lost(node: str, times: int, exc: BaseException) -> str:
    last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"node '{node}': the LLM pool actor answering this batch was lost {times} times, its process or "
        f"its Ray node having died (the batch went to a fresh actor each time; last: {last}). Check the "
        "machines that offer the pool's resources (`ray status`, their raylet logs); the provider's "
        "answers were not at fault"
    )


class _RunServices:
    """``CallServices`` for one batch, over its actor's leases (:mod:`engine.runtime.llm.lease_book`):
    a call reserves from the actor's blocks of its run's budget and its account's rate limit, and makes
    a round trip only when a block runs out."""

    def __init__(self, batch: PoolBatch, book: LeaseBook) -> None:
        self._batch = batch
        self._book = book
        self._key = (batch.run_id, batch.epoch, batch.node)
        self._account = AccountServices(batch.ledger, batch.run_id, book.holder)
        self.record_cached = self._account.record_cached

    async def reserve_budget(self, node: str, charge: Charge) -> bool:
        return await self._book.reserve_budget(
            self._batch.ledger, self._key, charge, self._batch.spec.concurrency
        )

    async def settle_budget(
        self, node: str, reserved: Charge, actual: Charge | None, requests: int = 1
    ) -> None:
        if reserved == Charge():  # usage of calls no budget covers, batched by the caller: no lease
            await self._account.settle_budget(node, reserved, actual, requests)
        else:
            await self._book.settle_budget(self._key, reserved, actual, requests)

    async def reserve_rate(
        self, key: str, limits: RateLimits, input_tokens: int, output_tokens: int
    ) -> float:
        limiter, first = self._batch.limiter, self._batch.spec.concurrency
        return await self._book.reserve_rate(limiter, key, limits, input_tokens, output_tokens, first)

    def refund_rate(self, key: str, output_tokens: int) -> None:
        self._book.refund_rate(key, output_tokens)

    async def record_rows(self, node: str, rows: int) -> None:
        """Report the lease's spend with the batch's rows: one round trip per batch."""
        await self._book.report(self._batch.ledger, self._key, rows)

    async def report(self) -> None:
        """Report spend not yet reported (a batch that ended with an error, or was cancelled)."""
        await self._book.report(self._batch.ledger, self._key)


class _ExactServices:
    """``CallServices`` reserving and settling each call in the ledger service (batch mode)."""

    def __init__(self, batch: PoolBatch, holder: str) -> None:
        self._account = AccountServices(batch.ledger, batch.run_id, holder)
        self._limiter = batch.limiter
        self.reserve_budget = self._account.reserve_budget
        self.settle_budget = self._account.settle_budget
        self.record_cached = self._account.record_cached
        self.record_rows = self._account.record_rows

    async def reserve_rate(
        self, key: str, limits: RateLimits, input_tokens: int, output_tokens: int
    ) -> float:
        delay: float = await self._limiter.reserve.remote(key, limits, input_tokens, output_tokens)
        return delay

    def refund_rate(self, key: str, output_tokens: int) -> None:
        self._limiter.refund.remote(key, output_tokens)


class PoolWorker:
    """One actor of a shared pool (an async Ray actor); answers batches of any run and node."""

    def __init__(self) -> None:
        self._providers: OrderedDict[str, Provider] = OrderedDict()
        self._tasks: OrderedDict[str, RowTask] = OrderedDict()
        self._caches: dict[str, ResponseCache] = {}
        self._slots: dict[int, asyncio.Semaphore] = {}
        self._running: dict[str, set[asyncio.Task[PoolResult]]] = {}
        self._health: OrderedDict[tuple[str, str], CallHealth] = OrderedDict()
        self._holder = ray.get_runtime_context().get_actor_id() or f"pid-{os.getpid()}"
        """Who holds this actor's budget reservations in the ledger (released if the actor dies)."""
        self._leases = LeaseBook(self._holder)

    def ready(self) -> tuple[int, str]:
        """Answers once the actor is placed and running: its process id and its reservations' holder."""
        return os.getpid(), self._holder

    def pid(self) -> int:
        """The actor's process id (tests kill it to check recovery)."""
        return os.getpid()

    def cancel_run(self, run_id: str) -> int:
        """Cancel the batches of a run that ended (their reservations are released); how many."""
        tasks = self._running.pop(run_id, set())
        for task in tasks:
            task.cancel()
        return len(tasks)

    async def process(
        self, batch: PoolBatch, table: pa.Table, trace: Mapping[str, str] | None = None
    ) -> PoolResult:
        """Answer every row of ``table``; raises ``BudgetExceeded`` (after the calls in flight finish).

        ``trace`` is the calling task's trace context (None: tracing is off)."""
        task = asyncio.get_running_loop().create_task(self._traced(batch, table, trace))
        running = self._running.setdefault(batch.run_id, set())
        running.add(task)
        try:
            return await task
        finally:
            running.discard(task)
            if not running and self._running.get(batch.run_id) is running:
                del self._running[batch.run_id]

    async def _traced(self, batch: PoolBatch, table: pa.Table, trace: Mapping[str, str] | None) -> PoolResult:
        if not trace:
            return await self._process(batch, table)
        attributes = {
            "headrace.node": batch.node,
            "headrace.rows": table.num_rows,
            "headrace.run_id": batch.run_id,
        }
        with telemetry.worker_span("llm.batch", trace, attributes) as span:
            result = await self._process(batch, table)
            span.set_attribute("headrace.failed_rows", len(result.failures))
            return result

    async def _process(self, batch: PoolBatch, table: pa.Table) -> PoolResult:
        services = _RunServices(batch, self._leases)
        try:
            return await self._answer(batch, table, services)
        finally:
            # spend the batch's calls took from the lease reaches the ledger before the batch returns
            await asyncio.shield(services.report())

    async def _answer(self, batch: PoolBatch, table: pa.Table, services: _RunServices) -> PoolResult:
        rows = table.to_pylist()
        task = self._task(batch)
        outcomes: list[Any]
        if batch.spec.mode == "batch":
            target = batch.settings.targets[0]
            provider = self._provider(target.provider, batch.provider_configs.get(target.provider, {}))
            if not isinstance(provider, BatchProvider):
                raise TypeError(f"provider {target.provider!r} has no batch API")  # checked at compile time
            batcher = BatchRowCaller(
                task,
                batch.settings,
                provider,
                PriceTable(batch.prices),
                self._cache(batch.cache_url),
                # a provider batch reserves once for all its rows and may take hours: exact, no lease
                _ExactServices(batch, self._holder),
                batch.spec.batch_poll_s,
                self._node_health(batch),
            )
            outcomes = await batcher.answer_all(rows)
        else:
            names = {t.provider for t in batch.settings.targets}
            providers = {n: self._provider(n, batch.provider_configs.get(n, {})) for n in names}
            in_flight = batch.spec.concurrency
            caller = RowCaller(
                task,
                batch.settings,
                providers,
                PriceTable(batch.prices),
                self._cache(batch.cache_url),
                services,
                self._slots.setdefault(in_flight, asyncio.Semaphore(in_flight)),
                self._node_health(batch),
            )
            try:
                outcomes = await asyncio.gather(*(caller.answer(row) for row in rows), return_exceptions=True)
            finally:
                await asyncio.shield(caller.flush())
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
        unrendered = [o for o in outcomes if isinstance(o, RowFailed) and o.template]
        if outcomes and len(unrendered) == len(outcomes):  # a batch a filter emptied renders nothing
            self._node_health(batch).template_failed_everywhere(len(outcomes), str(unrendered[0]))
        await services.record_rows(batch.node, len(outcomes) - len(failures))  # live progress, per batch
        return PoolResult(task.assemble(table, values, ok), failures)

    def _node_health(self, batch: PoolBatch) -> CallHealth:
        # per run and node, across the batches this actor answers (a few runs' worth are kept)
        key = (batch.run_id, batch.node)
        health = self._health.get(key)
        if health is None:
            health = self._health[key] = CallHealth(batch.node)
            if len(self._health) > _KEPT:
                self._health.popitem(last=False)
        return health

    def _task(self, batch: PoolBatch) -> RowTask:
        # one per node spec and params, whichever run sends them: templates are compiled once
        key = _digest(batch.spec.model_dump_json(), json.dumps(batch.params, sort_keys=True, default=str))
        task = self._tasks.get(key)
        if task is None:
            task = self._tasks[key] = RowTask(batch.spec, batch.params)
            if len(self._tasks) > _KEPT:
                self._tasks.popitem(last=False)
        else:
            self._tasks.move_to_end(key)
        return task

    def _provider(self, name: str, config: Mapping[str, Any]) -> Provider:
        # Built on first use, inside the actor's event loop: SDK clients pool connections per loop, and
        # credentials are read from this machine's environment. One per (provider, config).
        key = _digest(name, json.dumps(config, sort_keys=True, default=str))
        provider = self._providers.get(key)
        if provider is None:
            provider = self._providers[key] = get_provider(name, config)
            if len(self._providers) > _KEPT:
                self._providers.popitem(last=False)
        else:
            self._providers.move_to_end(key)
        return provider

    def _cache(self, url: str | None) -> ResponseCache | None:
        if url is None:
            return None
        cache = self._caches.get(url)
        if cache is None:
            cache = self._caches[url] = ResponseCache(url)
        return cache


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()
