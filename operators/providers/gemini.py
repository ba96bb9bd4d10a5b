"""The ``gemini`` provider: Gemini through ``google-genai``'s async ``generate_content``.

Structured output uses JSON mode (``response_mime_type="application/json"`` with ``response_json_schema``);
the answer's text is parsed into ``LlmResponse.parsed``. google-genai has two hidden retry paths, both off
here: tenacity (off when ``retry_options.attempts`` is 1) and an implicit 1-10 s sleep-and-retry on
connection errors (skipped whenever ``retry_options`` is set at all).

Batches use batch mode with inlined requests (``client.aio.batches``): each request is the same
``generateContent`` request ``call`` sends, tagged with its custom id in the request's ``metadata``, which
the API echoes in the matching inlined response; answers are read exactly as ``call`` reads its answer
(``_config`` and ``_response``).

Token counts (``count_tokens``) use ``countTokens``, which in the Gemini API counts contents only:
google-genai refuses a system instruction there and has no place for a response schema. The system
prompt and the schema's JSON are therefore sent as extra text parts of the message, which gives a close,
slightly high, figure for what ``generateContent`` bills.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

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
    ConnectionFailed,
    KeyRejected,
    MissingCredentials,
    ProviderError,
    ProviderTimeout,
    error_for_status,
    google_error_reasons,
    parse_retry_after,
    parse_retry_delay,
    redact,
)

NAME = "gemini"
# ErrorInfo reasons by which Google refuses the key itself; a wrong key comes back as 400, not 401.
_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})
_STOP_REASONS = {"STOP": "end_turn", "MAX_TOKENS": "max_tokens"}
# Inlined batches are capped at 20 MB of requests, which the API enforces (a 400); the count limit only
# keeps one batch's bookkeeping bounded, and matches Anthropic's.
_BATCH_LIMIT = 100_000
# Batch create/get/cancel have no LlmRequest to take a timeout from (HttpOptions.timeout is in ms).
_BATCH_TIMEOUT_MS = 60_000
_BATCH_NAME = re.compile(r"batches/[^/]+")
_CUSTOM_ID_KEY = "custom_id"  # the inlined request's metadata key that carries the caller's custom id
# The HTTP status of each google.rpc.Code an inlined response's error carries, so that it maps like a
# live error (Google's published mapping; codes not listed are treated as 500).
_GRPC_STATUS = {
    1: 499,
    3: 400,
    4: 504,
    5: 404,
    6: 409,
    7: 403,
    8: 429,
    9: 400,
    10: 409,
    11: 400,
    12: 501,
    13: 500,
    14: 503,
    16: 401,
}
# Where the requests a batch did not answer are counted, by the state it ended in.
_UNANSWERED_STATES = {
    "JOB_STATE_CANCELLED": ("canceled", "the batch was canceled before it was processed"),
    "JOB_STATE_EXPIRED": ("expired", "the batch expired before it was processed"),
}


def _transport_errors() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """(timeouts, connection failures) of google-genai's async transport: aiohttp if installed, else httpx."""
    timeouts: list[type[Exception]] = [TimeoutError, asyncio.TimeoutError]
    connections: list[type[Exception]] = [OSError]
    try:
        import aiohttp

        connections.append(aiohttp.ClientError)
    except ImportError:  # pragma: no cover - aiohttp ships with ray[default]
        pass
    try:
        import httpx

        timeouts.append(httpx.TimeoutException)
        connections.append(httpx.TransportError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(timeouts), tuple(connections)


_TIMEOUT_ERRORS, _CONNECTION_ERRORS = _transport_errors()
_CAUGHT: tuple[type[Exception], ...] = (
    genai_errors.APIError,
    ValueError,
    *_TIMEOUT_ERRORS,
    *_CONNECTION_ERRORS,
)


def _config(request: LlmRequest) -> types.GenerateContentConfig:
    """The generation config of ``request``: ``call``'s, and each inlined batch request's (no timeout)."""
    schema = request.structured_schema()
    config = types.GenerateContentConfig(
        system_instruction=request.system,
        max_output_tokens=request.max_tokens,
        temperature=request.temperature,
    )
    if schema is not None:
        config.response_mime_type = "application/json"
        config.response_json_schema = schema
    return config


def _response(request: LlmRequest, response: types.GenerateContentResponse, latency_s: float) -> LlmResponse:
    """The ``LlmResponse`` of the answer to ``request``; ``BadResponse`` if JSON mode answered no JSON."""
    candidate = response.candidates[0] if response.candidates else None
    reason = candidate.finish_reason if candidate is not None else None
    stop_reason = None if reason is None else _STOP_REASONS.get(reason.name, reason.name.lower())
    text = _text(response)
    parsed: Any = None
    if request.structured_schema() is not None:
        if text is None:
            raise BadResponse(f"asked for JSON but the answer has no text ({stop_reason})", provider=NAME)
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise BadResponse(
                f"JSON mode answered text that is not JSON ({stop_reason}): {exc}", provider=NAME
            ) from None
        text = parsed if request.labels and request.output_schema is None else None
    usage = response.usage_metadata
    return LlmResponse(
        text=text,
        parsed=parsed,
        input_tokens=(usage.prompt_token_count or 0) if usage else 0,
        # Google bills thinking as output: a Gemini 2.5 answer's cost includes its thoughts
        output_tokens=((usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0))
        if usage
        else 0,
        model=response.model_version or request.model,
        latency_s=latency_s,
        stop_reason=stop_reason,
        request_id=response.response_id,
    )


def _text(response: types.GenerateContentResponse) -> str | None:
    """The concatenated text parts of the first candidate (``response.text`` warns on other parts)."""
    candidate = response.candidates[0] if response.candidates else None
    parts = candidate.content.parts if candidate and candidate.content else None
    texts = [p.text for p in parts or [] if p.text is not None and not p.thought]
    return "".join(texts) if texts else None


def _state(job: types.BatchJob) -> str:
    return job.state.name if job.state is not None else "JOB_STATE_UNSPECIFIED"


def _answers(job: types.BatchJob) -> list[types.InlinedResponse]:
    """The inlined responses of a batch (none until it has succeeded)."""
    return (job.dest.inlined_responses or []) if job.dest is not None else []


def _unanswered(job: types.BatchJob) -> tuple[str, str]:
    """Which count an ended batch's unanswered requests go to, and why they got no answer."""
    state = _state(job)
    if state in _UNANSWERED_STATES:
        return _UNANSWERED_STATES[state]
    failure = f": {job.error.message}" if job.error is not None and job.error.message else ""
    return "errored", f"the batch ended {state} without answering it{failure}"


def _batch_http_options() -> types.HttpOptions:
    # Per call, not on the client: the client's options carry no timeout, and ``call`` sets its own.
    return types.HttpOptions(timeout=_BATCH_TIMEOUT_MS)


def _batch_name(batch_id: str) -> str:
    """``batch_id`` if it is a batch name (``batches/...``); the SDK would raise a bare ValueError."""
    if not _BATCH_NAME.fullmatch(batch_id):
        raise ValueError(f"{batch_id!r} is not a gemini batch id (they read 'batches/...')")
    return batch_id


class GeminiProvider:
    """Gemini via ``genai.Client(...).aio`` with the SDK's retries off (headrace retries itself).

    Also a ``BatchProvider`` (batch mode with inlined requests: half the price, answered within 24 hours)
    and a ``TokenCounter`` (``models.count_tokens``; see the module docstring for what it counts).

    Config keys: ``api_key`` (else ``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``), ``base_url`` (else
    ``GOOGLE_GEMINI_BASE_URL``), ``api_version`` (the SDK's default, ``v1``, when absent).
    """

    def __init__(self, config: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        reader = ConfigReader(NAME, config or {}, frozenset({"api_key", "base_url", "api_version"}))
        self._api_key = reader.string("api_key", "GEMINI_API_KEY", "GOOGLE_API_KEY", environ=env)
        if not self._api_key:
            raise MissingCredentials(
                "no API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) or the provider config's `api_key`",
                provider=NAME,
            )
        self._base_url = reader.string("base_url", "GOOGLE_GEMINI_BASE_URL", environ=env)
        self._api_version = reader.string("api_version", environ={})
        self._client: genai.Client | None = None
        self._batches = SubmittedBatches(NAME)

    def __repr__(self) -> str:
        return f"GeminiProvider(base_url={self._base_url!r})"

    def _sdk(self) -> genai.Client:
        if self._client is None:
            options = types.HttpOptions(
                base_url=self._base_url,
                api_version=self._api_version,
                retry_options=types.HttpRetryOptions(attempts=1),
            )
            self._client = genai.Client(api_key=self._api_key, http_options=options)
        return self._client

    async def call(self, request: LlmRequest) -> LlmResponse:
        """Send one generateContent request; see ``Provider.call``."""
        config = _config(request)
        # HttpOptions.timeout is in milliseconds.
        config.http_options = types.HttpOptions(timeout=max(1, round(request.timeout_s * 1000)))
        started = time.perf_counter()
        try:
            response = await self._sdk().aio.models.generate_content(
                model=request.model, contents=request.prompt, config=config
            )
        except _CAUGHT as exc:
            raise self._error(exc) from None  # not chained: SDK errors keep the request and its headers
        return _response(request, response, time.perf_counter() - started)

    # -- TokenCounter

    async def count_tokens(self, request: LlmRequest) -> int:
        """Ask ``countTokens`` for the request's system prompt, prompt and answer schema; see
        ``TokenCounter``.

        ``countTokens`` takes contents only, so the system prompt and the schema's JSON are counted as
        extra text parts of the message: close to, and slightly above, what ``call`` is billed.
        """
        schema = request.structured_schema()
        parts: list[types.PartUnion] = [
            p for p in (request.system, request.prompt, schema and json.dumps(schema)) if p
        ]
        config = types.CountTokensConfig(
            http_options=types.HttpOptions(timeout=max(1, round(request.timeout_s * 1000)))
        )
        try:
            result = await self._sdk().aio.models.count_tokens(
                model=request.model, contents=parts, config=config
            )
        except _CAUGHT as exc:
            raise self._error(exc) from None
        return int(result.total_tokens or 0)  # proto JSON leaves out a zero count

    # -- BatchProvider

    async def submit_batch(self, items: Sequence[tuple[str, LlmRequest]]) -> str:
        """Create a batch of inlined requests; see ``BatchProvider.submit_batch``.

        A Gemini batch is for one model: requests for different models raise ``ValueError``.
        """
        requests = check_batch_items(items, limit=_BATCH_LIMIT)
        models = sorted({r.model for r in requests.values()})
        if len(models) > 1:
            raise ValueError(f"a gemini batch is for one model; these requests name {', '.join(models)}")
        inlined = [
            types.InlinedRequest(
                model=r.model, contents=r.prompt, metadata={_CUSTOM_ID_KEY: custom_id}, config=_config(r)
            )
            for custom_id, r in requests.items()
        ]
        config = types.CreateBatchJobConfig(display_name="headrace", http_options=_batch_http_options())
        try:
            job = await self._sdk().aio.batches.create(model=models[0], src=inlined, config=config)
        except _CAUGHT as exc:
            raise self._error(exc) from None
        if not job.name:
            raise BadResponse("the created batch has no name", provider=NAME)
        self._batches.remember(job.name, requests)
        return job.name

    async def batch_status(self, batch_id: str) -> BatchStatus:
        """Get the batch; see ``BatchProvider.batch_status``.

        The API's per-state counts are not exposed by google-genai, so requests not yet answered are
        counted from the requests this provider submitted (0 for a batch submitted elsewhere).
        """
        job = await self._job(batch_id)
        answers = _answers(job)
        counts = dict.fromkeys(BATCH_COUNT_KEYS, 0)
        counts["errored"] = sum(answer.error is not None for answer in answers)
        counts["succeeded"] = len(answers) - counts["errored"]
        # The requests without an answer are still processing, or (once ended) what its end state says.
        kind = _unanswered(job)[0] if job.done else "processing"
        counts[kind] += max(0, len(self._batches.get(batch_id) or {}) - len(answers))
        return BatchStatus(batch_id, job.done, counts)

    async def batch_results(
        self, batch_id: str, requests: Mapping[str, LlmRequest] | None = None
    ) -> dict[str, LlmResponse | ProviderError]:
        """The inlined responses of an ended batch; see ``BatchProvider.batch_results``."""
        wanted = self._batches.requests(batch_id, requests)
        job = await self._job(batch_id)
        if not job.done:
            raise ProviderError(
                f"batch {batch_id} has not ended ({_state(job)}): poll batch_status until it has",
                provider=NAME,
            )
        results: dict[str, LlmResponse | ProviderError] = {}
        for answer in _answers(job):
            custom_id = (answer.metadata or {}).get(_CUSTOM_ID_KEY)
            request = wanted.get(custom_id) if custom_id is not None else None
            if custom_id is not None and request is not None:  # an answer we did not ask for is not ours
                results[custom_id] = self._inlined(request, answer)
        why = redact(_unanswered(job)[1], [self._api_key])
        for custom_id in wanted.keys() - results.keys():
            results[custom_id] = unanswered(NAME, custom_id, why)
        return results

    async def cancel_batch(self, batch_id: str) -> None:
        """Ask the API to cancel the batch; see ``BatchProvider.cancel_batch``."""
        name = _batch_name(batch_id)
        config = types.CancelBatchJobConfig(http_options=_batch_http_options())
        try:
            await self._sdk().aio.batches.cancel(name=name, config=config)
        except _CAUGHT as exc:
            raise self._error(exc) from None

    async def _job(self, batch_id: str) -> types.BatchJob:
        """The batch job as it stands now."""
        name = _batch_name(batch_id)
        config = types.GetBatchJobConfig(http_options=_batch_http_options())
        try:
            return await self._sdk().aio.batches.get(name=name, config=config)
        except _CAUGHT as exc:
            raise self._error(exc) from None

    def _inlined(self, request: LlmRequest, answer: types.InlinedResponse) -> LlmResponse | ProviderError:
        """The answer or error of one inlined response."""
        if answer.error is not None:
            code = answer.error.code
            status = _GRPC_STATUS.get(code, 500) if code is not None else 500
            message = redact(answer.error.message or f"error code {code}", [self._api_key])
            return error_for_status(NAME, status, message)
        if answer.response is None:
            return BadResponse("an inlined response has neither a response nor an error", provider=NAME)
        try:
            return dataclasses.replace(_response(request, answer.response, 0.0), batch=True)
        except BadResponse as error:
            return error

    def _error(self, exc: Exception) -> ProviderError:
        """The ``ProviderError`` of an SDK, transport or JSON exception, with the key scrubbed."""
        message = redact(str(exc) or type(exc).__name__, [self._api_key])
        if isinstance(exc, genai_errors.APIError):
            headers = getattr(exc.response, "headers", None)
            retry_after = parse_retry_after(headers) if headers is not None else None
            if retry_after is None:
                retry_after = parse_retry_delay(exc.details)
            if _KEY_REASONS & google_error_reasons(exc.details):
                return KeyRejected(message, provider=NAME, status=exc.code)
            return error_for_status(NAME, exc.code, message, retry_after)
        if isinstance(exc, _TIMEOUT_ERRORS):  # before OSError: TimeoutError is one
            return ProviderTimeout(f"no answer within the timeout ({message})", provider=NAME)
        if isinstance(exc, _CONNECTION_ERRORS):
            return ConnectionFailed(message, provider=NAME)
        # The SDK does not wrap a 200 whose body is not JSON: json.JSONDecodeError is a ValueError.
        return BadResponse(f"malformed response body: {message}", provider=NAME)

    async def close(self) -> None:
        """Close the SDK client's connections; idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await client.aio.aclose()
            client.close()
