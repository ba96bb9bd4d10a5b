"""The shared rate limiter's buckets (``RateBuckets``), on a fake clock: burst then steady rate, the three
dimensions of a provider account, refunds of unused output tokens, and one bucket per account key however
many workers ask it. No Ray, no sleeping.
"""

from __future__ import annotations

import math

import pytest

from engine.runtime.llm.limiter import RateBuckets
from engine.spec.models import RateLimits


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def buckets(clock: FakeClock) -> RateBuckets:
    return RateBuckets(clock=clock)


RPM_600 = RateLimits(requests_per_minute=600)
"""10 requests a second: a burst of 10, then one every 0.1 s."""


def _reserve_many(buckets: RateBuckets, key: str, limits: RateLimits, n: int) -> list[float]:
    return [buckets.reserve(key, limits, 0, 0) for _ in range(n)]


def test_a_burst_of_one_seconds_worth_goes_at_once_then_requests_are_spaced_at_the_rate(buckets):
    delays = _reserve_many(buckets, "acct", RPM_600, 14)

    assert delays[:10] == [0.0] * 10
    assert delays[10:] == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_the_bucket_drains_with_time(buckets, clock):
    _reserve_many(buckets, "acct", RPM_600, 14)  # queued until t=0.4

    clock.advance(0.4)
    assert buckets.reserve("acct", RPM_600, 0, 0) == pytest.approx(0.1)

    clock.advance(10.0)  # idle long enough to be empty: a full burst is available again
    assert _reserve_many(buckets, "acct", RPM_600, 10) == [0.0] * 10
    assert buckets.reserve("acct", RPM_600, 0, 0) == pytest.approx(0.1)


def test_the_steady_rate_over_a_minute_is_the_limit(buckets, clock):
    """Callers that each wait their delay send no more than requests_per_minute in a minute (+ the burst)."""
    limits = RateLimits(requests_per_minute=120)  # 2 a second, burst 2
    sent = 0
    while True:
        delay = buckets.reserve("acct", limits, 0, 0)
        if delay > 60.0:
            break
        sent += 1
    assert sent == 120 + 2


def test_each_dimension_limits_and_the_largest_wait_wins(buckets):
    limits = RateLimits(
        requests_per_minute=600,  # burst 10 requests
        input_tokens_per_minute=6_000,  # 100 tokens/s, burst 100
        output_tokens_per_minute=1_200,  # 20 tokens/s, burst 20
    )
    # input: (300 - 100) / 100 = 2 s; output: (100 - 20) / 20 = 4 s; requests: 0 s
    assert buckets.reserve("a", limits, 300, 100) == pytest.approx(4.0)
    # input: (700 - 100) / 100 = 6 s; output: 0 s
    assert buckets.reserve("b", limits, 700, 10) == pytest.approx(6.0)
    # only the request count: 10 small requests fit the burst, the 11th waits 0.1 s
    assert [buckets.reserve("c", limits, 1, 1) for _ in range(11)][-1] == pytest.approx(0.1)


def test_a_dimension_without_a_limit_never_waits(buckets):
    only_requests = RateLimits(requests_per_minute=600)

    assert buckets.reserve("acct", only_requests, 10_000_000, 10_000_000) == 0.0
    assert buckets.reserve("free", RateLimits(), 10_000_000, 10_000_000) == 0.0
    assert _reserve_many(buckets, "free", RateLimits(), 1000)[-1] == 0.0


def test_refunding_unused_output_tokens_lets_later_requests_go_sooner(buckets):
    limits = RateLimits(output_tokens_per_minute=1_200)  # 20 tokens/s, burst 20
    for key in ("refunded", "kept"):
        assert buckets.reserve(key, limits, 0, 100) == pytest.approx(4.0)  # reserved at max_tokens

    buckets.refund("refunded", 90)  # the answer used 10 of its 100

    assert buckets.reserve("refunded", limits, 0, 20) == pytest.approx(0.5)  # (10 + 20 - 20) / 20
    assert buckets.reserve("kept", limits, 0, 20) == pytest.approx(5.0)  # (100 + 20 - 20) / 20


def test_a_refund_never_makes_credit_beyond_an_empty_bucket(buckets):
    limits = RateLimits(output_tokens_per_minute=1_200)  # burst 20
    buckets.reserve("acct", limits, 0, 10)

    buckets.refund("acct", 1_000_000)

    delays = [buckets.reserve("acct", limits, 0, 20), buckets.reserve("acct", limits, 0, 20)]
    assert delays == pytest.approx([0.0, 1.0])


def test_refunds_to_unknown_keys_or_unlimited_output_are_ignored(buckets):
    buckets.refund("never-seen", 100)
    buckets.reserve("rpm-only", RPM_600, 0, 0)
    buckets.refund("rpm-only", 100)

    assert buckets.reserve("rpm-only", RPM_600, 0, 0) == 0.0


def test_two_workers_on_one_key_share_one_rate(buckets):
    """The point of a shared limiter: N workers at 600 RPM send 600 RPM between them, not N x 600."""
    worker_a = [buckets.reserve("anthropic/claude/acct1", RPM_600, 0, 0) for _ in range(5)]
    worker_b = [buckets.reserve("anthropic/claude/acct1", RPM_600, 0, 0) for _ in range(5)]
    interleaved = [buckets.reserve("anthropic/claude/acct1", RPM_600, 0, 0) for _ in range(4)]

    assert worker_a + worker_b == [0.0] * 10  # one burst between them
    assert interleaved == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_different_keys_are_independent(buckets):
    _reserve_many(buckets, "anthropic/claude/acct1", RPM_600, 50)  # deep in its queue

    assert buckets.reserve("anthropic/claude/acct2", RPM_600, 0, 0) == 0.0
    assert buckets.reserve("anthropic/haiku/acct1", RPM_600, 0, 0) == 0.0
    assert _reserve_many(buckets, "gemini/flash/acct1", RPM_600, 10) == [0.0] * 10


def test_lowering_a_keys_limits_takes_effect_at_once(buckets):
    _reserve_many(buckets, "acct", RPM_600, 10)  # the burst at 600 RPM

    slow = RateLimits(requests_per_minute=60)  # 1 a second, burst 1
    # the 10 queued requests drain at the new rate: (10 + 1 - 1) / 1
    assert buckets.reserve("acct", slow, 0, 0) == pytest.approx(10.0)
    assert buckets.reserve("acct", slow, 0, 0) == pytest.approx(11.0)


def test_raising_a_keys_limits_takes_effect_at_once(buckets):
    slow = RateLimits(requests_per_minute=60)
    assert _reserve_many(buckets, "acct", slow, 3) == pytest.approx([0.0, 1.0, 2.0])

    fast = RateLimits(requests_per_minute=6_000)  # burst 100
    assert buckets.reserve("acct", fast, 0, 0) == 0.0


def test_adding_and_removing_a_dimension_takes_effect(buckets):
    assert buckets.reserve("acct", RPM_600, 1_000, 0) == 0.0

    with_input = RateLimits(requests_per_minute=600, input_tokens_per_minute=600)  # 10 tokens/s
    assert buckets.reserve("acct", with_input, 110, 0) == pytest.approx(10.0)  # (110 - 10) / 10

    assert buckets.reserve("acct", RPM_600, 1_000_000, 0) == 0.0  # the input limit is gone again


def test_lowering_limits_does_not_recharge_a_queue_that_drained_under_the_old_ones(buckets, clock):
    fast = RateLimits(requests_per_minute=6_000)  # 100 a second
    _reserve_many(buckets, "acct", fast, 200)  # queued for 1 s beyond the burst
    clock.advance(2.0)  # by now every one of them has gone out

    slow = RateLimits(requests_per_minute=60)
    assert buckets.reserve("acct", slow, 0, 0) == 0.0  # today: 198.0 s


def test_a_request_larger_than_the_burst_gets_a_finite_wait(buckets, clock):
    limits = RateLimits(input_tokens_per_minute=600)  # 10 tokens/s, burst 10

    delay = buckets.reserve("acct", limits, 1_000, 0)

    assert math.isfinite(delay)
    assert delay == pytest.approx(99.0)  # (1000 - 10) / 10
    # and the account stays usable: once that much time has passed, small requests go again
    clock.advance(delay + 1.0)
    assert buckets.reserve("acct", limits, 5, 0) == 0.0


def test_the_default_clock_is_monotonic_time():
    buckets = RateBuckets()

    assert buckets.reserve("acct", RPM_600, 0, 0) == 0.0
