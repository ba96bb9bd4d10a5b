"""The Chat Completions wire protocol as the loopback server speaks it: request checks, answers, errors.

Pure functions of the parsed body, like ``wire`` for Anthropic and Gemini. ``parse_openai`` checks what a
client can get wrong (as the real API does: the model, the messages, one token limit, the temperature's
range, a ``response_format`` whose JSON schema has an object root and, when ``strict``, closed objects
that require every property) and returns a ``Call``; ``openai_completion`` renders the answer as a
ChatCompletion, with ``usage`` counting cached input and reasoning tokens the way OpenAI does
(``cached_tokens`` inside ``prompt_tokens``, ``reasoning_tokens`` inside ``completion_tokens``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from tests.loopback.faults import ErrorReply
from tests.loopback.wire import Answer, Call, ResponderRequest, _cut, estimate_tokens

_ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass(frozen=True)
class OpenAIUsage:
    """Extra usage the server reports on every Chat Completions answer (both default to 0):
    ``cached_tokens`` of the prompt (at most all of it) and ``reasoning_tokens`` added to the output."""

    cached_tokens: int = 0
    reasoning_tokens: int = 0


def _invalid(message: str, param: str | None = None) -> ErrorReply:
    return ErrorReply(400, message if param is None else f"{message} (param: {param})")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return "\n".join(str(p.get("text", "")) for p in parts if isinstance(p, dict) and p.get("type") == "text")


def _strict_problem(schema: Any, where: str = "schema") -> str | None:
    """Why OpenAI's strict mode would refuse ``schema``, or None."""
    if isinstance(schema, list):
        return next((p for i, s in enumerate(schema) if (p := _strict_problem(s, f"{where}[{i}]"))), None)
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False:
            return f"In context={where}, 'additionalProperties' is required to be supplied and to be false"
        if sorted(schema.get("required") or []) != sorted(props):
            return f"In context={where}, 'required' is required to include every key in properties"
    for key in ("items", "anyOf", "prefixItems"):
        if key in schema and (problem := _strict_problem(schema[key], f"{where}.{key}")):
            return problem
    for group in ("properties", "$defs"):
        for name, sub in (schema.get(group) or {}).items():
            if problem := _strict_problem(sub, f"{where}.{group}.{name}"):
                return problem
    return None


def parse_openai(body: Any, *, structured: bool = True) -> Call:
    """Check a Chat Completions body and parse it; ``structured=False`` refuses ``response_format``
    other than text, as servers without structured output do."""
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.")
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not model:
        raise _invalid("you must provide a model parameter", "model")
    if not isinstance(messages, list) or not messages:
        raise _invalid("[] is too short - 'messages'", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise _invalid(f"Invalid value for 'messages[{i}].role'", f"messages[{i}].role")
        if not isinstance(message.get("content"), (str, list)):
            raise _invalid(f"Missing required parameter: 'messages[{i}].content'", f"messages[{i}].content")
    if "max_tokens" in body and "max_completion_tokens" in body:
        raise _invalid("max_tokens and max_completion_tokens cannot both be set", "max_tokens")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise _invalid(
            "Invalid 'max_completion_tokens': integer below minimum value", "max_completion_tokens"
        )
    temperature = body.get("temperature")
    if temperature is not None and not (isinstance(temperature, (int, float)) and 0 <= temperature <= 2):
        raise _invalid(
            "Invalid 'temperature': decimal above maximum value. Expected a value <= 2", "temperature"
        )
    if body.get("stream"):
        raise _invalid("stream: streaming is not supported by the loopback server", "stream")
    if body.get("n", 1) != 1:
        raise _invalid("n: only one choice is supported by the loopback server", "n")
    schema, json_mode = _response_format(body.get("response_format"), structured)
    stop = body.get("stop") or []
    stops = (stop,) if isinstance(stop, str) else tuple(s for s in stop if isinstance(s, str))

    system = "\n".join(_content_text(m["content"]) for m in messages if m["role"] in ("system", "developer"))
    users = [m for m in messages if m["role"] == "user"]
    counted = "".join(_content_text(m["content"]) for m in messages)
    request: ResponderRequest = {
        "provider": "openai",
        "model": model,
        "prompt": _content_text((users[-1] if users else messages[-1])["content"]),
        "system": system,
        "schema": schema,
        "tool": None,
        "body": body,
    }
    return Call(request, estimate_tokens(len(counted)), max_tokens, stops, json_mode=json_mode)


def _response_format(fmt: Any, structured: bool) -> tuple[dict[str, Any] | None, bool]:
    """(schema, json mode) of a ``response_format``."""
    if fmt is None:
        return None, False
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise _invalid("Invalid value for 'response_format.type'", "response_format.type")
    if kind == "text":
        return None, False
    if not structured:
        raise _invalid(f"response_format of type {kind!r} is not supported by this server", "response_format")
    if kind == "json_object":
        return None, True
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise _invalid("Missing required parameter: 'response_format.json_schema.name'", "response_format")
    schema = spec.get("schema")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise _invalid(
            "Invalid schema for response_format 'answer': schema must be a JSON Schema of 'type: \"object\"'",
            "response_format",
        )
    if spec.get("strict") and (problem := _strict_problem(schema)):
        raise _invalid(f"Invalid schema for response_format {spec['name']!r}: {problem}", "response_format")
    return schema, True


def openai_completion(call: Call, answer: Answer, completion_id: str, usage: OpenAIUsage) -> dict[str, Any]:
    """A ChatCompletion with one choice answering ``call``."""
    text = answer if isinstance(answer, str) and not call.json_mode else json.dumps(answer)
    text, output_tokens, early, _ = _cut(text, call.max_tokens, call.stop_sequences)
    cached = min(usage.cached_tokens, call.input_tokens)
    completion_tokens = output_tokens + usage.reasoning_tokens
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.request["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": "length" if early == "max_tokens" else "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": call.input_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": call.input_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        },
        "system_fingerprint": "fp_loopback",
    }


_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def openai_error(status: int, message: str) -> dict[str, Any]:
    """An OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
    kind, code = _TYPES.get(status, ("server_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def reset_duration(seconds: float) -> str:
    """A wait as OpenAI writes it in ``x-ratelimit-reset-*``: ``"120ms"``, ``"1.5s"``, ``"6m0s"``."""
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:g}s" if minutes else f"{rest:g}s"
