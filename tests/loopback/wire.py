"""The two wire protocols the loopback server speaks: request checks, answers, errors, token estimates.

Everything here is a pure function of the parsed request body, so the shapes can be tested without a
socket. ``parse_anthropic`` and ``parse_gemini`` turn a body into a ``Call`` (or raise ``ErrorReply`` 400);
``anthropic_message`` and ``gemini_response`` turn a call and its answer into the provider's response JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from tests.loopback.faults import ErrorReply
from tests.loopback.schema import schema_instance

Provider = Literal["anthropic", "gemini", "openai"]
Answer = str | dict[str, Any] | list[Any]


class ResponderRequest(TypedDict):
    """What a responder is given: the parts of a request that decide an answer, for both providers."""

    provider: Provider
    model: str
    prompt: str  # the text of the last user message
    system: str
    # What the answer must satisfy: a forced tool's input_schema, or Gemini's responseSchema (OpenAPI
    # subset, upper-case types) / responseJsonSchema. None for a text answer.
    schema: dict[str, Any] | None
    tool: str | None  # the name of the tool the answer must call (Anthropic)
    body: dict[str, Any]  # the parsed request body, as sent (for a batch request: its params)


# A responder returns the answer (text, or a JSON object for structured calls), or None for the default.
Responder = Callable[[ResponderRequest], Answer | None]


@dataclass(frozen=True)
class Call:
    """One parsed inference request."""

    request: ResponderRequest
    input_tokens: int
    max_tokens: int | None
    stop_sequences: tuple[str, ...] = ()
    json_mode: bool = False  # Gemini responseMimeType application/json: the answer is JSON text
    tool_use_overhead: bool = False  # bill a tool call's output as its name and input (see parse_anthropic)
    enum_mode: bool = False  # Gemini responseMimeType text/x.enum: the answer is one enum value, unquoted


TOOL_USE_SYSTEM_TOKENS = {"forced": 313, "auto": 346}
"""Input tokens Anthropic adds to a call with tools: the tool-use system prompt of Claude 4 models, for a
``tool_choice`` of ``any``/``tool`` (forced) or ``auto``/``none`` (Anthropic's tool-use pricing page)."""


def estimate_tokens(chars: int) -> int:
    """The server's token estimate: a quarter of the characters, rounded up, at least 1."""
    return max(1, math.ceil(chars / 4))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_text(prompt: str) -> str:
    """The answer when no responder is installed: the same prompt always gets the same text."""
    return f"Loopback answer {_digest(prompt)[:12]}."


def _invalid(message: str) -> ErrorReply:
    return ErrorReply(400, message)


# ---------------------------------------------------------------- Anthropic


def _block_text(content: Any, *, everything: bool) -> str:
    """Text of a content field (a string or blocks); ``everything`` also counts non-text blocks as JSON."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content if isinstance(content, list) else []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind == "tool_result":
            parts.append(_block_text(block.get("content", ""), everything=everything))
        elif everything:
            parts.append(json.dumps(block, sort_keys=True))
    return "\n".join(parts)


def parse_anthropic(body: Any, *, tool_use_overhead: bool = False) -> Call:
    """Check a Messages API body as the real API does (the fields a client can get wrong) and parse it.

    With ``tool_use_overhead``, a call with tools is billed as Anthropic bills it: plus the tool-use system
    prompt's input tokens (:data:`TOOL_USE_SYSTEM_TOKENS`), and a tool call's output as the tool's name and
    input as JSON (without: the input JSON alone, and no system prompt)."""
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.")
    model, max_tokens, messages = body.get("model"), body.get("max_tokens"), body.get("messages")
    if not isinstance(model, str) or not model:
        raise _invalid("model: Field required")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _invalid("max_tokens: Field required (an integer >= 1)")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if not isinstance(content, (str, list)) or (isinstance(content, list) and not content):
            raise _invalid(f"messages.{i}.content: Field required (a string or a non-empty list of blocks)")
        if isinstance(content, list) and not all(isinstance(b, dict) and "type" in b for b in content):
            raise _invalid(f"messages.{i}.content: every block needs a type")
    if body.get("stream"):
        raise _invalid("stream: streaming is not supported by the loopback server")
    temperature = body.get("temperature")
    if temperature is not None and not (isinstance(temperature, (int, float)) and 0 <= temperature <= 1):
        raise _invalid("temperature: Input should be between 0 and 1")
    stop_sequences = body.get("stop_sequences") or []
    if not isinstance(stop_sequences, list) or not all(isinstance(s, str) for s in stop_sequences):
        raise _invalid("stop_sequences: Input should be a list of strings")

    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise _invalid("tools: Input should be a list")
    schemas: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise _invalid(f"tools.{i}.name: Field required")
        if tool.get("type", "custom") == "custom":  # server tools (web search, ...) carry no schema
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                raise _invalid(f"tools.{i}.input_schema: Input should be an object schema (type: object)")
            schemas[tool["name"]] = schema
    tool_name = _forced_tool(body.get("tool_choice"), tools, schemas)

    system = _block_text(body.get("system") or "", everything=False)
    users = [m for m in messages if m["role"] == "user"]
    last_user = users[-1] if users else messages[-1]
    counted = system + "".join(_block_text(m["content"], everything=True) for m in messages)
    overhead = 0
    if tools:
        counted += json.dumps(tools, sort_keys=True)
        choice = body.get("tool_choice") or {}
        if tool_use_overhead:
            overhead = TOOL_USE_SYSTEM_TOKENS["forced" if choice.get("type") in ("any", "tool") else "auto"]
    request: ResponderRequest = {
        "provider": "anthropic",
        "model": model,
        "prompt": _block_text(last_user["content"], everything=False),
        "system": system,
        "schema": schemas[tool_name] if tool_name else None,
        "tool": tool_name,
        "body": body,
    }
    tokens = estimate_tokens(len(counted)) + overhead
    return Call(request, tokens, max_tokens, tuple(stop_sequences), tool_use_overhead=tool_use_overhead)


def _forced_tool(choice: Any, tools: list[Any], schemas: dict[str, dict[str, Any]]) -> str | None:
    """The tool the answer must call: ``tool`` names it, ``any`` means the first one; else a text answer."""
    if choice is None:
        return None
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise _invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    if choice["type"] in ("any", "tool") and not tools:
        raise _invalid("tool_choice: tools must be given when tool_choice is 'any' or 'tool'")
    if choice["type"] == "tool":
        if choice.get("name") not in schemas:
            raise _invalid(f"tool_choice.name: no tool named {choice.get('name')!r} in tools")
        return str(choice["name"])
    return next(iter(schemas)) if choice["type"] == "any" and schemas else None


def _cut(
    text: str, max_tokens: int | None, stops: tuple[str, ...]
) -> tuple[str, int, str | None, str | None]:
    """Apply stop sequences and max_tokens: (text, output tokens, why it stopped early, stop sequence)."""
    hits = [(text.find(s), s) for s in stops if s and s in text]
    if hits:
        at, stop = min(hits)
        return text[:at], estimate_tokens(at), "stop_sequence", stop
    tokens = estimate_tokens(len(text))
    if max_tokens is not None and tokens > max_tokens:
        return text[: max_tokens * 4], max_tokens, "max_tokens", None
    return text, tokens, None, None


def anthropic_message(call: Call, answer: Answer, message_id: str) -> dict[str, Any]:
    """A Message object answering ``call`` (a ``tool_use`` block when a tool is forced)."""
    request = call.request
    stop_sequence: str | None = None
    if request["tool"] is not None:
        if not isinstance(answer, dict):
            raise ErrorReply(500, "loopback responder: a forced tool needs a JSON object answer")
        # with the overhead billed, the tool call as the model writes it: the tool's name and its input
        written = {"name": request["tool"], "input": answer} if call.tool_use_overhead else answer
        output_tokens = estimate_tokens(len(json.dumps(written)))
        # The input stays whole even when max_tokens is exceeded: the stop_reason tells the client.
        limit = call.max_tokens if call.max_tokens is not None else output_tokens
        stop_reason = "max_tokens" if output_tokens > limit else "tool_use"
        output_tokens = min(output_tokens, limit)
        tool_id = "toolu_" + _digest(message_id)[:24]
        content: list[dict[str, Any]] = [
            {"type": "tool_use", "id": tool_id, "name": request["tool"], "input": answer}
        ]
    else:
        text = answer if isinstance(answer, str) else json.dumps(answer)
        text, output_tokens, early, stop_sequence = _cut(text, call.max_tokens, call.stop_sequences)
        stop_reason = early or "end_turn"
        content = [{"type": "text", "text": text}]
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": request["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": call.input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_error(status: int, message: str, request_id: str | None) -> dict[str, Any]:
    """An Anthropic error body: ``{"type": "error", "error": {"type": ..., "message": ...}}``."""
    kind = _ANTHROPIC_ERRORS.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}


# ---------------------------------------------------------------- Gemini


def _field(mapping: dict[str, Any], camel: str, snake: str) -> Any:
    # The REST API accepts both spellings (proto JSON); the SDK sends camelCase.
    return mapping.get(camel, mapping.get(snake))


def _parts_text(content: Any, *, everything: bool) -> str:
    if isinstance(content, str):
        return content
    parts = content.get("parts", []) if isinstance(content, dict) else []
    texts = [
        str(p["text"]) if "text" in p else json.dumps(p, sort_keys=True)
        for p in parts
        if isinstance(p, dict) and ("text" in p or everything)
    ]
    return "\n".join(texts)


def parse_gemini(body: Any, model: str) -> Call:
    """Check a ``generateContent`` body (contents, generationConfig) and parse it."""
    if not isinstance(body, dict):
        raise _invalid("Invalid JSON payload received. The request body must be a JSON object.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _invalid("* GenerateContentRequest.contents: contents is not specified")
    for i, content in enumerate(contents):
        if (
            not isinstance(content, dict)
            or not isinstance(content.get("parts"), list)
            or not content["parts"]
        ):
            raise _invalid(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.")
        if content.get("role", "user") not in ("user", "model", "function", "tool"):
            raise _invalid(f"* GenerateContentRequest.contents[{i}].role: unknown role {content['role']!r}")
    config = _field(body, "generationConfig", "generation_config") or {}
    if not isinstance(config, dict):
        raise _invalid("* GenerateContentRequest.generation_config: must be an object")
    max_tokens = _field(config, "maxOutputTokens", "max_output_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise _invalid(
            "* GenerateContentRequest.generation_config.max_output_tokens: must be a positive integer"
        )
    mime = _field(config, "responseMimeType", "response_mime_type") or "text/plain"
    schema = _field(config, "responseJsonSchema", "response_json_schema") or _field(
        config, "responseSchema", "response_schema"
    )
    if schema is not None and mime not in ("application/json", "text/x.enum"):
        raise _invalid(
            "* GenerateContentRequest.generation_config.response_mime_type: a response schema needs "
            "response_mime_type application/json or text/x.enum"
        )
    stops = _field(config, "stopSequences", "stop_sequences") or []

    system = _parts_text(_field(body, "systemInstruction", "system_instruction") or "", everything=False)
    users = [c for c in contents if c.get("role", "user") == "user"]
    counted = system + "".join(_parts_text(c, everything=True) for c in contents)
    if body.get("tools"):
        counted += json.dumps(body["tools"], sort_keys=True)
    request: ResponderRequest = {
        "provider": "gemini",
        "model": model,
        "prompt": _parts_text(users[-1] if users else contents[-1], everything=False),
        "system": system,
        "schema": schema,
        "tool": None,
        "body": body,
    }
    return Call(
        request,
        estimate_tokens(len(counted)),
        max_tokens,
        tuple(stops),
        json_mode=mime == "application/json",
        enum_mode=mime == "text/x.enum",
    )


def gemini_response(call: Call, answer: Answer, response_id: str) -> dict[str, Any]:
    """A GenerateContentResponse with one candidate answering ``call``."""
    # In JSON mode a string answer is a JSON string: resolve_answer already parsed JSON text.
    text = answer if isinstance(answer, str) and not call.json_mode else json.dumps(answer)
    text, output_tokens, early, _ = _cut(text, call.max_tokens, call.stop_sequences)
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": "MAX_TOKENS" if early == "max_tokens" else "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": call.input_tokens,
            "candidatesTokenCount": output_tokens,
            "totalTokenCount": call.input_tokens + output_tokens,
        },
        "modelVersion": call.request["model"],
        "responseId": response_id,
    }


_GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def gemini_error(
    status: int, message: str, retry_after_s: float | None = None, reason: str | None = None
) -> dict[str, Any]:
    """A Google API error body: ``{"error": {"code": ..., "message": ..., "status": ..., "details": [...]}}``,
    with a ``RetryInfo`` detail for ``retry_after_s`` and an ``ErrorInfo`` one for ``reason`` (Google
    answers a wrong key with 400 INVALID_ARGUMENT, reason ``API_KEY_INVALID``)."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _GEMINI_STATUSES.get(status, "UNKNOWN"),
    }
    details: list[dict[str, Any]] = []
    if reason is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        )
    if retry_after_s is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after_s:g}s"}
        )
    if details:
        error["details"] = details
    return {"error": error}


# ---------------------------------------------------------------- answers


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def resolve_answer(call: Call, responder: Responder | None) -> Answer:
    """The answer to ``call``: the responder's, else a deterministic text or a schema instance.

    The default (no responder, or it returned None) is ``default_text`` for text, the first enum value
    in Gemini enum mode, and ``schema_instance`` for a forced tool or JSON mode. For a structured call a
    string answer that is JSON text is parsed; a non-JSON string stays a string (Gemini JSON mode sends it
    as a JSON string; a forced Anthropic tool refuses it with a 500 that names the responder).
    """
    request = call.request
    structured = request["schema"] is not None or call.json_mode
    raw = responder(request) if responder is not None else None
    if raw is None:
        if call.enum_mode and request["schema"] and request["schema"].get("enum"):
            return str(request["schema"]["enum"][0])
        if not structured or call.enum_mode:
            return default_text(request["prompt"])
        if request["schema"] is None:
            return {"answer": default_text(request["prompt"])}
        return schema_instance(request["schema"], seed=_digest(request["prompt"])[:8])
    if structured and not call.enum_mode and isinstance(raw, str) and _is_json(raw):
        return json.loads(raw)
    return raw
