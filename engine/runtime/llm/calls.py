"""Answering one row: the cache, the budget, the rate limit, the provider, retries and fallbacks.

For each target (the node's provider and model, then each fallback) a row is tried until it gets a usable
answer or the target's attempts run out::

    cache hit? ── yes ──────────────────────────────────────────────┐
       │ no                                                         ▼
    reserve worst-case cost (ledger) → wait for the rate limit → call → settle → cache → interpret
                                                      │ retryable error: settle at 0, back off
                                                      │ (honouring retry-after), try again
                                                      └ attempts spent: next target, else the row fails

A refused reservation (``BudgetExceeded``) ends the row at once; other rows' calls already sent finish.
The services (ledger and rate limiter) are reached through ``CallServices``, so the same code runs
against Ray actors in a run and against plain objects in unit tests. In a pool actor they are the actor's
leases (:mod:`engine.runtime.llm.lease_book`): a reservation or a settlement is local arithmetic on a
block, and a round trip is made only when a block runs out.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine import telemetry
from engine.runtime.llm.health import CallHealth
from engine.runtime.llm.ledger import Charge, Ledger
from engine.runtime.llm.limiter import RateBuckets
from engine.spec.models import RateLimits, RetryPolicy
from operators.llm_rows import InvalidAnswer, RowTask, Target
from operators.providers.base import LlmRequest, LlmResponse, Provider
from operators.providers.cache import ResponseCache
from operators.providers.errors import ProviderError, RateLimited
from operators.providers.pricing import PriceTable, answer_cost

_PAID = "live"
MAX_RESPONSE_CHARS = 4_000_000
"""An answer longer than this fails its row (and is not cached): no model writes that much in one call."""
_FLUSH_S = 0.25
"""How often a pool reports usage that no budget needs at once (the progress display's resolution)."""
_WAIT_FIRST_S = 0.02
_WAIT_MOST_S = 0.5
"""Pauses of a call waiting for a tenant quota's calls in flight to settle (backpressure)."""
_THROTTLED_PER_ATTEMPT = 10
"""429 and 529 answers a row may get per attempt it is allowed, before they count as failures."""


class RowFailed(Exception):
    """A row got no usable answer from any target; the message says why, for the dead-letter file.

    ``template`` is true when the prompt template could not be rendered with the row's values (for every
    target); see :meth:`CallHealth.template_failed_everywhere`. ``down`` is the provider error a target
    still gave after all its retries (the provider failed, not the row), with its provider and model.
    """

    def __init__(
        self,
        message: str,
        *,
        template: bool = False,
        down: tuple[ProviderError, str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.template = template
        self.down = down


class CallServices(Protocol):
    """The cluster-wide services a call goes through."""

    async def reserve_budget(self, node: str, charge: Charge) -> bool:
        """Reserve ``charge`` (True) or raise ``BudgetExceeded``; False: a shared quota asks the call to
        wait for calls in flight to settle, then ask again (see :func:`reserve_waiting`)."""
        ...

    async def settle_budget(
        self, node: str, reserved: Charge, actual: Charge | None, requests: int = 1
    ) -> None:
        """Settle a reservation with the real usage of ``requests`` answers (None: nothing was billed)."""
        ...

    async def reserve_rate(
        self, key: str, limits: RateLimits, input_tokens: int, output_tokens: int
    ) -> float:
        """Reserve a request under an account's limits; returns the seconds to wait."""
        ...

    def refund_rate(self, key: str, output_tokens: int) -> None:
        """Give back unused output tokens (fire and forget)."""
        ...

    async def record_cached(self, node: str, requests: int, input_tokens: int, output_tokens: int) -> None:
        """Count answers served from the cache."""
        ...

    async def record_rows(self, node: str, rows: int) -> None:
        """Count rows a batch answered, as it comes back (what progress shows before splits end)."""
        ...


class LocalServices:
    """``CallServices`` over an in-process ledger and buckets (one process; for tests and dry runs)."""

    def __init__(self, ledger: Ledger, buckets: RateBuckets | None = None) -> None:
        self.ledger = ledger
        self.buckets = buckets or RateBuckets()

    async def reserve_budget(self, node: str, charge: Charge) -> bool:
        return self.ledger.reserve(node, charge)

    async def settle_budget(
        self, node: str, reserved: Charge, actual: Charge | None, requests: int = 1
    ) -> None:
        self.ledger.settle(node, reserved, actual, requests)

    async def reserve_rate(
        self, key: str, limits: RateLimits, input_tokens: int, output_tokens: int
    ) -> float:
        return self.buckets.reserve(key, limits, input_tokens, output_tokens)

    def refund_rate(self, key: str, output_tokens: int) -> None:
        self.buckets.refund(key, output_tokens)

    async def record_cached(self, node: str, requests: int, input_tokens: int, output_tokens: int) -> None:
        self.ledger.record_cached(node, requests, input_tokens, output_tokens)

    async def record_rows(self, node: str, rows: int) -> None:
        self.ledger.record_rows(node, rows)


async def reserve_waiting(services: CallServices, node: str, charge: Charge) -> None:
    """Reserve ``charge``, waiting (with growing pauses) while a shared quota says the call must wait for
    others to settle; raises ``BudgetExceeded`` when refused."""
    pause = _WAIT_FIRST_S
    while not await services.reserve_budget(node, charge):
        await asyncio.sleep(pause)
        pause = min(pause * 2, _WAIT_MOST_S)


@dataclass(frozen=True)
class CallSettings:
    """How one LLM node calls: its targets in order, retries, and each provider's limits and account."""

    node: str
    targets: tuple[Target, ...]
    retry: RetryPolicy
    limits: Mapping[str, RateLimits] = field(default_factory=dict)
    """Rate limits per provider name (absent: unlimited)."""
    accounts: Mapping[str, str] = field(default_factory=dict)
    """A non-secret id of the account (a hash of key and endpoint) per provider name."""
    budgeted: bool = True
    """False when no budget covers the node: calls then skip the reservation round trip."""
    priced_as: Mapping[str, str] = field(default_factory=dict)
    """Whose prices a provider pays, when not its own (a recording ``replay`` pays its wrapped one's)."""


@dataclass
class CachedCounts:
    """Cache hits not yet reported to the ledger."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class _Unsettled:
    """Usage of calls no budget covers, not yet reported to the ledger (reported a few times a second)."""

    answered: int = 0
    failed: int = 0
    spent: Charge = field(default_factory=Charge)


def estimate_input_tokens(request: LlmRequest) -> int:
    """A generous estimate of a request's input tokens, for reservations (the real count settles it).

    Tokenisers average about four characters a token on prose; three keeps code, numbers and non-Latin
    text from being under-reserved, and the structured-output schema is sent as a tool definition.
    """
    chars = len(request.prompt) + len(request.system or "")
    schema = request.structured_schema()
    if schema is not None:
        chars += len(json.dumps(schema))
    return math.ceil(chars / 3) + 16


def account_id(provider: str, config: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """A stable, non-secret name for the account a provider calls with (a hash of key and endpoint)."""
    env_keys = {
        "anthropic": ("ANTHROPIC_API_KEY",),
        "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
        "openai": ("OPENAI_API_KEY",),
    }.get(provider, ())
    env_urls = {
        "anthropic": ("ANTHROPIC_BASE_URL",),
        "gemini": ("GOOGLE_GEMINI_BASE_URL",),
        "openai": ("OPENAI_BASE_URL",),
    }.get(provider, ())
    key = config.get("api_key") or next((environ[k] for k in env_keys if environ.get(k)), "")
    url = config.get("base_url") or next((environ[k] for k in env_urls if environ.get(k)), "")
    return hashlib.sha256(f"{provider}\0{key}\0{url}".encode()).hexdigest()[:16]


class RowCaller:
    """Answers rows for one LLM node, in one process (an actor of the node's pool)."""

    def __init__(
        self,
        task: RowTask,
        settings: CallSettings,
        providers: Mapping[str, Provider],
        prices: PriceTable,
        cache: ResponseCache | None,
        services: CallServices,
        in_flight: int | asyncio.Semaphore,
        health: CallHealth | None = None,
    ) -> None:
        self.task = task
        self.settings = settings
        self.providers = providers
        self.prices = prices
        self.cache = cache
        self.services = services
        self.cached = CachedCounts()
        self._unsettled = _Unsettled()
        self._flushed_at = time.monotonic()
        # a pool actor passes its own semaphore, shared by every batch it answers at once
        self._slots = asyncio.Semaphore(in_flight) if isinstance(in_flight, int) else in_flight
        # a pool actor passes the run's node's health, kept across the batches it answers
        self.health = health or CallHealth(settings.node)

    async def answer(self, row: Mapping[str, Any]) -> Any:
        """The column value for ``row``; raises ``RowFailed``, ``BudgetExceeded``, or ``FatalRunError``
        when no row can pass (:mod:`engine.runtime.llm.health`: later rows then raise it without a call)."""
        errors: list[str] = []
        template = True
        down: list[tuple[ProviderError, str, str] | None] = []
        for target in self.settings.targets:
            self.health.check()
            try:
                answer = await self._answer_with(row, target)
            except RowFailed as exc:
                errors.append(f"{target.provider}/{target.model}: {exc}")
                template = template and exc.template
                down.append(exc.down)
            else:
                # the circuit breaker counts rows, after fallbacks: a provider that is down while its
                # fallback answers costs retries, never the run
                self.health.answered()
                return answer
        if down and all(d is not None for d in down):  # every target was down, not the row at fault
            last = down[-1]
            assert last is not None
            self.health.gave_up(*last)
        raise RowFailed("; then ".join(errors), template=template)

    async def _answer_with(self, row: Mapping[str, Any], target: Target) -> Any:
        feedback: list[str] = []
        while True:
            try:
                request = self.task.request(row, target, feedback)
            except InvalidAnswer as exc:
                raise RowFailed(str(exc)) from None
            except Exception as exc:  # a template that fails on this row's values
                raise RowFailed(f"prompt template: {type(exc).__name__}: {exc}", template=True) from None
            self.health.rendered += 1
            response = await self._respond(request, target)
            try:
                return self.task.interpret(request, response.text, response.parsed, response.stop_reason)
            except InvalidAnswer as exc:
                feedback.append(str(exc))
                if len(feedback) >= self.task.max_attempts:
                    raise RowFailed(f"{exc} (after {len(feedback)} answers)") from None

    async def _respond(self, request: LlmRequest, target: Target) -> LlmResponse:
        if self.cache is not None:
            hit = self.cache.get(request)
            if hit is not None:
                if telemetry.recording():
                    self._cache_span(target, hit)
                self.cached.requests += 1
                self.cached.input_tokens += hit.input_tokens
                self.cached.output_tokens += hit.output_tokens
                return hit
        response = await self._call(request, target)
        size = len(response.text or "") + (
            len(json.dumps(response.parsed)) if response.parsed is not None else 0
        )
        if size > MAX_RESPONSE_CHARS:  # a model's answer is bounded by max_tokens; a bigger body is not one
            raise RowFailed(f"the answer has {size:,} characters, more than {MAX_RESPONSE_CHARS:,}")
        if self.cache is not None and response.source != "offline":
            self.cache.put(request, response)
        return response

    async def _call(self, request: LlmRequest, target: Target) -> LlmResponse:
        node, policy = self.settings.node, self.settings.retry
        provider = self.providers[target.provider]
        price = self.prices.price(self.settings.priced_as.get(target.provider, target.provider), target.model)
        estimate = estimate_input_tokens(request)
        # Without a budget there is nothing to reserve against; usage is still settled after the call.
        reserved = (
            Charge(
                price.cost(estimate, request.max_tokens),
                estimate,
                request.max_tokens,
                floor_usd=price.cost(estimate, 0),
            )
            if self.settings.budgeted
            else Charge()
        )
        limits = self.settings.limits.get(target.provider)
        key = f"{target.provider}/{target.model}/{self.settings.accounts.get(target.provider, '')}"
        attempt = throttled = 0
        while True:
            attempt += 1
            async with self._slots:
                if self.settings.budgeted:
                    await reserve_waiting(self.services, node, reserved)
                delay = 0.0
                if limits is not None:
                    delay = await self.services.reserve_rate(key, limits, estimate, request.max_tokens)
                    if delay > 0:
                        await asyncio.sleep(delay)
                try:
                    if telemetry.recording():
                        response = await self._traced_call(provider, request, target, attempt, delay)
                    else:
                        response = await provider.call(request)
                except ProviderError as exc:
                    await self._settle(reserved, None)
                    if limits is not None:
                        self.services.refund_rate(key, request.max_tokens)
                    self.health.refused(exc, target.provider, target.model)  # raises when no row can pass
                    if (
                        isinstance(exc, RateLimited)
                        and throttled < _THROTTLED_PER_ATTEMPT * policy.max_attempts
                    ):
                        # "come back later" is back-pressure, not a failure: it does not use up attempts
                        throttled += 1
                        attempt -= 1
                    elif not exc.retryable or attempt >= policy.max_attempts:
                        # retryable: the provider failed, not the row (the circuit breaker may count it)
                        down = (exc, target.provider, target.model) if exc.retryable else None
                        raise RowFailed(
                            f"{exc} (attempt {attempt} of {policy.max_attempts})", down=down
                        ) from None
                    if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
                        # the server said when to come back: that, not our own growing backoff
                        wait = exc.retry_after_s
                    else:
                        wait = policy.backoff_s(attempt + throttled, exc.retry_after_s)
                except BaseException:
                    # a provider's bug or a cancelled run: release the reservation before going
                    await asyncio.shield(self._settle(reserved, None))
                    raise
                else:
                    billed = response.source == _PAID
                    cost = answer_cost(price, response) if billed else 0.0
                    actual = Charge(cost, response.input_tokens, response.output_tokens)
                    await self._settle(reserved, actual)
                    if limits is not None:
                        self.services.refund_rate(key, request.max_tokens - response.output_tokens)
                    return response
            await asyncio.sleep(wait)  # outside the slot: a backing-off row does not block others

    async def _traced_call(
        self, provider: Provider, request: LlmRequest, target: Target, attempt: int, waited: float
    ) -> LlmResponse:
        """``provider.call`` inside an ``llm.call`` span (only when the run is traced)."""
        span = telemetry.start_span(
            "llm.call",
            {
                "headrace.node": self.settings.node,
                "llm.provider": target.provider,
                "llm.model": target.model,
                "llm.attempt": attempt,
                "llm.cache_hit": False,
                "llm.rate_limit_wait_s": waited,
            },
        )
        try:
            response = await provider.call(request)
        except BaseException as exc:
            status = getattr(exc, "status", None)
            telemetry.end_span(span, {"llm.status": status}, error=f"{type(exc).__name__}: {exc}")
            raise
        billed = response.source == _PAID
        price = self.prices.price(self.settings.priced_as.get(target.provider, target.provider), target.model)
        telemetry.end_span(
            span,
            {
                "llm.input_tokens": response.input_tokens,
                "llm.output_tokens": response.output_tokens,
                "llm.cost_usd": answer_cost(price, response) if billed else 0.0,
                "llm.stop_reason": response.stop_reason,
                "llm.status": "ok",
            },
        )
        return response

    def _cache_span(self, target: Target, hit: LlmResponse) -> None:
        attributes = {
            "headrace.node": self.settings.node,
            "llm.provider": target.provider,
            "llm.model": target.model,
            "llm.cache_hit": True,
            "llm.attempt": 0,
        }
        usage = {
            "llm.input_tokens": hit.input_tokens,
            "llm.output_tokens": hit.output_tokens,
            "llm.cost_usd": 0.0,
        }
        telemetry.end_span(telemetry.start_span("llm.call", attributes), {**usage, "llm.status": "ok"})

    async def _settle(self, reserved: Charge, actual: Charge | None) -> None:
        """Settle one call: at once when a budget covers the node (the next reservation must see it),
        else batched, so a call costs no round trip to the ledger."""
        if self.settings.budgeted:
            await self.services.settle_budget(self.settings.node, reserved, actual)
            return
        pending = self._unsettled
        if actual is None:
            pending.failed += 1
        else:
            pending.answered += 1
            pending.spent = Charge(
                pending.spent.cost_usd + actual.cost_usd,
                pending.spent.input_tokens + actual.input_tokens,
                pending.spent.output_tokens + actual.output_tokens,
            )
        if time.monotonic() - self._flushed_at >= _FLUSH_S:
            await self.flush()

    async def flush(self) -> None:
        """Report usage not yet in the ledger: batched calls and cache hits."""
        self._flushed_at = time.monotonic()
        node = self.settings.node
        pending, self._unsettled = self._unsettled, _Unsettled()
        if pending.answered:
            await self.services.settle_budget(node, Charge(), pending.spent, pending.answered)
        if pending.failed:
            await self.services.settle_budget(node, Charge(), None, pending.failed)
        counts, self.cached = self.cached, CachedCounts()
        if counts.requests:
            await self.services.record_cached(
                node, counts.requests, counts.input_tokens, counts.output_tokens
            )
