"""Answering one row (``RowCaller``) against scripted providers and the in-process services: retries and
back-off, 429s and retry-after, fallbacks, budgets, the cache, wrong answers fed back, the in-flight bound,
and the usage the ledger ends up with. One ``asyncio.run`` per test, no Ray, no real waiting.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from engine.errors import BudgetExceeded
from engine.runtime.llm.calls import (
    CallSettings,
    LocalServices,
    RowCaller,
    RowFailed,
    account_id,
    estimate_input_tokens,
)
from engine.runtime.llm.ledger import Ledger
from engine.runtime.llm.limiter import RateBuckets
from engine.spec.models import Budget, RateLimits, RetryPolicy
from operators.llm import LlmClassify, LlmExtract, LlmMap, LlmSpec
from operators.llm_rows import RowTask, Target
from operators.providers import (
    LlmRequest,
    LlmResponse,
    RateLimited,
    RequestRejected,
    ServerError,
)
from operators.providers.cache import ResponseCache
from operators.providers.offline import OfflineProvider
from operators.providers.pricing import PriceTable

NODE = "answer"
CLAUDE = Target("anthropic", "claude-haiku-4-5")
GEMINI = Target("gemini", "gemini-2.5-flash")
FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.004, jitter=False)
PRICES = PriceTable()

MAP = LlmMap(op="llm_map", input="src", prompt="Summarise: {{ body }}", max_tokens=200)
CLASSIFY = LlmClassify(op="llm_classify", input="src", prompt="Route: {{ body }}", labels=["billing", "bug"])
EXTRACT = LlmExtract(
    op="llm_extract",
    input="src",
    prompt="Who wrote {{ body }}?",
    output_schema={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    max_attempts=3,
)
ROW = {"body": "the invoice is wrong"}

Step = LlmResponse | BaseException | Callable[[LlmRequest], LlmResponse]


def reply(
    text: str | None = "ok",
    *,
    parsed: Any = None,
    input_tokens: int = 10,
    output_tokens: int = 5,
    source: str = "live",
    stop_reason: str = "end_turn",
) -> LlmResponse:
    return LlmResponse(
        text=text,
        parsed=parsed,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        model="scripted",
        latency_s=0.0,
        stop_reason=stop_reason,
        source=source,  # type: ignore[arg-type]
    )


def server_error() -> ServerError:
    return ServerError("internal error", provider="anthropic", status=500)


class ScriptedProvider:
    """Answers calls from a script, in order (the last step repeats), and records every request."""

    def __init__(self, *script: Step, hold_s: float = 0.0) -> None:
        self.script = list(script)
        self.calls: list[LlmRequest] = []
        self.hold_s = hold_s
        self.running = 0
        self.most_running = 0

    async def call(self, request: LlmRequest) -> LlmResponse:
        self.calls.append(request)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.hold_s:
                await asyncio.sleep(self.hold_s)
            assert self.script, f"unexpected call: {request.provider}/{request.model}"
            step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            if isinstance(step, BaseException):
                raise step
            return step(request) if callable(step) else step
        finally:
            self.running -= 1

    async def close(self) -> None:
        pass


def make_caller(
    spec: LlmSpec,
    providers: dict[str, Any],
    *,
    targets: Sequence[Target] = (CLAUDE,),
    retry: RetryPolicy = FAST,
    ledger: Ledger | None = None,
    cache: ResponseCache | None = None,
    limits: dict[str, RateLimits] | None = None,
    buckets: RateBuckets | None = None,
    in_flight: int = 4,
    budgeted: bool = True,
) -> RowCaller:
    settings = CallSettings(
        node=NODE,
        targets=tuple(targets),
        retry=retry,
        limits=limits or {},
        accounts={name: "acct" for name in providers},
        budgeted=budgeted,
    )
    services = LocalServices(ledger or Ledger(None, {}), buckets)
    return RowCaller(RowTask(spec, {}), settings, providers, PRICES, cache, services, in_flight)


def usage(caller: RowCaller) -> dict[str, Any]:
    return caller.services.ledger.usage()[NODE]  # type: ignore[attr-defined]


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every ``asyncio.sleep`` the caller asks for, recorded and skipped (the loop still yields)."""
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def record(delay: float, result: Any = None) -> Any:
        waits.append(delay)
        await real_sleep(0)
        return result

    monkeypatch.setattr(asyncio, "sleep", record)
    return waits


# -- retries ---------------------------------------------------------------------------------------------


def test_a_server_error_is_retried_then_the_row_is_answered(slept):
    provider = ScriptedProvider(server_error(), reply("a summary"))
    caller = make_caller(MAP, {"anthropic": provider})

    assert asyncio.run(caller.answer(ROW)) == "a summary"

    assert len(provider.calls) == 2
    assert provider.calls[0] == provider.calls[1]
    assert len(slept) == 1 and slept[0] > 0  # backed off once, between the attempts
    assert usage(caller)["failed_requests"] == 1
    assert usage(caller)["requests"] == 1


def test_a_retry_after_is_honoured_over_a_shorter_backoff(slept):
    provider = ScriptedProvider(
        ServerError("unavailable", provider="anthropic", status=503, retry_after_s=3.0), reply()
    )
    caller = make_caller(MAP, {"anthropic": provider})

    asyncio.run(caller.answer(ROW))

    assert slept == [3.0]


def test_a_429_waits_its_retry_after_and_does_not_use_up_attempts(slept):
    throttled = RateLimited("slow down", provider="anthropic", status=429, retry_after_s=5.0)
    provider = ScriptedProvider(throttled, throttled, throttled, reply("finally"))
    caller = make_caller(MAP, {"anthropic": provider}, retry=FAST.model_copy(update={"max_attempts": 1}))

    assert asyncio.run(caller.answer(ROW)) == "finally"

    assert len(provider.calls) == 4  # three 429s on a single allowed attempt
    assert len(slept) == 3
    assert all(wait >= 5.0 for wait in slept)


def test_a_429_that_says_come_back_now_is_sent_again_without_our_backoff(slept):
    now = RateLimited("slow down", provider="anthropic", status=429, retry_after_s=0.0)
    provider = ScriptedProvider(now, now, reply("done"))
    caller = make_caller(
        MAP, {"anthropic": provider}, retry=FAST.model_copy(update={"initial_backoff_s": 9.0})
    )

    assert asyncio.run(caller.answer(ROW)) == "done"

    assert slept == [0.0, 0.0]  # the server's word, not 9 s of our own backoff


def test_a_429_without_retry_after_still_backs_off(slept):
    provider = ScriptedProvider(RateLimited("slow down", provider="anthropic", status=429), reply())
    caller = make_caller(MAP, {"anthropic": provider})

    asyncio.run(caller.answer(ROW))

    assert len(slept) == 1 and slept[0] > 0


def test_429s_that_never_stop_fail_the_row_after_a_cap(slept):
    provider = ScriptedProvider(RateLimited("slow down", provider="anthropic", status=429))
    caller = make_caller(MAP, {"anthropic": provider}, retry=FAST.model_copy(update={"max_attempts": 2}))

    with pytest.raises(RowFailed, match=r"HTTP 429\): slow down"):
        asyncio.run(caller.answer(ROW))

    assert 2 < len(provider.calls) <= 50
    assert usage(caller)["failed_requests"] == len(provider.calls)
    assert usage(caller)["reserved_usd"] == pytest.approx(0.0)


def test_a_rejected_request_fails_at_once_without_retries(slept):
    provider = ScriptedProvider(
        RequestRejected("bad request: prompt is empty", provider="anthropic", status=400)
    )
    caller = make_caller(MAP, {"anthropic": provider})

    with pytest.raises(RowFailed) as failed:
        asyncio.run(caller.answer(ROW))

    assert len(provider.calls) == 1
    assert slept == []
    assert str(failed.value) == (
        "anthropic/claude-haiku-4-5: anthropic (HTTP 400): bad request: prompt is empty (attempt 1 of 3)"
    )


def test_retries_stop_after_max_attempts(slept):
    provider = ScriptedProvider(server_error())
    caller = make_caller(MAP, {"anthropic": provider})

    with pytest.raises(RowFailed, match=r"attempt 3 of 3"):
        asyncio.run(caller.answer(ROW))

    assert len(provider.calls) == 3
    assert len(slept) == 2


# -- fallbacks -------------------------------------------------------------------------------------------


def test_exhausted_attempts_move_to_the_fallback_target(slept):
    claude = ScriptedProvider(server_error())
    gemini = ScriptedProvider(reply("from gemini", input_tokens=1_000, output_tokens=100))
    caller = make_caller(MAP, {"anthropic": claude, "gemini": gemini}, targets=(CLAUDE, GEMINI))

    assert asyncio.run(caller.answer(ROW)) == "from gemini"

    assert [(r.provider, r.model) for r in claude.calls] == [("anthropic", "claude-haiku-4-5")] * 3
    assert [(r.provider, r.model) for r in gemini.calls] == [("gemini", "gemini-2.5-flash")]
    assert gemini.calls[0].prompt == claude.calls[0].prompt
    expected = PRICES.price("gemini", "gemini-2.5-flash").cost(1_000, 100)  # billed at gemini's prices
    assert usage(caller)["cost_usd"] == pytest.approx(expected)
    assert usage(caller)["failed_requests"] == 3


def test_a_row_that_fails_everywhere_names_each_targets_error(slept):
    claude = ScriptedProvider(server_error())
    # a 400 fails this row only (a 401, 403 or 404 would stop the whole run: test_fail_fast.py)
    gemini = ScriptedProvider(RequestRejected("prompt too long", provider="gemini", status=400))
    caller = make_caller(MAP, {"anthropic": claude, "gemini": gemini}, targets=(CLAUDE, GEMINI))

    with pytest.raises(RowFailed) as failed:
        asyncio.run(caller.answer(ROW))

    assert str(failed.value) == (
        "anthropic/claude-haiku-4-5: anthropic (HTTP 500): internal error (attempt 3 of 3); "
        "then gemini/gemini-2.5-flash: gemini (HTTP 400): prompt too long (attempt 1 of 3)"
    )


# -- budgets ---------------------------------------------------------------------------------------------


def test_a_refused_reservation_ends_the_row_before_any_call(slept):
    claude, gemini = ScriptedProvider(reply()), ScriptedProvider(reply())
    ledger = Ledger(Budget(max_cost_usd=0.0001), {})  # less than 200 output tokens of haiku
    caller = make_caller(
        MAP, {"anthropic": claude, "gemini": gemini}, targets=(CLAUDE, GEMINI), ledger=ledger
    )

    with pytest.raises(BudgetExceeded, match="max_cost_usd"):
        asyncio.run(caller.answer(ROW))

    assert claude.calls == [] and gemini.calls == []  # not a RowFailed: no fallback either


def test_after_a_refusal_no_row_starts_a_call(slept):
    provider = ScriptedProvider(reply(output_tokens=50))
    ledger = Ledger(Budget(max_output_tokens=MAP.max_tokens + 10), {})  # room for one reservation
    caller = make_caller(MAP, {"anthropic": provider}, ledger=ledger)

    async def three_rows() -> list[Any]:
        results: list[Any] = []
        for i in range(3):
            try:
                results.append(await caller.answer({"body": f"row {i}"}))
            except BudgetExceeded as exc:
                results.append(exc)
        return results

    first, second, third = asyncio.run(three_rows())

    assert first == "ok"
    assert isinstance(second, BudgetExceeded) and isinstance(third, BudgetExceeded)
    assert len(provider.calls) == 1
    assert usage(caller)["output_tokens"] == 50


def test_without_a_budget_calls_are_still_counted(slept):
    provider = ScriptedProvider(reply(input_tokens=7, output_tokens=3))
    caller = make_caller(MAP, {"anthropic": provider}, budgeted=False)

    asyncio.run(caller.answer(ROW))
    assert NODE not in caller.services.ledger.usage()  # type: ignore[attr-defined]  # batched: not yet sent
    asyncio.run(caller.flush())

    assert usage(caller)["requests"] == 1
    assert usage(caller)["input_tokens"] == 7
    assert usage(caller)["cost_usd"] == pytest.approx(
        PRICES.price("anthropic", "claude-haiku-4-5").cost(7, 3)
    )


# -- the cache -------------------------------------------------------------------------------------------


def test_a_cache_hit_makes_no_call_and_is_counted_once_flushed(tmp_path: Path):
    cache = ResponseCache(str(tmp_path))
    cache.put(
        RowTask(MAP, {}).request(ROW, CLAUDE), reply("cached summary", input_tokens=40, output_tokens=9)
    )
    provider = ScriptedProvider()  # any call fails the test
    caller = make_caller(MAP, {"anthropic": provider}, cache=cache)

    async def answer_and_flush() -> tuple[Any, dict[str, Any], dict[str, Any]]:
        value = await caller.answer(ROW)
        before = dict(caller.services.ledger.usage())  # type: ignore[attr-defined]
        await caller.flush()
        return value, before, usage(caller)

    value, before, after = asyncio.run(answer_and_flush())

    assert value == "cached summary"
    assert provider.calls == []
    assert before == {}  # hits are reported to the ledger in one round trip, on flush
    assert after["cached_requests"] == 1
    assert after["cached_input_tokens"] == 40
    assert after["cached_output_tokens"] == 9
    assert after["requests"] == 0 and after["cost_usd"] == 0.0
    asyncio.run(caller.flush())  # a second flush reports nothing new
    assert usage(caller)["cached_requests"] == 1


def test_a_paid_answer_is_cached_for_the_next_run(tmp_path: Path):
    first = make_caller(
        MAP, {"anthropic": ScriptedProvider(reply("paid once"))}, cache=ResponseCache(str(tmp_path))
    )
    assert asyncio.run(first.answer(ROW)) == "paid once"

    provider = ScriptedProvider()
    second = make_caller(MAP, {"anthropic": provider}, cache=ResponseCache(str(tmp_path)))

    assert asyncio.run(second.answer(ROW)) == "paid once"
    assert provider.calls == []


def test_offline_answers_cost_nothing_and_are_not_cached(tmp_path: Path):
    cache = ResponseCache(str(tmp_path))
    ledger = Ledger(Budget(max_cost_usd=0.0), {})  # a dry run fits a zero budget
    offline = Target("offline", "claude-haiku-4-5")
    caller = make_caller(MAP, {"offline": OfflineProvider()}, targets=(offline,), ledger=ledger, cache=cache)

    value = asyncio.run(caller.answer(ROW))

    assert isinstance(value, str) and value
    assert usage(caller)["requests"] == 1
    assert usage(caller)["input_tokens"] > 0
    assert usage(caller)["cost_usd"] == 0.0
    assert cache.stats.writes == 0


@pytest.mark.parametrize("source", ["offline", "replay"])
def test_answers_not_from_a_paid_call_cost_nothing_whatever_the_target_charges(source):
    provider = ScriptedProvider(reply(input_tokens=10_000, output_tokens=10_000, source=source))
    caller = make_caller(MAP, {"anthropic": provider})

    asyncio.run(caller.answer(ROW))

    assert usage(caller)["cost_usd"] == 0.0
    assert usage(caller)["output_tokens"] == 10_000
    assert usage(caller)["reserved_usd"] == pytest.approx(0.0)


# -- answers the node cannot use ---------------------------------------------------------------------------


def test_an_invalid_extraction_is_asked_again_with_the_reason():
    provider = ScriptedProvider(reply(None, parsed={"name": 5}), reply(None, parsed={"name": "Ada"}))
    caller = make_caller(EXTRACT, {"anthropic": provider})

    assert asyncio.run(caller.answer(ROW)) == {"name": "Ada"}

    first, second = provider.calls
    assert "not accepted" not in first.prompt
    assert second.prompt.startswith(first.prompt)
    assert "Your previous answer was not accepted: name: 5 is not of type 'string'" in second.prompt
    assert usage(caller)["requests"] == 2  # both answers were paid for


def test_an_extraction_that_stays_invalid_fails_after_its_attempts():
    provider = ScriptedProvider(reply("no idea"))
    caller = make_caller(EXTRACT, {"anthropic": provider})

    with pytest.raises(RowFailed, match=r"expected a JSON object, got 'no idea' \(after 3 answers\)"):
        asyncio.run(caller.answer(ROW))

    assert len(provider.calls) == 3
    assert provider.calls[2].prompt.count("not accepted") == 1
    assert provider.calls[2].prompt.count("expected a JSON object") == 2  # every earlier reason


def test_a_classification_outside_the_labels_fails_the_row_at_once():
    provider = ScriptedProvider(reply("feature request"))
    caller = make_caller(CLASSIFY, {"anthropic": provider})

    with pytest.raises(RowFailed) as failed:
        asyncio.run(caller.answer(ROW))

    assert len(provider.calls) == 1
    assert provider.calls[0].labels == ("billing", "bug")
    assert "answered 'feature request', which is not one of ['billing', 'bug']" in str(failed.value)


def test_a_classification_is_answered_with_its_label():
    caller = make_caller(CLASSIFY, {"anthropic": ScriptedProvider(reply("Billing."))})

    assert asyncio.run(caller.answer(ROW)) == "billing"


def test_a_prompt_that_reaches_for_python_internals_fails_its_row_without_a_call():
    # validation refuses such a template (test_hostile_templates.py); the sandbox still holds without it
    spec = LlmMap.model_construct(op="llm_map", input="src", prompt="{{ body.__class__.__mro__ }}")
    provider = ScriptedProvider(reply())
    caller = make_caller(spec, {"anthropic": provider})

    with pytest.raises(RowFailed) as failed:
        asyncio.run(caller.answer(ROW))

    assert provider.calls == []
    assert str(failed.value).startswith("anthropic/claude-haiku-4-5: prompt template: SecurityError:")
    assert "<class" not in str(failed.value)


# -- concurrency and rate limits -------------------------------------------------------------------------


def test_in_flight_bounds_the_calls_running_at_once():
    provider = ScriptedProvider(reply(), hold_s=0.01)
    caller = make_caller(MAP, {"anthropic": provider}, in_flight=2)

    async def many() -> list[Any]:
        return await asyncio.gather(*(caller.answer({"body": str(i)}) for i in range(8)))

    assert asyncio.run(many()) == ["ok"] * 8
    assert provider.most_running == 2


def test_calls_wait_for_the_shared_rate_limit(slept):
    """Two callers (two actors of a pool) on one account queue in one bucket: 60 RPM between them."""
    buckets = RateBuckets(clock=lambda: 0.0)  # time stands still: every wait is the queue's length
    limits = {"anthropic": RateLimits(requests_per_minute=60)}
    ledger = Ledger(None, {})
    callers = [
        make_caller(
            MAP, {"anthropic": ScriptedProvider(reply())}, ledger=ledger, limits=limits, buckets=buckets
        )
        for _ in range(2)
    ]

    async def both() -> None:
        await asyncio.gather(*(c.answer({"body": str(i)}) for i in range(2) for c in callers))

    asyncio.run(both())

    assert sorted(slept) == pytest.approx([1.0, 2.0, 3.0])  # the first goes at once, in the burst


def test_unused_output_tokens_are_given_back_to_the_rate_limit(slept):
    buckets = RateBuckets(clock=lambda: 0.0)  # time stands still: every wait is the queue's length
    limits = {"anthropic": RateLimits(output_tokens_per_minute=12_000)}  # 200 a second, burst 200
    caller = make_caller(
        MAP, {"anthropic": ScriptedProvider(reply(output_tokens=20))}, limits=limits, buckets=buckets
    )

    async def in_turn() -> None:
        for i in range(3):
            await caller.answer({"body": str(i)})

    asyncio.run(in_turn())

    # each call reserved max_tokens (200) and gave back the 180 it did not use; without the refunds
    # the second and third calls would wait 1 s and 2 s
    assert slept == pytest.approx([0.1, 0.2])


# -- usage -----------------------------------------------------------------------------------------------


def test_the_ledger_usage_is_the_sum_of_the_answers():
    answers = [(120, 30), (800, 200), (45, 1)]
    provider = ScriptedProvider(*(reply(input_tokens=i, output_tokens=o) for i, o in answers))
    ledger = Ledger(Budget(max_cost_usd=5.0), {NODE: Budget(max_cost_usd=1.0)})
    caller = make_caller(MAP, {"anthropic": provider}, ledger=ledger)

    async def in_turn() -> None:
        for i in range(3):
            await caller.answer({"body": str(i)})

    asyncio.run(in_turn())

    price = PRICES.price("anthropic", "claude-haiku-4-5")
    got = usage(caller)
    assert got["requests"] == 3
    assert got["input_tokens"] == sum(i for i, _ in answers)
    assert got["output_tokens"] == sum(o for _, o in answers)
    assert got["cost_usd"] == pytest.approx(sum(price.cost(i, o) for i, o in answers))
    assert got["reserved_usd"] == pytest.approx(0.0)
    assert ledger.stop_reason() is None


# -- estimates and accounts ------------------------------------------------------------------------------


def test_the_input_estimate_is_generous_and_counts_system_and_schema():
    plain = LlmRequest("anthropic", "m", prompt="x" * 3_000)
    with_system = LlmRequest("anthropic", "m", prompt="x" * 3_000, system="y" * 300)
    with_schema = LlmRequest("anthropic", "m", prompt="x" * 3_000, output_schema=EXTRACT.output_schema)
    with_labels = LlmRequest("anthropic", "m", prompt="x" * 3_000, labels=("a", "b"))

    assert estimate_input_tokens(plain) >= math.ceil(3_000 / 4)  # more than a typical tokeniser's count
    assert estimate_input_tokens(with_system) > estimate_input_tokens(plain)
    assert estimate_input_tokens(with_schema) > estimate_input_tokens(plain)
    assert estimate_input_tokens(with_labels) > estimate_input_tokens(plain)
    assert estimate_input_tokens(LlmRequest("anthropic", "m", prompt="")) > 0


def test_the_account_id_is_stable_and_keeps_the_key_secret():
    key = "sk-ant-secret-0123456789"
    one = account_id("anthropic", {"api_key": key}, {})

    assert one == account_id("anthropic", {}, {"ANTHROPIC_API_KEY": key})  # config or environment alike
    assert key not in one and len(one) == 16
    assert one != account_id("anthropic", {"api_key": "another-key-000"}, {})
    assert one != account_id("anthropic", {"api_key": key, "base_url": "http://127.0.0.1:9"}, {})
    assert one != account_id("gemini", {"api_key": key}, {})
    assert account_id("gemini", {}, {"GOOGLE_API_KEY": key}) == account_id("gemini", {"api_key": key}, {})


def test_an_answer_no_model_could_write_fails_its_row_and_is_not_cached(tmp_path: Path):
    from engine.runtime.llm.calls import MAX_RESPONSE_CHARS

    cache = ResponseCache(str(tmp_path))
    provider = ScriptedProvider(reply("x" * (MAX_RESPONSE_CHARS + 1)))
    caller = make_caller(MAP, {"anthropic": provider}, cache=cache)

    with pytest.raises(RowFailed, match="more than"):
        asyncio.run(caller.answer(ROW))
    assert cache.get(RowTask(MAP, {}).request(ROW, CLAUDE)) is None
