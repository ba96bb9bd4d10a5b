"""Fault injection and rate limiting for the loopback LLM server.

Both are decided per inference request, before the answer is computed:

1. ``Faults.fail_first_n``: the first n requests fail with ``fail_first_status``;
2. ``rpm_limit``: a token bucket shared by every connection answers 429 when it is empty;
3. the seeded draw: one uniform number per request picks 429, 500, 529, a hang or a malformed body.

The draw is made for every request, in arrival order, under a lock, so a run with the same seed and the
same request order sees the same faults whatever the thread scheduling.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal[
    "fail_first_n",
    "rpm_limit",
    "rate_429",
    "rate_500",
    "rate_529",
    "rate_timeout",
    "rate_malformed",
    "responder",
]


class ErrorReply(Exception):
    """An error answer in the provider's own shape; a responder may raise it to fail one prompt.

    ``status`` is the HTTP status (400, 401, 403, 404, 429, 500, 503, 529); the server picks the matching
    Anthropic error type or Gemini status string. ``retry_after_s`` adds a ``retry-after`` header.
    ``reason`` is Google's ``ErrorInfo`` reason (e.g. ``API_KEY_INVALID``), sent in Gemini's error details.
    """

    def __init__(
        self, status: int, message: str, *, retry_after_s: float | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s
        self.reason = reason


@dataclass(frozen=True)
class Faults:
    """What fraction of inference requests fail, and how; deterministic for a given ``seed``.

    The rates are probabilities of one draw per request, so they must add up to at most 1.
    ``rate_timeout`` makes the server hold the connection for ``hang_s`` and then close it without an
    answer (set the client's timeout below ``hang_s``); ``rate_malformed`` answers 200 with a body that is
    not valid JSON. Every 429 carries ``retry-after: retry_after_s`` (fractional seconds are sent as is:
    the anthropic SDK parses floats). ``fail_first_n`` fails the first n well-formed inference requests
    with ``fail_first_status`` (429 also gets ``retry-after``). Requests the server refuses as malformed
    (400, 401) draw nothing. Assigning ``server.faults`` starts the counters and the sequence afresh.
    """

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_529: float = 0.0
    rate_timeout: float = 0.0
    rate_malformed: float = 0.0
    retry_after_s: float = 0.0
    hang_s: float = 10.0
    fail_first_n: int = 0
    fail_first_status: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        rates = (self.rate_429, self.rate_500, self.rate_529, self.rate_timeout, self.rate_malformed)
        if any(not 0.0 <= rate <= 1.0 for rate in rates) or sum(rates) > 1.0 + 1e-9:
            raise ValueError(f"fault rates must be in [0, 1] and add up to at most 1, got {rates}")
        if self.fail_first_n < 0 or self.retry_after_s < 0 or self.hang_s < 0:
            raise ValueError("fail_first_n, retry_after_s and hang_s must not be negative")


class FaultPlan:
    """The running state of a ``Faults``: how many requests were seen, and the seeded generator."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._lock = threading.Lock()
        self._rng = random.Random(faults.seed)
        self._seen = 0

    def draw(self) -> FaultKind | None:
        """Decide the fault of the next request (``None``: answer normally). Thread-safe."""
        with self._lock:
            index = self._seen
            self._seen += 1
            # Always consume one number so the sequence stays aligned with the arrival order.
            u = self._rng.random()
        faults = self.faults
        if index < faults.fail_first_n:
            return "fail_first_n"
        for kind, rate in (
            ("rate_429", faults.rate_429),
            ("rate_500", faults.rate_500),
            ("rate_529", faults.rate_529),
            ("rate_timeout", faults.rate_timeout),
            ("rate_malformed", faults.rate_malformed),
        ):
            if u < rate:
                return kind  # type: ignore[return-value]
            u -= rate
        return None


class RequestBucket:
    """A token bucket of requests per minute, refilled continuously (as Anthropic describes its limits).

    ``burst`` is the bucket's size; it defaults to one second's worth of requests so that a benchmark of a
    few seconds measures the steady rate rather than a minute's burst.
    """

    def __init__(self, rpm: float, burst: int | None = None) -> None:
        if rpm <= 0:
            raise ValueError(f"rpm_limit must be positive, got {rpm}")
        self.rpm = rpm
        self.capacity = float(burst if burst is not None else max(1, math.ceil(rpm / 60.0)))
        self._per_second = rpm / 60.0
        self._tokens = self.capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> tuple[bool, float, int]:
        """Take one request: (allowed, seconds until a token is available if not, tokens remaining)."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self._per_second)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True, 0.0, int(self._tokens)
            return False, (1.0 - self._tokens) / self._per_second, 0
