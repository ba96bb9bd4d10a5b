"""The ``openai`` provider: the Chat Completions API through the ``openai`` SDK, for OpenAI and every
server that speaks it (vLLM, SGLang, Ollama, LiteLLM and other gateways: set ``base_url``).

Structured output (``output_schema``, or the enum of ``labels``) asks for ``response_format`` with a JSON
schema. Its root must be an object, so a non-object schema (the labels' enum) is wrapped as
``{"value": schema}`` and unwrapped on the way back; ``strict`` is set only when the schema meets the
strict mode's rules (every object closed, every property required), since OpenAI refuses a strict schema
that does not. Servers without JSON-schema output are met with fallbacks, in this order, learnt once per
provider object from the 400 that refuses the field: ``json_object`` (any JSON; the schema goes into the
prompt), then ``prompt`` (no ``response_format``: the schema or the labels are asked for in the prompt,
and the answer's JSON is repaired: code fences and surrounding prose are cut). An answer that still does
not parse comes back as text with ``parsed`` None, so ``llm_extract`` re-asks it with the reason, as it does
for an answer that fails the schema. ``structured_output`` in the config starts lower down this list.

Usage: ``prompt_tokens`` is the whole input, of which ``prompt_tokens_details.cached_tokens`` were read
from the prompt cache (``LlmResponse.cached_input_tokens``, billed at the ``cache_read`` rate);
``completion_tokens`` already includes the reasoning tokens (``completion_tokens_details.reasoning_tokens``),
which are billed as output.

Batches use the Batch API: the requests are uploaded as a JSONL file (``purpose: batch``), each line the
body ``call`` sends; ``/v1/batches`` runs it; the output and error files are read line by line, each
answer exactly as ``call`` reads its own (``operators.providers.openai_batch``).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import httpx2
import openai
from openai.types.chat import ChatCompletion

from operators.providers.base import BatchStatus, ConfigReader, LlmRequest, LlmResponse
from operators.providers.errors import (
    BadResponse,
    MissingCredentials,
    ProviderConfigError,
    ProviderError,
    RateLimited,
    RequestRejected,
    error_for_status,
    parse_rate_limit_reset,
    parse_retry_after,
    redact,
    transport_error,
)

NAME = "openai"
StructuredMode = Literal["json_schema", "json_object", "prompt"]
MODES: tuple[StructuredMode, ...] = ("json_schema", "json_object", "prompt")
"""Ways to ask for structured output, best first; a provider falls back along this list."""
_WRAPPED = "value"
_SCHEMA_NAME = "answer"
_MAX_TOKENS_FIELDS = ("max_completion_tokens", "max_tokens")
# A 400 whose message names one of these refuses the structured-output request, not the prompt: vLLM,
# SGLang, Ollama and gateways word it differently, but every one names the field or the feature.
_REFUSED_FORMAT = re.compile(r"response_format|json_schema|json_object|structured|guided", re.IGNORECASE)
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
# What can escape the SDK: its own errors, JSON errors (ValueError), and transport errors raised while
# a file is downloaded (the SDK wraps them only for the request itself).
CAUGHT = (openai.OpenAIError, ValueError, httpx2.TransportError)
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
"""OpenAI's ``finish_reason`` in Anthropic's vocabulary (``content_filter`` passes as it is)."""


def strict_compatible(schema: Any) -> bool:
    """Whether OpenAI's strict mode accepts ``schema``: every object lists its properties, requires all
    of them and forbids others (checked through properties, items, ``anyOf`` and ``$defs``)."""
    if isinstance(schema, list):
        return all(strict_compatible(s) for s in schema)
    if not isinstance(schema, Mapping):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties")
        if not isinstance(props, Mapping) or schema.get("additionalProperties") is not False:
            return False
        if sorted(schema.get("required") or []) != sorted(props):
            return False
    nested = [schema.get(k) for k in ("items", "anyOf", "prefixItems") if k in schema]
    nested += list((schema.get("properties") or {}).values()) + list((schema.get("$defs") or {}).values())
    return all(strict_compatible(s) for s in nested)


def _answer_schema(request: LlmRequest) -> tuple[dict[str, Any] | None, bool]:
    """The object schema of a structured answer, and whether it is the labels' enum wrapped."""
    schema = request.structured_schema()
    if schema is None:
        return None, False
    if schema.get("type") == "object":
        return schema, False
    wrapped = {
        "type": "object",
        "properties": {_WRAPPED: schema},
        "required": [_WRAPPED],
        "additionalProperties": False,
    }
    return wrapped, True


def _instructions(request: LlmRequest, schema: Mapping[str, Any], wrapped: bool) -> str:
    """What the prompt adds when the server cannot be asked for the schema in ``response_format``."""
    if wrapped and request.labels and request.output_schema is None:
        return "\n\nAnswer with exactly one of these labels and nothing else: " + ", ".join(request.labels)
    return (
        "\n\nAnswer with one JSON value, and nothing else, that satisfies this JSON Schema:\n"
        + json.dumps(schema, ensure_ascii=False, sort_keys=True)
    )


def request_body(request: LlmRequest, mode: StructuredMode, max_tokens_field: str) -> dict[str, Any]:
    """The Chat Completions body of ``request``: ``create``'s keywords, and a batch line's ``body``."""
    schema, wrapped = _answer_schema(request)
    prompt = request.prompt
    if schema is not None and mode != "json_schema":
        prompt += _instructions(request, request.structured_schema() or schema, wrapped)
    messages: list[dict[str, Any]] = []
    if request.system is not None:
        messages.append({"role": "system", "content": request.system})
    messages.append({"role": "user", "content": prompt})
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        max_tokens_field: request.max_tokens,
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if schema is not None and mode == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": _SCHEMA_NAME, "schema": schema, "strict": strict_compatible(schema)},
        }
    elif schema is not None and mode == "json_object" and not (wrapped and request.output_schema is None):
        body["response_format"] = {"type": "json_object"}  # labels are asked for as bare text instead
    return body


def repair_json(text: str) -> Any:
    """The JSON value in a model's text: as it is, else inside a code fence, else the outermost
    ``{...}`` or ``[...]`` span; raises ``ValueError`` when none parses."""
    candidates = [text.strip()]
    candidates += [m.strip() for m in _FENCE.findall(text)]
    for opener, closer in (("{", "}"), ("[", "]")):
        start, end = text.find(opener), text.rfind(closer)
        if 0 <= start < end:
            candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    raise ValueError("no JSON value in the answer")


def _parsed(request: LlmRequest, content: str | None, mode: StructuredMode) -> tuple[str | None, Any]:
    """(text, parsed) of a structured answer; parsed is None when the content holds no usable answer."""
    wrapped = _answer_schema(request)[1]
    labels_only = wrapped and request.labels is not None and request.output_schema is None
    if content is None:
        return None, None
    if labels_only and mode != "json_schema":
        return content, None  # a bare label: the node matches it against its labels
    try:
        value = json.loads(content) if mode == "json_schema" else repair_json(content)
    except ValueError:
        try:
            value = repair_json(content)
        except ValueError:
            return content, None  # unusable: the node says why, and llm_extract asks again
    if wrapped:
        if not isinstance(value, dict) or _WRAPPED not in value:
            return content, None
        value = value[_WRAPPED]
    if labels_only:
        return (value if isinstance(value, str) else content), value
    return None, value


def read_completion(
    request: LlmRequest,
    completion: ChatCompletion,
    mode: StructuredMode,
    latency_s: float,
    request_id: str | None,
) -> LlmResponse:
    """The ``LlmResponse`` of the completion answering ``request``; ``BadResponse`` without a choice."""
    if not completion.choices:
        raise BadResponse("the completion has no choices", provider=NAME)
    choice = completion.choices[0]
    content = choice.message.content
    if content is None and choice.message.refusal:
        content = choice.message.refusal  # a refusal is the model's answer, shown as text
    text: str | None = content
    parsed: Any = None
    if request.structured_schema() is not None:
        text, parsed = _parsed(request, content, mode)
    usage = completion.usage
    prompt_details = usage.prompt_tokens_details if usage else None
    reason = choice.finish_reason
    return LlmResponse(
        text=text,
        parsed=parsed,
        input_tokens=usage.prompt_tokens if usage else 0,
        # reasoning tokens are part of completion_tokens, and billed as output
        output_tokens=usage.completion_tokens if usage else 0,
        model=completion.model or request.model,
        latency_s=latency_s,
        stop_reason=STOP_REASONS.get(reason, reason) if reason else None,
        request_id=request_id,
        cached_input_tokens=(prompt_details.cached_tokens or 0) if prompt_details else 0,
    )


class OpenAIProvider:
    """Chat Completions via ``openai.AsyncOpenAI`` with the SDK's retries off (headrace retries itself).

    Also a ``BatchProvider`` (the Batch API: half the price, answered within 24 hours). Not a
    ``TokenCounter``: Chat Completions has no count endpoint, so estimates count locally.

    Config keys: ``api_key`` (else ``OPENAI_API_KEY``), ``base_url`` (else ``OPENAI_BASE_URL``; the SDK's
    default is OpenAI's API), ``structured_output`` (``json_schema``, the default, ``json_object`` or
    ``prompt``: where the fallbacks start), ``max_tokens_field`` (``max_completion_tokens``, the default,
    or ``max_tokens`` for servers that only know the older name). A self-hosted server that checks no key
    still needs one set (``OPENAI_API_KEY=none``, any text): the SDK sends it as a bearer token.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        allowed = frozenset({"api_key", "base_url", "structured_output", "max_tokens_field"})
        reader = ConfigReader(NAME, config or {}, allowed)
        self._api_key = reader.string("api_key", "OPENAI_API_KEY", environ=env)
        if not self._api_key:
            raise MissingCredentials(
                "no API key: set OPENAI_API_KEY or the provider config's `api_key` (a self-hosted server "
                "that checks none still needs one: any text, e.g. OPENAI_API_KEY=none)",
                provider=NAME,
            )
        self._base_url = reader.string("base_url", "OPENAI_BASE_URL", environ=env)
        mode = reader.string("structured_output", environ={}) or "json_schema"
        if mode not in MODES:
            raise ProviderConfigError(
                f"config key 'structured_output' must be one of {', '.join(MODES)}, got {mode!r}",
                provider=NAME,
            )
        self.mode: StructuredMode = mode
        field = reader.string("max_tokens_field", environ={}) or _MAX_TOKENS_FIELDS[0]
        if field not in _MAX_TOKENS_FIELDS:
            raise ProviderConfigError(
                f"config key 'max_tokens_field' must be one of {', '.join(_MAX_TOKENS_FIELDS)}, "
                f"got {field!r}",
                provider=NAME,
            )
        self.max_tokens_field = field
        # Created on first call: an httpx pool belongs to the event loop that opened it.
        self._client: openai.AsyncOpenAI | None = None
        from operators.providers.openai_batch import OpenAIBatches

        self._batches = OpenAIBatches(self)

    def __repr__(self) -> str:
        return f"OpenAIProvider(base_url={self._base_url!r}, structured_output={self.mode!r})"

    def sdk(self) -> openai.AsyncOpenAI:
        """The SDK client (made on first use, on the running loop)."""
        if self._client is None:
            self._client = openai.AsyncOpenAI(api_key=self._api_key, base_url=self._base_url, max_retries=0)
        return self._client

    async def call(self, request: LlmRequest) -> LlmResponse:
        """Send one Chat Completions request; see ``Provider.call``.

        The one exception to "never retries": a server that refuses the structured-output field is asked
        again at once, one fallback down (see the module docstring), and the provider remembers it.
        """
        while True:
            mode = self.mode
            body = request_body(request, mode, self.max_tokens_field)
            started = time.perf_counter()
            try:
                completion = await self.sdk().chat.completions.create(**body, timeout=request.timeout_s)
            except CAUGHT as exc:
                error = self.error(exc)
                if self._fall_back(request, mode, error):
                    continue
                raise error from None  # not chained: the SDK error holds the key in its request
            latency = time.perf_counter() - started
            # the SDK keeps the x-request-id header on the model (the raw-response path costs more CPU)
            request_id = getattr(completion, "_request_id", None)
            return read_completion(request, completion, mode, latency, request_id)

    def _fall_back(self, request: LlmRequest, mode: StructuredMode, error: ProviderError) -> bool:
        """Whether ``error`` refuses the structured-output request, so the next mode down is worth a try."""
        if request.structured_schema() is None or mode == "prompt":
            return False
        if not isinstance(error, RequestRejected) or error.status not in (400, 422):
            return False
        if not _REFUSED_FORMAT.search(error.message):
            return False
        if self.mode == mode:  # another row may have stepped down already
            self.mode = MODES[MODES.index(mode) + 1]
        return True

    # -- BatchProvider (the Batch API lives in openai_batch)

    async def submit_batch(self, items: Sequence[tuple[str, LlmRequest]]) -> str:
        """Upload the requests and create a batch; see ``BatchProvider.submit_batch``."""
        return await self._batches.submit(items)

    async def batch_status(self, batch_id: str) -> BatchStatus:
        """Retrieve the batch; see ``BatchProvider.batch_status``."""
        return await self._batches.status(batch_id)

    async def batch_results(
        self, batch_id: str, requests: Mapping[str, LlmRequest] | None = None
    ) -> dict[str, LlmResponse | ProviderError]:
        """Read an ended batch's output and error files; see ``BatchProvider.batch_results``."""
        return await self._batches.results(batch_id, requests)

    async def cancel_batch(self, batch_id: str) -> None:
        """Ask the API to cancel the batch; see ``BatchProvider.cancel_batch``."""
        await self._batches.cancel(batch_id)

    def redact(self, text: str) -> str:
        """``text`` without the provider's key."""
        return redact(text, [self._api_key])

    def error(self, exc: Exception) -> ProviderError:
        """The ``ProviderError`` of an SDK, transport or JSON exception, with the key scrubbed from it.

        A 429 waits what ``retry-after`` (or ``retry-after-ms``) says; without one, until the exhausted
        limit of the ``x-ratelimit-*`` headers resets (OpenAI sends those instead on most 429s).
        """
        message = self.redact(str(exc) or type(exc).__name__)
        if isinstance(exc, openai.APIStatusError):
            headers = exc.response.headers
            retry_after = parse_retry_after(headers)
            if retry_after is None and exc.status_code == 429:
                retry_after = parse_rate_limit_reset(headers)
            error = error_for_status(NAME, exc.status_code, message, retry_after)
            if isinstance(error, RateLimited) and "insufficient_quota" in message:
                # OpenAI answers an exhausted prepaid balance with a 429 too: waiting will not help
                return RequestRejected(message, provider=NAME, status=exc.status_code)
            return error
        return transport_error(NAME, openai, exc, message)

    async def close(self) -> None:
        """Close the SDK client's connections; idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
