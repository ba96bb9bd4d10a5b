"""The ``gemini`` provider: Gemini through ``google-genai``'s async ``generate_content``.

Structured output uses JSON mode (``response_mime_type="application/json"`` with ``response_json_schema``);
the answer's text is parsed into ``LlmResponse.parsed``. google-genai has two hidden retry paths, both off
here: tenacity (off when ``retry_options.attempts`` is 1) and an implicit 1-10 s sleep-and-retry on
connection errors (skipped whenever ``retry_options`` is set at all).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from operators.providers.base import ConfigReader, LlmRequest, LlmResponse
from operators.providers.errors import (
    BadResponse,
    ConnectionFailed,
    ProviderConfigError,
    ProviderError,
    ProviderTimeout,
    error_for_status,
    parse_retry_after,
    parse_retry_delay,
    redact,
)

NAME = "gemini"
_STOP_REASONS = {"STOP": "end_turn", "MAX_TOKENS": "max_tokens"}


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


class GeminiProvider:
    """Gemini via ``genai.Client(...).aio`` with the SDK's retries off (headrace retries itself).

    Config keys: ``api_key`` (else ``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``), ``base_url`` (else
    ``GOOGLE_GEMINI_BASE_URL``), ``api_version`` (the SDK's default, ``v1``, when absent).
    """

    def __init__(self, config: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        reader = ConfigReader(NAME, config or {}, frozenset({"api_key", "base_url", "api_version"}))
        self._api_key = reader.string("api_key", "GEMINI_API_KEY", "GOOGLE_API_KEY", environ=env)
        if not self._api_key:
            raise ProviderConfigError(
                "no API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) or the provider config's `api_key`",
                provider=NAME,
            )
        self._base_url = reader.string("base_url", "GOOGLE_GEMINI_BASE_URL", environ=env)
        self._api_version = reader.string("api_version", environ={})
        self._client: genai.Client | None = None

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
        schema = request.structured_schema()
        config = types.GenerateContentConfig(
            system_instruction=request.system,
            max_output_tokens=request.max_tokens,
            temperature=request.temperature,
            # HttpOptions.timeout is in milliseconds.
            http_options=types.HttpOptions(timeout=max(1, round(request.timeout_s * 1000))),
        )
        if schema is not None:
            config.response_mime_type = "application/json"
            config.response_json_schema = schema
        started = time.perf_counter()
        try:
            response = await self._sdk().aio.models.generate_content(
                model=request.model, contents=request.prompt, config=config
            )
        except _CAUGHT as exc:
            raise self._error(exc) from None  # not chained: SDK errors keep the request and its headers
        latency = time.perf_counter() - started

        candidate = response.candidates[0] if response.candidates else None
        reason = candidate.finish_reason if candidate is not None else None
        stop_reason = None if reason is None else _STOP_REASONS.get(reason.name, reason.name.lower())
        text = self._text(response)
        parsed: Any = None
        if schema is not None:
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
            output_tokens=(usage.candidates_token_count or 0) if usage else 0,
            model=response.model_version or request.model,
            latency_s=latency,
            stop_reason=stop_reason,
            request_id=response.response_id,
        )

    @staticmethod
    def _text(response: types.GenerateContentResponse) -> str | None:
        """The concatenated text parts of the first candidate (``response.text`` warns on other parts)."""
        candidate = response.candidates[0] if response.candidates else None
        parts = candidate.content.parts if candidate and candidate.content else None
        texts = [p.text for p in parts or [] if p.text is not None and not p.thought]
        return "".join(texts) if texts else None

    def _error(self, exc: Exception) -> ProviderError:
        """The ``ProviderError`` of an SDK, transport or JSON exception, with the key scrubbed."""
        message = redact(str(exc) or type(exc).__name__, [self._api_key])
        if isinstance(exc, genai_errors.APIError):
            headers = getattr(exc.response, "headers", None)
            retry_after = parse_retry_after(headers) if headers is not None else None
            if retry_after is None:
                retry_after = parse_retry_delay(exc.details)
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
