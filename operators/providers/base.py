"""The provider interface: one request value in, one response value out, one async call.

A provider hides an SDK (or no SDK: ``offline``, ``replay``) behind ``Provider.call``. It never retries:
the runtime retries, because retries must share rate limits and budgets across every worker of a cluster,
which no single SDK client can see. Failures are ``operators.providers.errors.ProviderError`` subclasses.

Requests and responses are frozen dataclasses of JSON values only, so they pickle cheaply into Ray tasks,
serialise into replay files and caches, and hash stably (``LlmRequest.fingerprint``).

Some providers also take many requests as one asynchronous batch, answered within hours at a discount
(``BatchProvider``). It is opt-in: a runtime checks ``isinstance(provider, BatchProvider)`` and otherwise
calls ``call`` per request. Likewise, some count a request's input tokens without answering it
(``TokenCounter``); without one, a caller estimates the count itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from operators.providers.errors import ProviderConfigError, ProviderError

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

        Used as the replay and cache key: the same request gives the same digest in every process and
        Python version, because it hashes canonical JSON (``identity_json``), never ``hash()`` or pickle.
        """
        return hashlib.sha256(self.identity_json().encode("utf-8")).hexdigest()

    def identity_json(self) -> str:
        """The canonical JSON of everything that decides the answer: what ``fingerprint`` hashes, and
        what ``identity_of`` gives for this request's ``to_json`` (so a stored request can be compared)."""
        return identity_of(self.to_json())

    def to_json(self) -> dict[str, Any]:
        """The request as JSON values (labels as a list)."""
        # Built by hand: dataclasses.asdict deep-copies every value, a third of a cache hit's CPU.
        return {
            "provider": self.provider,
            "model": self.model,
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            "system": self.system,
            "temperature": self.temperature,
            "output_schema": dict(self.output_schema) if self.output_schema is not None else None,
            "labels": list(self.labels) if self.labels is not None else None,
            "timeout_s": self.timeout_s,
        }


_NOT_IDENTITY = frozenset({"timeout_s"})


def identity_of(request_json: Mapping[str, Any]) -> str:
    """The canonical JSON of a request's ``to_json`` (or a stored copy of it) without ``timeout_s``.

    Sorted keys and fixed separators make it the same text in every process for equal requests; a tuple
    and a list of the same items give the same text, so a fresh request matches its stored JSON.
    """
    identity = {k: v for k, v in request_json.items() if k not in _NOT_IDENTITY}
    return json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class LlmResponse:
    """The answer to one ``LlmRequest``.

    ``text`` is the answer's text (None when the provider answered only structured output); ``parsed``
    is the structured answer (an object for ``output_schema``, the label for ``labels``), else None.
    Token counts are the provider's own (estimated for ``offline``). ``source`` says whether a provider
    was paid for this answer (``live``) or not (``offline``, ``replay``); ``batch`` says it was paid at the
    provider's batch price (an answer from ``BatchProvider.batch_results``). ``input_tokens`` counts every
    input token, ``cached_input_tokens`` the part of them read from the provider's prompt cache, and
    ``output_tokens`` every billed output token, reasoning (thinking) tokens included.
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
    batch: bool = False  # with a default: JSON written before the field existed still loads
    cached_input_tokens: int = 0
    """Of ``input_tokens``, those read from the provider's prompt cache (billed at ``cache_read``)."""

    def to_json(self) -> dict[str, Any]:
        """The response as JSON values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LlmResponse:
        """The response written by ``to_json`` (unknown keys are an error, not silently dropped)."""
        unknown = data.keys() - _RESPONSE_FIELDS
        if unknown:
            raise ValueError(f"unknown response fields: {', '.join(sorted(unknown))}")
        return cls(**data)


_RESPONSE_FIELDS = frozenset(f.name for f in dataclasses.fields(LlmResponse))


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


# Anthropic's rule for custom ids, the strictest of the batch APIs: an id that passes it is legal everywhere.
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
BATCH_COUNT_KEYS = ("processing", "succeeded", "errored", "canceled", "expired")


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """Where a submitted batch stands.

    ``ended`` is true once no request is still processing (all answered, canceled or expired): only then
    can ``BatchProvider.batch_results`` be read. ``counts`` has every key of ``BATCH_COUNT_KEYS``
    (``processing``, ``succeeded``, ``errored``, ``canceled``, ``expired``): requests per state.
    """

    batch_id: str
    ended: bool
    counts: Mapping[str, int]


@runtime_checkable
class BatchProvider(Protocol):
    """A provider that also answers many requests as one asynchronous batch, at the provider's batch price.

    The lifecycle is submit, poll ``batch_status`` until ``ended``, then read ``batch_results``;
    ``cancel_batch`` stops a batch early. Results are keyed by the caller's custom ids, which must match
    ``^[a-zA-Z0-9_-]{1,64}$`` and be unique within a batch (checked before anything is sent). Like
    ``Provider.call``, every method raises only ``ProviderError`` for a failed exchange and never retries.
    """

    async def submit_batch(self, items: Sequence[tuple[str, LlmRequest]]) -> str:
        """Send ``(custom id, request)`` pairs as one batch; returns the provider's batch id.

        Raises ``ValueError`` (before any HTTP) for an empty batch, a bad or repeated custom id, or
        requests the provider cannot put in one batch.
        """
        ...

    async def batch_status(self, batch_id: str) -> BatchStatus:
        """Where the batch stands now."""
        ...

    async def batch_results(
        self, batch_id: str, requests: Mapping[str, LlmRequest] | None = None
    ) -> dict[str, LlmResponse | ProviderError]:
        """The answer, or the error, of every request of an ended batch, by custom id.

        Interpreting an answer (structured output, labels) needs its request: the provider remembers the
        requests it submitted, and ``requests`` (custom id to request) supplies them for a batch submitted
        by another process, e.g. a run resumed after a crash. Answers have ``batch=True``; a request that
        was canceled, expired or left unanswered gets a retryable ``ProviderError``.
        """
        ...

    async def cancel_batch(self, batch_id: str) -> None:
        """Ask the provider to stop the batch; requests not yet answered end as canceled."""
        ...


@runtime_checkable
class TokenCounter(Protocol):
    """A provider that also counts, without answering, the input tokens a request would be billed for.

    Opt-in, like ``BatchProvider``: ``headrace estimate --count-tokens api`` checks
    ``isinstance(provider, TokenCounter)`` and otherwise counts locally. A count is free but not always
    exact (a provider documents where it differs from the billed figure). Raises only ``ProviderError``
    for a failed exchange and never retries.
    """

    async def count_tokens(self, request: LlmRequest) -> int:
        """The input tokens ``request`` would be billed for if ``Provider.call`` sent it."""
        ...


def check_batch_items(items: Sequence[tuple[str, LlmRequest]], *, limit: int) -> dict[str, LlmRequest]:
    """The items of a batch as custom id to request, or a ``ValueError`` that names the bad id."""
    if not items:
        raise ValueError("a batch needs at least one request")
    if len(items) > limit:
        raise ValueError(f"a batch holds at most {limit} requests, got {len(items)}: split it")
    checked: dict[str, LlmRequest] = {}
    for position, (custom_id, request) in enumerate(items):
        if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
            raise ValueError(
                f"custom id {custom_id!r} (item {position}) must be 1-64 characters of a-z, A-Z, 0-9, "
                "'_' or '-'"
            )
        if custom_id in checked:
            raise ValueError(f"custom id {custom_id!r} (item {position}) is used twice in one batch")
        if not isinstance(request, LlmRequest):
            raise ValueError(f"item {position} ({custom_id!r}) is not an LlmRequest")
        checked[custom_id] = request
    return checked


def unanswered(provider: str, custom_id: str, why: str) -> ProviderError:
    """The error of a batch request that got no answer (canceled, expired, missing): send it again."""
    return ProviderError(
        f"batch request {custom_id!r} was not answered: {why}", provider=provider, retryable=True
    )


class SubmittedBatches:
    """The requests of the batches one provider submitted, by batch id, to interpret their answers.

    Kept in memory for the provider's lifetime: they are the same objects the caller already holds.
    """

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._batches: dict[str, dict[str, LlmRequest]] = {}

    def remember(self, batch_id: str, requests: dict[str, LlmRequest]) -> None:
        """Keep the requests of a batch just submitted."""
        self._batches[batch_id] = requests

    def get(self, batch_id: str) -> Mapping[str, LlmRequest] | None:
        """The remembered requests of a batch, or None if this provider did not submit it."""
        return self._batches.get(batch_id)

    def requests(self, batch_id: str, given: Mapping[str, LlmRequest] | None) -> Mapping[str, LlmRequest]:
        """The requests of a batch: ``given`` if passed, else the remembered ones, else ``ValueError``."""
        if given is not None:
            return given
        found = self._batches.get(batch_id)
        if found is None:
            raise ValueError(
                f"{self._provider} batch {batch_id!r} was not submitted by this provider object: pass its "
                "requests (custom id to LlmRequest) to batch_results"
            )
        return found


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
