"""What each pipeline_ex step type becomes: the ``kwargs`` of its ``call`` node, from the step's fields.

Facts taken from pipeline_ex's step modules (``lib/pipeline/step/*.ex``) and its providers, not from its
v2 documentation where the two differ:

- ``claude`` sends ``claude_options`` (``model``, ``system_prompt``, ``append_system_prompt``; ``max_turns``,
  ``output_format``, ``verbose`` only shape the CLI session) and answers ``{text, success, cost, model}``;
- ``claude_smart``/``claude_extract``/``claude_batch``/``claude_robust`` merge an OptionBuilder preset
  (``preset``, else ``defaults.claude_preset``, else ``development``; ``analysis`` for extract) under the
  step's ``claude_options``: the preset gives the model (``sonnet``/``opus``) and the system prompt;
- ``gemini`` sends ``model`` (default ``gemini-2.5-flash-lite-preview-06-17``) and ``token_budget``
  (``temperature``, ``max_output_tokens``); ``gemini_instructor`` always asks for the object
  ``{text, analysis, summary}`` at temperature 0.7 and 2048 output tokens;
- ``defaults.claude_options``, ``gemini_model`` and ``gemini_token_budget`` fill steps' settings as
  ``Config.apply_defaults`` does; ``defaults.output_dir`` is where ``output_to_file`` writes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["CLAUDE_MODELS", "PRESETS", "claude_call", "gemini_call", "prompt_parts"]

CLAUDE_MODELS = {"sonnet": "claude-sonnet-4-5", "opus": "claude-opus-4-5", "haiku": "claude-haiku-4-5"}
"""Claude Code's model aliases, which pipeline_ex passes on, as the models they name today."""
_DEFAULT_CLAUDE = "claude-sonnet-4-5"  # the Claude CLI's default when pipeline_ex names no model
_GEMINI_RETIRED = {"gemini-2.5-flash-lite-preview-06-17": "gemini-2.5-flash-lite"}
CLAUDE_PROVIDER = "${PIPELINE_EX_CLAUDE_PROVIDER:-anthropic}"
GEMINI_PROVIDER = "${PIPELINE_EX_GEMINI_PROVIDER:-gemini}"

PRESETS: Mapping[str, Mapping[str, Any]] = {
    "development": {
        "model": "sonnet",
        "system_prompt": "You are a helpful development assistant. "
        "Focus on writing clean, maintainable code.",
    },
    "production": {
        "model": "opus",
        "system_prompt": "You are a production assistant. Prioritize safety and reliability.",
    },
    "analysis": {
        "model": "opus",
        "system_prompt": "You are a code analysis expert. Provide detailed, structured analysis with "
        "specific recommendations.",
    },
    "chat": {"system_prompt": "You are a helpful assistant. Provide clear, concise responses."},
    "test": {"system_prompt": "You are a test assistant. Provide predictable, structured responses."},
}
"""OptionBuilder's presets: the two settings of each that change an answer (its tool lists are agent
settings, and its retry and timeout settings are headrace's own)."""

# claude_options that only shape the Claude CLI session, which a single call has no use for
CLAUDE_SESSION_OPTIONS = frozenset(
    {
        "max_turns",
        "output_format",
        "verbose",
        "debug_mode",
        "telemetry_enabled",
        "cost_tracking",
        "cwd",
        "fallback_model",
        "retry_config",
        "timeout_ms",
        "pass_through_streaming",
        "async_streaming",
        "stream_handler",
        "stream_buffer_size",
        "preset",
    }
)
# claude_options that make a step an agent with tools
CLAUDE_AGENT_OPTIONS = frozenset(
    {
        "allowed_tools",
        "disallowed_tools",
        "mcp_servers",
        "permission_mode",
        "permission_prompt_tool",
        "tools",
        "hooks",
        "agents",
        "skills",
        "session_id",
        "resume",
        "continue_conversation",
    }
)


def claude_model(name: Any) -> str:
    """A pipeline_ex Claude model (an alias or a full id) as a model headrace prices."""
    if not name:
        return _DEFAULT_CLAUDE
    return CLAUDE_MODELS.get(str(name), str(name))


def claude_call(options: Mapping[str, Any], preset: str | None) -> dict[str, Any]:
    """The LLM request settings of a Claude step from its merged ``claude_options`` (and preset)."""
    merged = {**dict(PRESETS.get(preset or "", {})), **dict(options)} if preset else dict(options)
    call: dict[str, Any] = {"provider": CLAUDE_PROVIDER, "model": claude_model(merged.get("model"))}
    system = merged.get("system_prompt")
    if merged.get("append_system_prompt"):
        system = f"{system}\n{merged['append_system_prompt']}" if system else merged["append_system_prompt"]
    if system:
        call["system"] = str(system)
    if merged.get("timeout_ms"):
        call["timeout_s"] = float(merged["timeout_ms"]) / 1000
    return call


def gemini_call(step: Mapping[str, Any], defaults: Mapping[str, Any], instructor: bool) -> dict[str, Any]:
    """The LLM request settings of a ``gemini`` or ``gemini_instructor`` step."""
    fallback = "gemini-2.5-flash" if instructor else "gemini-2.5-flash-lite-preview-06-17"
    model = str(step.get("model") or defaults.get("gemini_model") or fallback)
    call: dict[str, Any] = {"provider": GEMINI_PROVIDER, "model": _GEMINI_RETIRED.get(model, model)}
    if instructor:
        call.update(temperature=0.7, max_tokens=2048, output_schema=_INSTRUCTOR_SCHEMA)
    else:
        budget = step.get("token_budget") or defaults.get("gemini_token_budget") or {}
        if isinstance(budget, Mapping):
            if budget.get("temperature") is not None:
                call["temperature"] = float(budget["temperature"])
            if budget.get("max_output_tokens"):
                call["max_tokens"] = int(budget["max_output_tokens"])
    if step.get("timeout_ms"):
        call["timeout_s"] = float(step["timeout_ms"]) / 1000
    return call


_INSTRUCTOR_SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "description": "The response text"},
        "analysis": {"type": "string", "description": "Analysis or reasoning"},
        "summary": {"type": "string", "description": "Brief summary"},
    },
    "required": ["text"],
}


def prompt_parts(value: Any) -> list[dict[str, Any]]:
    """A step's ``prompt`` as a list of parts (a plain string is one static part)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "static", "content": value}]
    return [plain(p) for p in value]


def plain(value: Any) -> Any:
    """A ruamel value as plain JSON data (comments and positions dropped)."""
    return json.loads(json.dumps(value, default=str))
