"""``mode: batch``: a batch of rows sent through the provider's batch API, at its discounted price.

One round sends every row that has no answer yet as one provider batch, polls until it ends, and reads
the results: an answer is settled in the ledger at the batch price, cached, and interpreted; a retryable
error or (for ``llm_extract``) an answer that fails validation goes into the next round, with the
validation error fed back; other errors fail the row. Rounds repeat up to the node's ``max_attempts``.

Errors no row can fix stop the run as in online mode (:mod:`engine.runtime.llm.health`): a refused key,
a forbidden or unknown model (401, 403, 404, whether the batch call or a row's result carries it), a
template no row renders; rows that got no answer because the provider kept failing after every round
count towards the node's circuit breaker.

Resume after a crash: before a round is submitted, its provider batch id is written next to the response
cache, keyed by the round's requests. A rerun that builds the same requests finds the record and polls
that batch instead of paying for a new one; its answers land in the cache, so later rounds and reruns
read them from there.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connectors.files import filesystem
from engine.errors import FatalRunError
from engine.runtime.llm.calls import (
    CallServices,
    CallSettings,
    RowFailed,
    estimate_input_tokens,
    reserve_waiting,
)
from engine.runtime.llm.health import CallHealth
from engine.runtime.llm.ledger import Charge
from operators.llm_rows import InvalidAnswer, RowTask
from operators.providers.base import BatchProvider, LlmRequest, LlmResponse
from operators.providers.cache import ResponseCache
from operators.providers.errors import ProviderError
from operators.providers.pricing import PriceTable, answer_cost


@dataclass
class _Row:
    index: int
    row: Mapping[str, Any]
    feedback: list[str]
    value: Any = None
    error: BaseException | None = None
    done: bool = False


class BatchRowCaller:
    """Answers the rows of one Arrow batch through a provider batch API (the node's primary target)."""

    def __init__(
        self,
        task: RowTask,
        settings: CallSettings,
        provider: BatchProvider,
        prices: PriceTable,
        cache: ResponseCache | None,
        services: CallServices,
        poll_s: float,
        health: CallHealth | None = None,
    ) -> None:
        self.task = task
        # a pool actor passes the run's node's health, kept across the batches it answers
        self.health = health or CallHealth(settings.node)
        self.settings = settings
        self.provider = provider
        self.prices = prices
        self.cache = cache
        self.services = services
        self.poll_s = poll_s
        self.target = settings.targets[0]

    async def answer_all(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """One outcome per row, in order: the value, a ``RowFailed``, or a ``BudgetExceeded``; raises
        ``FatalRunError`` when no row can pass (a refused key, an unknown model, the circuit breaker)."""
        self.health.check()
        state = [_Row(i, row, []) for i, row in enumerate(rows)]
        rounds = max(self.settings.retry.max_attempts, self.task.max_attempts)
        cached = Charge()
        cached_rows = 0
        for round_no in range(1, rounds + 1):
            pending: list[tuple[_Row, LlmRequest]] = []
            for item in state:
                if item.done:
                    continue
                try:
                    request = self.task.request(item.row, self.target, item.feedback)
                except InvalidAnswer as exc:  # an oversized prompt
                    item.error, item.done = RowFailed(f"prompt: {exc}"), True
                    continue
                except Exception as exc:  # a template that fails on this row's values
                    item.error = RowFailed(f"prompt template: {type(exc).__name__}: {exc}", template=True)
                    item.done = True
                    continue
                self.health.rendered += 1
                hit = self.cache.get(request) if self.cache is not None else None
                if hit is not None:
                    cached_rows += 1
                    cached = Charge(
                        0.0, cached.input_tokens + hit.input_tokens, cached.output_tokens + hit.output_tokens
                    )
                    self._interpret(item, request, hit)
                else:
                    pending.append((item, request))
            if not pending:
                break
            await self._round(pending, last=round_no == rounds)
        if cached_rows:
            await self.services.record_cached(
                self.settings.node, cached_rows, cached.input_tokens, cached.output_tokens
            )
        return [item.error if item.error is not None else item.value for item in state]

    async def _round(self, pending: list[tuple[_Row, LlmRequest]], *, last: bool) -> None:
        node = self.settings.node
        price = self.prices.price(
            self.settings.priced_as.get(self.target.provider, self.target.provider), self.target.model
        )
        estimate = sum(estimate_input_tokens(r) for _, r in pending)
        most_out = sum(r.max_tokens for _, r in pending)
        reserved = (
            Charge(
                price.cost(estimate, most_out, batch=True),
                estimate,
                most_out,
                floor_usd=price.cost(estimate, 0, batch=True),
            )
            if self.settings.budgeted
            else Charge()
        )
        if self.settings.budgeted:
            await reserve_waiting(self.services, node, reserved)  # BudgetExceeded ends the batch here
        items = [(f"r{item.index}", request) for item, request in pending]
        record = self._record_path(items)
        batch_id = self._recorded(record)
        try:
            if batch_id is None:
                batch_id = await self.provider.submit_batch(items)
                self._remember(record, batch_id)
            while not (await self.provider.batch_status(batch_id)).ended:
                await asyncio.sleep(self.poll_s)
            results = await self.provider.batch_results(batch_id, dict(items))
        except ProviderError as exc:
            await self.services.settle_budget(node, reserved, None, len(pending))
            self.health.refused(exc, self.target.provider, self.target.model)  # raises if no row can pass
            if not exc.retryable or last:
                for item, _ in pending:
                    item.error, item.done = RowFailed(f"batch: {exc}"), True
                if exc.retryable:  # the provider kept failing: the rows count towards the breaker
                    for _ in pending:
                        self.health.gave_up(exc, self.target.provider, self.target.model)
            return
        spent = Charge()
        answered = 0
        stop: FatalRunError | None = None  # raised once the round's spending is settled
        for item, request in pending:
            outcome = results.get(f"r{item.index}")
            if isinstance(outcome, LlmResponse):
                answered += 1
                self.health.answered()
                cost = answer_cost(price, outcome)  # at the batch price: the answer is marked batch
                spent = Charge(
                    spent.cost_usd + cost,
                    spent.input_tokens + outcome.input_tokens,
                    spent.output_tokens + outcome.output_tokens,
                )
                if self.cache is not None:
                    self.cache.put(request, outcome)
                self._interpret(item, request, outcome)
                if not item.done and last:
                    item.error, item.done = (
                        RowFailed(f"{item.feedback[-1]} (after {len(item.feedback)} answers)"),
                        True,
                    )
            else:
                error = outcome or ProviderError(
                    "missing from the batch results", provider=self.target.provider, retryable=True
                )
                try:
                    self.health.refused(error, self.target.provider, self.target.model)
                    if not error.retryable or last:
                        item.error, item.done = RowFailed(f"batch: {error}"), True
                        if error.retryable:  # the provider kept failing: counts towards the breaker
                            self.health.gave_up(error, self.target.provider, self.target.model)
                except FatalRunError as fatal:
                    stop = stop or fatal
        if answered:
            await self.services.settle_budget(node, reserved, spent, answered)
        else:
            await self.services.settle_budget(node, reserved, None, len(pending))
        self._forget(record)
        if stop is not None:
            raise stop

    def _interpret(self, item: _Row, request: LlmRequest, response: LlmResponse) -> None:
        try:
            item.value = self.task.interpret(request, response.text, response.parsed, response.stop_reason)
            item.done = True
        except InvalidAnswer as exc:
            item.feedback.append(str(exc))
            if len(item.feedback) >= self.task.max_attempts:
                item.error, item.done = RowFailed(f"{exc} (after {len(item.feedback)} answers)"), True

    def _record_path(self, items: Sequence[tuple[str, LlmRequest]]) -> str | None:
        if self.cache is None:
            return None
        digest = hashlib.sha256(
            "\n".join(f"{cid}:{r.fingerprint()}" for cid, r in items).encode()
        ).hexdigest()
        return f"{self.cache.url.rstrip('/')}/batches/{digest}.json"

    def _recorded(self, path: str | None) -> str | None:
        if path is None:
            return None
        fs, local = filesystem(path)
        if not fs.exists(local):
            return None
        try:
            data = json.loads(fs.cat_file(local))
        except (OSError, ValueError):
            return None
        return str(data["batch_id"]) if isinstance(data, dict) and "batch_id" in data else None

    def _remember(self, path: str | None, batch_id: str) -> None:
        if path is None:
            return
        fs, local = filesystem(path)
        fs.makedirs(local.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{local}.tmp"
        fs.pipe_file(tmp, json.dumps({"batch_id": batch_id, "provider": self.target.provider}).encode())
        fs.mv(tmp, local)

    def _forget(self, path: str | None) -> None:
        if path is None:
            return
        fs, local = filesystem(path)
        if fs.exists(local):
            fs.rm(local)
