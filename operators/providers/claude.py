"""The ``anthropic`` provider: Claude through the ``anthropic`` SDK's async Messages API.

Structured output forces a single tool whose ``input_schema`` is the output schema; the tool call's
``input`` is the answer. Tools must take an object, so a non-object schema (e.g. the enum of ``labels``)
is wrapped as ``{"value": schema}`` and unwrapped on the way back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import anthropic

from operators.providers.base import ConfigReader, LlmRequest, LlmResponse
from operators.providers.errors import (
    BadResponse,
    ConnectionFailed,
    ProviderConfigError,
    ProviderError,
    ProviderTimeout,
    error_for_status,
    parse_retry_after,
    redact,
)

NAME = "anthropic"
_TOOL = "record_answer"
_WRAPPED = "value"


class AnthropicProvider:
    """Claude via ``anthropic.AsyncAnthropic`` with the SDK's retries off (headrace retries itself).

    Config keys (each falls back to the SDK's own variable): ``api_key`` (``ANTHROPIC_API_KEY``),
    ``base_url`` (``ANTHROPIC_BASE_URL``).
    """

    def __init__(self, config: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        reader = ConfigReader(NAME, config or {}, frozenset({"api_key", "base_url"}))
        self._api_key = reader.string("api_key", "ANTHROPIC_API_KEY", environ=env)
        if not self._api_key:
            raise ProviderConfigError(
                "no API key: set ANTHROPIC_API_KEY or the provider config's `api_key`", provider=NAME
            )
        self._base_url = reader.string("base_url", "ANTHROPIC_BASE_URL", environ=env)
        # Created on first call: an httpx pool belongs to the event loop that opened it, and providers
        # are often built outside any loop (at compile time, in an actor's constructor).
        self._client: anthropic.AsyncAnthropic | None = None

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
        schema = request.structured_schema()
        wrapped = schema is not None and schema.get("type") != "object"
        params: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": "user", "content": request.prompt}],
            "timeout": request.timeout_s,
        }
        if request.system is not None:
            params["system"] = request.system
        if request.temperature is not None:
            # anthropic 2.x dropped sampling parameters from ``create``'s signature; the Messages API
            # still reads ``temperature`` (range 0-1), so it goes in the body directly.
            params["extra_body"] = {"temperature": request.temperature}
        if schema is not None:
            input_schema = (
                {"type": "object", "properties": {_WRAPPED: schema}, "required": [_WRAPPED]}
                if wrapped
                else schema
            )
            params["tools"] = [
                {"name": _TOOL, "description": "Record the answer.", "input_schema": input_schema}
            ]
            params["tool_choice"] = {"type": "tool", "name": _TOOL}
        started = time.perf_counter()
        try:
            message = await self._sdk().messages.create(**params)
        except (anthropic.AnthropicError, ValueError) as exc:
            raise self._error(exc) from None  # not chained: the SDK error holds the key in its request
        latency = time.perf_counter() - started

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
            if wrapped:
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
            latency_s=latency,
            stop_reason=message.stop_reason,
            request_id=getattr(message, "_request_id", None),
        )

    def _error(self, exc: anthropic.AnthropicError | ValueError) -> ProviderError:
        """The ``ProviderError`` of an SDK (or JSON) exception, with the key scrubbed from its message."""
        message = redact(str(exc) or type(exc).__name__, [self._api_key])
        if isinstance(exc, anthropic.APIStatusError):
            retry_after = parse_retry_after(exc.response.headers)
            return error_for_status(NAME, exc.status_code, message, retry_after)
        if isinstance(exc, anthropic.APITimeoutError):
            return ProviderTimeout(message, provider=NAME)
        if isinstance(exc, anthropic.APIConnectionError):
            return ConnectionFailed(message, provider=NAME)
        if isinstance(exc, (anthropic.APIResponseValidationError, ValueError)):
            # The SDK does not wrap a 200 whose body is not JSON: json.JSONDecodeError is a ValueError.
            return BadResponse(f"malformed response body: {message}", provider=NAME)
        return ProviderError(f"{type(exc).__name__}: {message}", provider=NAME)

    async def close(self) -> None:
        """Close the SDK client's connections; idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
