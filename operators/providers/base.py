"""The provider interface: one request value in, one response value out, one async call.

A provider hides an SDK (or no SDK: ``offline``, ``replay``) behind ``Provider.call``. It never retries:
the runtime retries, because retries must share rate limits and budgets across every worker of a cluster,
which no single SDK client can see. Failures are ``operators.providers.errors.ProviderError`` subclasses.

Requests and responses are frozen dataclasses of JSON values only, so they pickle cheaply into Ray tasks,
serialise into replay files and caches, and hash stably (``LlmRequest.fingerprint``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from operators.providers.errors import ProviderConfigError

# Stop reasons are normalised to Anthropic's vocabulary so operators can detect truncation uniformly;
# a provider-specific reason that has no equivalent is passed on in lower case (e.g. Gemini's "safety").
StopReason = str
Source = Literal["live", "offline", "replay"]


@dataclass(frozen=True, slots=True)
class LlmRequest:
    """One call: a single user message, with an optional system prompt and structured-output schema.

    ``output_schema`` is a JSON Schema the answer must satisfy (returned as ``LlmResponse.parsed``);
    ``labels`` asks for exactly one of a closed list (returned as text, and as ``parsed`` too). When both
    are given, the schema wins. ``timeout_s`` bounds one attempt and is not part of the fingerprint.
    """

    provider: str
    model: str
    prompt: str
    max_tokens: int = 1024
    system: str | None = None
    temperature: float | None = None
    output_schema: Mapping[str, Any] | None = None
    labels: tuple[str, ...] | None = None
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.labels is not None:
            # Callers pass lists from YAML; a tuple keeps the request immutable and hashable in shape.
            object.__setattr__(self, "labels", tuple(self.labels))
            if len(self.labels) == 0:
                raise ValueError("labels must not be empty")

    def structured_schema(self) -> dict[str, Any] | None:
        """The JSON Schema a structured answer must satisfy: ``output_schema``, or an enum of ``labels``."""
        if self.output_schema is not None:
            return dict(self.output_schema)
        if self.labels:
            return {"type": "string", "enum": list(self.labels)}
        return None

    def fingerprint(self) -> str:
        """A stable hex digest of everything that decides the answer (not ``timeout_s``).

        Used as the replay key (and later the cache key): the same request gives the same digest in every
        process and Python version, because it hashes canonical JSON, never ``hash()`` or pickle.
        """
        identity = {
            "provider": self.provider,
            "model": self.model,
            "system": self.system,
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "output_schema": self.output_schema,
            "labels": list(self.labels) if self.labels is not None else None,
        }
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """The request as JSON values (labels as a list)."""
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels) if self.labels is not None else None
        data["output_schema"] = dict(self.output_schema) if self.output_schema is not None else None
        return data


@dataclass(frozen=True, slots=True)
class LlmResponse:
    """The answer to one ``LlmRequest``.

    ``text`` is the answer's text (None when the provider answered only structured output); ``parsed``
    is the structured answer (an object for ``output_schema``, the label for ``labels``), else None.
    Token counts are the provider's own (estimated for ``offline``). ``source`` says whether a provider
    was paid for this answer (``live``) or not (``offline``, ``replay``).
    """

    text: str | None
    parsed: Any
    input_tokens: int
    output_tokens: int
    model: str
    latency_s: float
    stop_reason: StopReason | None = None
    request_id: str | None = None
    source: Source = "live"

    def to_json(self) -> dict[str, Any]:
        """The response as JSON values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LlmResponse:
        """The response written by ``to_json`` (unknown keys are an error, not silently dropped)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown response fields: {', '.join(sorted(unknown))}")
        return cls(**data)


@runtime_checkable
class Provider(Protocol):
    """An LLM backend: ``call`` answers one request; ``close`` releases connections.

    Both are coroutines and must be awaited on the event loop the provider was first used on (SDK clients
    pool connections per loop). ``call`` raises only ``ProviderError`` subclasses and never retries.
    """

    async def call(self, request: LlmRequest) -> LlmResponse:
        """Answer one request."""
        ...

    async def close(self) -> None:
        """Release the provider's connections; idempotent."""
        ...


@dataclass(frozen=True)
class ConfigReader:
    """Reads a provider's config mapping, refusing unknown keys so that a typo is not silently ignored."""

    provider: str
    config: Mapping[str, Any] = field(default_factory=dict)
    allowed: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.config) - self.allowed
        if unknown:
            raise ProviderConfigError(
                f"unknown config keys {sorted(unknown)}; allowed: {sorted(self.allowed)}",
                provider=self.provider,
            )

    def string(self, key: str, *env_vars: str, environ: Mapping[str, str]) -> str | None:
        """The config value of ``key``, else the first set environment variable, else None."""
        value = self.config.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise ProviderConfigError(f"config key {key!r} must be a string", provider=self.provider)
            return value
        for name in env_vars:
            if environ.get(name):
                return environ[name]
        return None

    def number(self, key: str, default: float) -> float:
        """A non-negative number from the config."""
        value = self.config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ProviderConfigError(
                f"config key {key!r} must be a non-negative number", provider=self.provider
            )
        return float(value)
