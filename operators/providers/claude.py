"""The ``anthropic`` provider: Claude through the ``anthropic`` SDK's async Messages API.

Structured output forces a single tool whose ``input_schema`` is the output schema; the tool call's
``input`` is the answer. Tools must take an object, so a non-object schema (e.g. the enum of ``labels``)
is wrapped as ``{"value": schema}`` and unwrapped on the way back.

Batches use the Message Batches API: each request's ``params`` are exactly the body ``call`` sends, and
each succeeded line's Message is read exactly as ``call`` reads its answer (``_params`` and ``_response``).
Token counts (``count_tokens``) send that same body, less the fields the count endpoint does not take.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anthropic
import httpx2
from anthropic.types import Message
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse

from operators.providers.base import (
    BATCH_COUNT_KEYS,
    BatchStatus,
    ConfigReader,
    LlmRequest,
    LlmResponse,
    SubmittedBatches,
    check_batch_items,
    unanswered,
)
from operators.providers.errors import (
    BadResponse,
    MissingCredentials,
    ProviderError,
    error_for_status,
    parse_retry_after,
    redact,
    transport_error,
)

NAME = "anthropic"
_TOOL = "record_answer"
TOOL_NAME = _TOOL
"""The tool a structured answer is recorded with (its name is part of what the answer costs)."""
_WRAPPED = "value"
# The Message Batches API's own limit (the other one, 256 MB, is left to the API to enforce).
_BATCH_LIMIT = 100_000
# Batch create/retrieve/cancel/results have no LlmRequest to take a timeout from; this bounds each
# network operation (httpx timeouts are per read or write, so a long results download is not cut).
_BATCH_TIMEOUT_S = 60.0
# The HTTP status of each error type of an errored batch line, so that it maps like a live error.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_UNANSWERED = {
    "canceled": "the batch was canceled before it was processed",
    "expired": "the batch expired (24 hours) before it was processed",
}
# What can escape the SDK: its own errors, JSON errors (ValueError), and transport errors raised while
# a streamed results file is read (the SDK wraps them only for the request itself).
_CAUGHT = (anthropic.AnthropicError, ValueError, httpx2.TransportError)
# Fields of the Messages body that messages.count_tokens does not accept: they do not change the input.
_NOT_COUNTED = ("max_tokens", "temperature")


def _params(request: LlmRequest) -> dict[str, Any]:
    """The Messages API body of ``request``: ``create``'s keywords, and a batch request's ``params``."""
    schema = request.structured_schema()
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": [{"role": "user", "content": request.prompt}],
    }
    if request.system is not None:
        params["system"] = request.system
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if schema is not None:
        input_schema = (
            schema
            if schema.get("type") == "object"
            else {"type": "object", "properties": {_WRAPPED: schema}, "required": [_WRAPPED]}
        )
        params["tools"] = [{"name": _TOOL, "description": "Record the answer.", "input_schema": input_schema}]
        params["tool_choice"] = {"type": "tool", "name": _TOOL}
    return params


def messages_body(request: LlmRequest) -> dict[str, Any]:
    """The Messages API body a call of ``request`` sends (for counting what it sends, locally)."""
    return _params(request)


def _response(request: LlmRequest, message: Message, latency_s: float, request_id: str | None) -> LlmResponse:
    """The ``LlmResponse`` of the Message answering ``request``; ``BadResponse`` if it lacks the answer."""
    schema = request.structured_schema()
    texts = [block.text for block in message.content if block.type == "text"]
    parsed: Any = None
    if schema is not None:
        tool_inputs = [b.input for b in message.content if b.type == "tool_use" and b.name == _TOOL]
        if not tool_inputs:
            raise BadResponse(
                f"asked for structured output but the answer has no {_TOOL!r} tool call "
                f"(stop_reason {message.stop_reason!r})",
                provider=NAME,
            )
        parsed = tool_inputs[0]
        if schema.get("type") != "object":
            if not isinstance(parsed, dict) or _WRAPPED not in parsed:
                raise BadResponse(f"the tool call lacks its {_WRAPPED!r} field", provider=NAME)
            parsed = parsed[_WRAPPED]
    text = "".join(texts) if texts else None
    if request.labels and request.output_schema is None:
        text = parsed if isinstance(parsed, str) else text  # a label is text too
    return LlmResponse(
        text=text,
        parsed=parsed,
        input_tokens=message.usage.input_tokens,
        output_tokens=message.usage.output_tokens,
        model=message.model,
        latency_s=latency_s,
        stop_reason=message.stop_reason,
        request_id=request_id,
    )


def _counts(batch: MessageBatch) -> dict[str, int]:
    counts = batch.request_counts
    return {key: getattr(counts, key) for key in BATCH_COUNT_KEYS}


class AnthropicProvider:
    """Claude via ``anthropic.AsyncAnthropic`` with the SDK's retries off (headrace retries itself).

    Also a ``BatchProvider`` (Message Batches: half the price, answered within 24 hours) and a
    ``TokenCounter`` (``messages.count_tokens``).

    Config keys (each falls back to the SDK's own variable): ``api_key`` (``ANTHROPIC_API_KEY``),
    ``base_url`` (``ANTHROPIC_BASE_URL``).
    """

    def __init__(self, config: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        reader = ConfigReader(NAME, config or {}, frozenset({"api_key", "base_url"}))
        self._api_key = reader.string("api_key", "ANTHROPIC_API_KEY", environ=env)
        if not self._api_key:
            raise MissingCredentials(
                "no API key: set ANTHROPIC_API_KEY or the provider config's `api_key`", provider=NAME
            )
        self._base_url = reader.string("base_url", "ANTHROPIC_BASE_URL", environ=env)
        # Created on first call: an httpx pool belongs to the event loop that opened it, and providers
        # are often built outside any loop (at compile time, in an actor's constructor).
        self._client: anthropic.AsyncAnthropic | None = None
        self._batches = SubmittedBatches(NAME)

    def __repr__(self) -> str:
        return f"AnthropicProvider(base_url={self._base_url!r})"

    def _sdk(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            self._client = anthropic.AsyncAnthropic(
                api_key=self._api_key, base_url=self._base_url, max_retries=0
            )
        return self._client

    async def call(self, request: LlmRequest) -> LlmResponse:
        """Send one Messages request; see ``Provider.call``."""
        params = _params(request)
        # anthropic 2.x dropped sampling parameters from ``create``'s signature; the Messages API still
        # reads ``temperature`` (range 0-1), so it goes in the body directly.
        extra_body = {"temperature": params.pop("temperature")} if "temperature" in params else None
        started = time.perf_counter()
        try:
            message = await self._sdk().messages.create(
                **params, extra_body=extra_body, timeout=request.timeout_s
            )
        except _CAUGHT as exc:
            raise self._error(exc) from None  # not chained: the SDK error holds the key in its request
        latency = time.perf_counter() - started
        return _response(request, message, latency, getattr(message, "_request_id", None))

    # -- TokenCounter

    async def count_tokens(self, request: LlmRequest) -> int:
        """Ask ``messages.count_tokens`` for the body ``call`` would send; see ``TokenCounter``.

        The count covers the system prompt, the message and, for a structured answer, the tool
        definition and ``tool_choice`` (so the tool-use system prompt too), as the API bills them.
        """
        body = {k: v for k, v in _params(request).items() if k not in _NOT_COUNTED}
        try:
            result = await self._sdk().messages.count_tokens(**body, timeout=request.timeout_s)
        except _CAUGHT as exc:
            raise self._error(exc) from None
        return int(result.input_tokens)

    # -- BatchProvider

    async def submit_batch(self, items: Sequence[tuple[str, LlmRequest]]) -> str:
        """Create a Message Batch of ``(custom id, request)`` pairs; see ``BatchProvider.submit_batch``."""
        requests = check_batch_items(items, limit=_BATCH_LIMIT)
        body = [{"custom_id": custom_id, "params": _params(r)} for custom_id, r in requests.items()]
        try:
            batch = await self._sdk().messages.batches.create(
                requests=body,  # type: ignore[arg-type]  # plain dicts of the params TypedDict
                timeout=_BATCH_TIMEOUT_S,
            )
        except _CAUGHT as exc:
            raise self._error(exc) from None
        self._batches.remember(batch.id, requests)
        return batch.id

    async def batch_status(self, batch_id: str) -> BatchStatus:
        """Retrieve the batch; see ``BatchProvider.batch_status``."""
        try:
            batch = await self._sdk().messages.batches.retrieve(batch_id, timeout=_BATCH_TIMEOUT_S)
        except _CAUGHT as exc:
            raise self._error(exc) from None
        return BatchStatus(batch.id, batch.processing_status == "ended", _counts(batch))

    async def batch_results(
        self, batch_id: str, requests: Mapping[str, LlmRequest] | None = None
    ) -> dict[str, LlmResponse | ProviderError]:
        """Read an ended batch's results file; see ``BatchProvider.batch_results``."""
        wanted = self._batches.requests(batch_id, requests)
        results: dict[str, LlmResponse | ProviderError] = {}
        try:
            lines = await self._sdk().messages.batches.results(batch_id, timeout=_BATCH_TIMEOUT_S)
            async for line in lines:
                request = wanted.get(line.custom_id)
                if request is not None:  # a line for an id we did not ask about is not ours to report
                    results[line.custom_id] = self._line(request, line)
        except _CAUGHT as exc:
            raise self._error(exc) from None
        for custom_id in wanted.keys() - results.keys():
            results[custom_id] = unanswered(NAME, custom_id, f"batch {batch_id} has no result line for it")
        return results

    async def cancel_batch(self, batch_id: str) -> None:
        """Ask the API to cancel the batch; see ``BatchProvider.cancel_batch``."""
        try:
            await self._sdk().messages.batches.cancel(batch_id, timeout=_BATCH_TIMEOUT_S)
        except _CAUGHT as exc:
            raise self._error(exc) from None

    def _line(self, request: LlmRequest, line: MessageBatchIndividualResponse) -> LlmResponse | ProviderError:
        """The answer or error of one results line."""
        result = line.result
        if result.type == "succeeded":
            try:
                # A batch line has no HTTP request of its own: the message id is what names it to support.
                answer = _response(request, result.message, 0.0, result.message.id)
            except BadResponse as error:
                return error
            return dataclasses.replace(answer, batch=True)
        if result.type == "errored":
            detail = result.error.error
            kind = getattr(detail, "type", "api_error")
            message = redact(f"{kind}: {getattr(detail, 'message', '')}", [self._api_key])
            return error_for_status(NAME, _ERROR_STATUS.get(kind, 500), message)
        return unanswered(
            NAME, line.custom_id, _UNANSWERED.get(result.type, f"its result is {result.type!r}")
        )

    def _error(self, exc: Exception) -> ProviderError:
        """The ``ProviderError`` of an SDK, transport or JSON exception, with the key scrubbed from it."""
        message = redact(str(exc) or type(exc).__name__, [self._api_key])
        if isinstance(exc, anthropic.APIStatusError):
            retry_after = parse_retry_after(exc.response.headers)
            return error_for_status(NAME, exc.status_code, message, retry_after)
        return transport_error(NAME, anthropic, exc, message)

    async def close(self) -> None:
        """Close the SDK client's connections; idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
