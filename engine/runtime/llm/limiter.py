"""Rate limits shared by every worker and every pipeline on a cluster.

A provider account allows so many requests, input tokens and output tokens per minute. Each worker that
limits itself sends its own share again (four workers at 100 RPM send 400), so headrace keeps one bucket
per (provider, model, account) in one named actor that every pool on the cluster asks before a call.

Each limit is a leaky bucket that drains at its rate and holds one second's worth as burst. A reservation
is granted at once and returns how long the caller must wait first, so callers queue in arrival order
and one round trip suffices; output tokens are reserved at ``max_tokens`` and the unused part is given
back when the answer's real usage is known. Pool actors reserve *blocks* of requests and tokens (at most
a quarter of a bucket's burst, :mod:`engine.runtime.llm.blocks`), exactly as the same calls one by one
would be, spend them locally and give back what they did not use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.spec.models import RateLimits

LIMITER_NAME = "headrace-rate-limiter"
NAMESPACE = "headrace"
_BURST_S = 1.0


@dataclass
class _Bucket:
    rate: float  # units per second
    level: float = 0.0
    at: float = 0.0

    def drain(self, now: float) -> None:
        self.level = max(0.0, self.level - self.rate * (now - self.at))
        self.at = now

    def wait(self, amount: float) -> float:
        """Seconds until ``amount`` fits under the burst, given what is queued already."""
        burst = max(self.rate * _BURST_S, 1.0)
        return max(0.0, (self.level + amount - burst) / self.rate)


@dataclass
class _Account:
    limits: RateLimits
    buckets: dict[str, _Bucket] = field(default_factory=dict)


class RateBuckets:
    """The buckets of every account; plain Python so it can be tested without Ray."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._accounts: dict[str, _Account] = {}

    def reserve(
        self, key: str, limits: RateLimits, input_tokens: float, output_tokens: float, requests: int = 1
    ) -> float:
        """Reserve ``requests`` requests with their tokens (a pool's block: see
        :mod:`engine.runtime.llm.blocks`); returns the seconds to wait before sending them.

        The latest caller's limits apply to the account (pipelines sharing a key should agree on them).
        """
        now = self._clock()
        account = self._account(key, limits)
        wants = {"requests": float(requests), "input": float(input_tokens), "output": float(output_tokens)}
        delay = 0.0
        for name, bucket in account.buckets.items():
            bucket.drain(now)
            delay = max(delay, bucket.wait(wants[name]))
        for name, bucket in account.buckets.items():
            bucket.level += wants[name]
        return delay

    def refund(self, key: str, output_tokens: int) -> None:
        """Give back output tokens reserved but not used."""
        account = self._accounts.get(key)
        bucket = account.buckets.get("output") if account else None
        if bucket is not None and output_tokens > 0:
            bucket.drain(self._clock())
            bucket.level = max(0.0, bucket.level - output_tokens)

    def give_back(self, key: str, requests: float, input_tokens: float, output_tokens: float) -> None:
        """Give back the unused part of a block (never below an empty bucket)."""
        account = self._accounts.get(key)
        if account is None:
            return
        now = self._clock()
        for name, amount in (("requests", requests), ("input", input_tokens), ("output", output_tokens)):
            bucket = account.buckets.get(name)
            if bucket is not None and amount > 0:
                bucket.drain(now)
                bucket.level = max(0.0, bucket.level - amount)

    def _account(self, key: str, limits: RateLimits) -> _Account:
        account = self._accounts.get(key)
        if account is None or account.limits != limits:
            rates = {
                "requests": limits.requests_per_minute,
                "input": limits.input_tokens_per_minute,
                "output": limits.output_tokens_per_minute,
            }
            old = account.buckets if account else {}
            now = self._clock()
            for bucket in old.values():
                bucket.drain(now)  # time already passed drains at the old rates, not the new ones
            buckets = {
                name: old.get(name) or _Bucket(rate=per_minute / 60.0, at=self._clock())
                for name, per_minute in rates.items()
                if per_minute
            }
            for name, bucket in buckets.items():
                bucket.rate = rates[name] / 60.0  # type: ignore[operator]
            account = self._accounts[key] = _Account(limits, buckets)
        return account


class RateLimiterActor:
    """The cluster's one ``RateBuckets``, as a named detached Ray actor (started by the runtime's
    ``start_services`` with ``get_if_exists``, so every pipeline on the cluster finds the same one)."""

    def __init__(self) -> None:
        self._buckets = RateBuckets()
        self._round_trips = 0

    def reserve(self, key: str, limits: RateLimits, input_tokens: int, output_tokens: int) -> float:
        """See ``RateBuckets.reserve``."""
        self._round_trips += 1
        return self._buckets.reserve(key, limits, input_tokens, output_tokens)

    def exchange(
        self,
        key: str,
        limits: RateLimits,
        back: tuple[float, float, float],
        requests: int,
        input_tokens: float,
        output_tokens: float,
    ) -> float:
        """A pool's block round trip: give back the unused part of its last block (requests, input and
        output tokens), reserve a new one of ``requests`` requests; the seconds to wait before using it."""
        self._round_trips += 1
        self._buckets.give_back(key, *back)
        return self._buckets.reserve(key, limits, input_tokens, output_tokens, requests)

    def give_back(self, key: str, requests: float, input_tokens: float, output_tokens: float) -> None:
        """See ``RateBuckets.give_back`` (a pool's idle block)."""
        self._round_trips += 1
        self._buckets.give_back(key, requests, input_tokens, output_tokens)

    def round_trips(self) -> int:
        """Calls to the limiter so far (tests check that calls do not each cost one)."""
        return self._round_trips

    def refund(self, key: str, output_tokens: int) -> None:
        """See ``RateBuckets.refund``."""
        self._buckets.refund(key, output_tokens)
