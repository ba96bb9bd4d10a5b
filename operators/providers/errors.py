"""The errors every LLM provider raises, whatever SDK is underneath.

::

    ProviderError                 status, retryable, retry_after_s, provider
    ├── RateLimited               429, and Anthropic's 529 "overloaded": retryable, honours retry-after
    ├── ServerError               5xx: retryable
    ├── ProviderTimeout           no answer within the request's timeout (or 408): retryable
    ├── ConnectionFailed          refused, reset or dropped connection: retryable
    ├── BadResponse               a 200 whose body is not what the API promises: retryable
    ├── RequestRejected           any other 4xx (bad request, auth, not found): not retryable
    │   └── KeyRejected           the key itself is refused, whatever the status (Gemini: 400 API_KEY_INVALID)
    ├── ProviderConfigError       unknown provider, bad config, missing credentials: not retryable
    └── RecordingMissing          replay-only mode met a request it has no recording of: not retryable

The retry loop (in the runtime, shared with the rate limiter) only reads ``retryable`` and ``retry_after_s``;
it never looks at SDK exception types. Messages never contain an API key: providers pass the secrets they
hold to ``redact`` before building a message, and the SDK exception is not chained (``raise ... from None``)
because SDK errors keep the HTTP request, whose headers hold the key.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any


class ProviderError(Exception):
    """A failed LLM call, described in provider-neutral terms.

    ``status`` is the HTTP status when there was one; ``retry_after_s`` is the server's requested wait
    (from ``retry-after``, ``retry-after-ms``, OpenAI's ``x-ratelimit-reset-*`` or Gemini's
    ``RetryInfo``), or None.
    """

    retryable_default: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        retry_after_s: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status = status
        self.retry_after_s = retry_after_s
        self.retryable = self.retryable_default if retryable is None else retryable

    def __str__(self) -> str:
        where = f"{self.provider}" + (f" (HTTP {self.status})" if self.status is not None else "")
        return f"{where}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(provider={self.provider!r}, status={self.status!r}, "
            f"retryable={self.retryable!r}, retry_after_s={self.retry_after_s!r}, message={self.message!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields are not in ``args``: pickle (Ray ships errors between workers) needs help.
        return (
            _rebuild,
            (type(self), self.message, self.provider, self.status, self.retry_after_s, self.retryable),
        )


def _rebuild(
    cls: type[ProviderError],
    message: str,
    provider: str,
    status: int | None,
    retry_after_s: float | None,
    retryable: bool,
) -> ProviderError:
    return cls(message, provider=provider, status=status, retry_after_s=retry_after_s, retryable=retryable)


class RateLimited(ProviderError):
    """The provider asked us to slow down (429, or 529 overloaded); wait ``retry_after_s`` if given."""

    retryable_default = True


class ServerError(ProviderError):
    """The provider failed (5xx); the same request may succeed later."""

    retryable_default = True


class ProviderTimeout(ProviderError):
    """No answer arrived within the request's timeout."""

    retryable_default = True


class ConnectionFailed(ProviderError):
    """The connection could not be made or broke before an answer."""

    retryable_default = True


class BadResponse(ProviderError):
    """The provider answered 200 with a body that is not valid JSON or lacks what was asked for."""

    retryable_default = True


class RequestRejected(ProviderError):
    """The provider refused the request (4xx other than 429): sending it again will not help."""


class KeyRejected(RequestRejected):
    """The provider refused the API key itself, whatever HTTP status it chose: Google answers a wrong key
    with 400 INVALID_ARGUMENT (reason ``API_KEY_INVALID``), not 401. No row can pass it."""


class ProviderConfigError(ProviderError):
    """The provider cannot be built or used as configured (what to set is in the message)."""


class MissingCredentials(ProviderConfigError):
    """The provider has no API key (or other credential) in its config or the environment; ``headrace
    validate`` warns about it (the machine that runs may have one), ``run`` refuses."""


class RecordingMissing(ProviderError):
    """Replay-only mode has no recording for this request (the message names the request's hash)."""


def error_for_status(
    provider: str, status: int, message: str, retry_after_s: float | None = None
) -> ProviderError:
    """The error of an HTTP error status: 429/529 rate limited, 408 timeout, other 5xx, other 4xx."""
    if status in (429, 529):
        return RateLimited(message, provider=provider, status=status, retry_after_s=retry_after_s)
    if status == 408:  # the server gave up waiting for us: as transient as a client-side timeout
        return ProviderTimeout(message, provider=provider, status=status, retry_after_s=retry_after_s)
    if status >= 500:
        return ServerError(message, provider=provider, status=status, retry_after_s=retry_after_s)
    return RequestRejected(message, provider=provider, status=status, retry_after_s=retry_after_s)


def transport_error(name: str, sdk: ModuleType, exc: Exception, message: str) -> ProviderError:
    """The ``ProviderError`` of an exception without a status from the ``anthropic`` or ``openai`` SDK
    (``sdk``: both are generated alike, with the same exception classes), or from httpx under it."""
    import httpx2

    if isinstance(exc, (sdk.APITimeoutError, httpx2.TimeoutException)):
        return ProviderTimeout(message, provider=name)
    if isinstance(exc, (sdk.APIConnectionError, httpx2.TransportError)):
        return ConnectionFailed(message, provider=name)
    if isinstance(exc, (sdk.APIResponseValidationError, ValueError)):
        # The SDKs do not wrap a 200 whose body is not JSON: json.JSONDecodeError is a ValueError.
        return BadResponse(f"malformed response body: {message}", provider=name)
    return ProviderError(f"{type(exc).__name__}: {message}", provider=name)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every non-trivial secret replaced by ``[REDACTED]``."""
    for secret in secrets:
        # Very short "keys" (tests, placeholders) would blank out ordinary words; real keys are long.
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[REDACTED]")
    return text


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``retry-after`` (seconds or an HTTP date), or None."""
    if not headers:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration_s(text: str) -> float | None:
    """Seconds of an OpenAI reset duration (``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``), or None."""
    text = text.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def parse_rate_limit_reset(headers: Mapping[str, str] | None) -> float | None:
    """Seconds until an exhausted limit resets, from OpenAI's ``x-ratelimit-*`` headers, or None.

    Of ``x-ratelimit-reset-requests`` and ``x-ratelimit-reset-tokens``, those whose ``remaining`` count is
    0 (or not sent) are read, and the longest wait wins: every exhausted limit must have room again.
    """
    if not headers:
        return None
    waits = []
    for kind in ("requests", "tokens"):
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if reset and (remaining is None or remaining.strip() == "0"):
            seconds = _duration_s(reset)
            if seconds is not None:
                waits.append(seconds)
    return max(waits) if waits else None


def google_error_reasons(details: Any) -> set[str]:
    """The ``reason`` of each ``ErrorInfo`` detail of a Google API error body (e.g. ``API_KEY_INVALID``)."""
    error = details.get("error", details) if isinstance(details, dict) else None
    items = error.get("details") if isinstance(error, dict) else None
    return {
        item["reason"]
        for item in (items if isinstance(items, list) else [])
        if isinstance(item, dict) and isinstance(item.get("reason"), str)
    }


def parse_retry_delay(details: Any) -> float | None:
    """The ``retryDelay`` (``"0.7s"``) of a Google API error body's ``RetryInfo`` detail, or None."""
    error = details.get("error", details) if isinstance(details, dict) else None
    items = error.get("details") if isinstance(error, dict) else None
    for item in items if isinstance(items, list) else []:
        delay = item.get("retryDelay") if isinstance(item, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                return None
    return None
