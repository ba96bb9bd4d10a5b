"""What only the ``openai`` provider does, through the real ``openai`` SDK against the loopback server:
structured output with ``response_format`` and its fallbacks for servers without it (JSON in text,
repaired, and re-asked by ``llm_extract``), usage with cached and reasoning tokens and what it costs,
``x-ratelimit-*`` waits, an exhausted quota, and the settings of compatible servers. The behaviour the
three SDK providers share is in ``test_providers.py`` and ``test_provider_batches.py``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import pytest

from engine.logs import redact as redact_log
from engine.runtime.cluster import worker_env
from engine.runtime.llm.calls import CallSettings, LocalServices, RowCaller, RowFailed, account_id
from engine.runtime.llm.ledger import Ledger
from engine.spec.models import RetryPolicy
from operators.llm import LlmClassify, LlmExtract
from operators.llm_rows import RowTask, Target
from operators.providers import (
    LlmRequest,
    LlmResponse,
    ProviderConfigError,
    RateLimited,
    RequestRejected,
    get_provider,
)
from operators.providers.errors import parse_rate_limit_reset
from operators.providers.openai_chat import OpenAIProvider, repair_json, strict_compatible
from operators.providers.pricing import PriceTable, answer_cost
from tests.loopback import ErrorReply, LLMServer, ResponderRequest
from tests.loopback.openai_wire import OpenAIUsage
from tests.loopback.schema import TICKET_SCHEMA

KEY = "sk-proj-test-0123456789abcdefghij"
MODEL = "gpt-5-mini"
PERSON = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
CLOSED = {**PERSON, "additionalProperties": False}


@pytest.fixture(autouse=True)
def _no_provider_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer() as running:
        yield running


def _provider(server: LLMServer, **config: Any) -> OpenAIProvider:
    provider = get_provider("openai", {"api_key": KEY, "base_url": server.openai_url, **config})
    assert isinstance(provider, OpenAIProvider)
    return provider


def _request(prompt: str = "hello there", **fields: Any) -> LlmRequest:
    return LlmRequest(provider="openai", model=MODEL, prompt=prompt, **fields)


def _ask(provider: OpenAIProvider, *requests: LlmRequest) -> list[LlmResponse]:
    async def main() -> list[LlmResponse]:
        try:
            return [await provider.call(r) for r in requests]
        finally:
            await provider.close()

    return asyncio.run(main())


def _calls(server: LLMServer) -> list[Any]:
    return [r for r in server.requests if r.endpoint == "chat.completions"]


# ---------------------------------------------------------------- structured output


def test_labels_ask_for_an_enum_in_a_strict_json_schema(server: LLMServer) -> None:
    (answer,) = _ask(_provider(server), _request("the app crashes", labels=("bug", "billing")))
    fmt = _calls(server)[0].body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["properties"]["value"] == {
        "type": "string",
        "enum": ["bug", "billing"],
    }
    assert answer.text == answer.parsed == "bug"


def test_strict_is_set_only_for_schemas_strict_mode_accepts(server: LLMServer) -> None:
    assert (
        strict_compatible(CLOSED) and not strict_compatible(PERSON) and not strict_compatible(TICKET_SCHEMA)
    )
    nested = {"type": "object", "properties": {"p": PERSON}, "required": ["p"], "additionalProperties": False}
    assert not strict_compatible(nested)
    # The loopback refuses a strict schema that breaks the rules, as OpenAI does: both must be accepted.
    answers = _ask(_provider(server), _request(output_schema=CLOSED), _request(output_schema=TICKET_SCHEMA))
    assert [c.body["response_format"]["json_schema"]["strict"] for c in _calls(server)] == [True, False]
    assert [c.status for c in _calls(server)] == [200, 200] and all(a.parsed for a in answers)


def fenced_json(request: ResponderRequest) -> str:
    """A server without structured output: a chatty answer with the JSON in a code fence."""
    assert "response_format" not in request["body"]
    return 'Sure! Here it is:\n```json\n{"name": "Ada"}\n```\nAnything else?'


def test_a_server_without_structured_output_gets_json_asked_for_in_the_prompt() -> None:
    with LLMServer(openai_structured=False, responder=fenced_json) as server:
        provider = _provider(server)
        first, second = _ask(
            provider, _request(output_schema=PERSON), _request("again", output_schema=PERSON)
        )
        statuses = [c.status for c in _calls(server)]
        prompts = [c.body["messages"][-1]["content"] for c in _calls(server)]
    assert first.parsed == second.parsed == {"name": "Ada"} and first.text is None
    # json_schema refused, then json_object refused, then the prompt: learnt once, for every later call
    assert statuses == [400, 400, 200, 200] and provider.mode == "prompt"
    assert "JSON Schema" in prompts[-1] and '"name"' in prompts[-1]


def test_a_server_without_structured_output_is_asked_for_a_bare_label() -> None:
    def chatty_label(request: ResponderRequest) -> str:
        return "Billing."

    with LLMServer(openai_structured=False, responder=chatty_label) as server:
        provider = _provider(server, structured_output="prompt")  # start there: no 400s at all
        (answer,) = _ask(provider, _request(labels=("bug", "billing")))
        (call,) = _calls(server)
    assert "response_format" not in call.body and "bug, billing" in call.body["messages"][-1]["content"]
    task = RowTask(LlmClassify(op="llm_classify", input="x", prompt="{{ t }}", labels=["bug", "billing"]), {})
    request = _request(labels=("bug", "billing"))
    assert answer.parsed is None and task.interpret(request, answer.text, None, None) == "billing"


def test_llm_extract_re_asks_an_answer_that_is_not_json_with_the_reason() -> None:
    answers = iter(["I think the name is Ada.", '{"name": "Ada"}'])

    def first_prose_then_json(request: ResponderRequest) -> str:
        return next(answers)

    spec = LlmExtract(
        op="llm_extract", input="x", prompt="Who? {{ t }}", output_schema=PERSON, max_attempts=3
    )
    with LLMServer(openai_structured=False, responder=first_prose_then_json) as server:
        provider = _provider(server, structured_output="prompt")
        settings = CallSettings(
            node="n", targets=(Target("openai", MODEL),), retry=RetryPolicy(max_attempts=1)
        )
        ledger = Ledger(None, {})
        caller = RowCaller(
            RowTask(spec, {}),
            settings,
            {"openai": provider},
            PriceTable({MODEL: {"input": 1.0, "output": 2.0}}),
            None,
            LocalServices(ledger),
            4,
        )

        async def main() -> Any:
            try:
                return await caller.answer({"t": "text"})
            finally:
                await provider.close()

        value = asyncio.run(main())
        prompts = [c.body["messages"][-1]["content"] for c in _calls(server)]
    assert value == {"name": "Ada"} and len(prompts) == 2
    assert "not accepted: expected a JSON object" in prompts[1]


def test_json_in_prose_is_repaired() -> None:
    assert repair_json('{"a": 1}') == {"a": 1}
    assert repair_json("Here:\n```\n[1, 2]\n```") == [1, 2]
    assert repair_json('The answer is {"a": {"b": 2}} as asked.') == {"a": {"b": 2}}
    with pytest.raises(ValueError):
        repair_json("no json here")


# ---------------------------------------------------------------- usage and cost


def test_cached_and_reasoning_tokens_are_counted_and_priced() -> None:
    with LLMServer(openai_usage=OpenAIUsage(cached_tokens=3, reasoning_tokens=40)) as server:
        (answer,) = _ask(_provider(server), _request("x" * 40))
        usage = _calls(server)[0].usage
    assert usage is not None
    assert answer.input_tokens == usage["prompt_tokens"] == math.ceil(40 / 4)
    assert answer.cached_input_tokens == 3
    # reasoning tokens are inside completion_tokens and billed as output
    assert answer.output_tokens == usage["completion_tokens"] >= 40
    price = PriceTable().price("openai", MODEL)
    expected = (7 * price.input + 3 * (price.cache_read or 0) + answer.output_tokens * price.output) / 1e6
    assert answer_cost(price, answer) == pytest.approx(expected)
    batched = LlmResponse(**{**answer.to_json(), "batch": True})
    assert answer_cost(price, batched) == pytest.approx(expected / 2)  # the Batch API's half price


def test_a_self_hosted_model_needs_an_explicit_price_which_may_be_zero() -> None:
    with pytest.raises(ValueError, match=r"providers\.openai\.prices"):
        PriceTable().price("openai", "meta-llama/Llama-3.1-8B-Instruct")
    free = PriceTable({"meta-llama/*": {"input": 0, "output": 0}}).price(
        "openai", "meta-llama/Llama-3.1-8B-Instruct"
    )
    assert free.cost(1000, 1000) == 0.0


# ---------------------------------------------------------------- rate limits and quotas


def test_a_429_without_retry_after_waits_for_the_x_ratelimit_reset() -> None:
    with LLMServer(rpm_limit=60, rpm_burst=1) as server:
        provider = _provider(server)

        async def main() -> BaseException | None:
            try:
                await provider.call(_request())
                try:
                    await provider.call(_request())
                except RateLimited as exc:
                    return exc
                return None
            finally:
                await provider.close()

        error = asyncio.run(main())
        refused = _calls(server)[-1]
    assert refused.status == 429 and "retry-after" not in refused.headers
    assert isinstance(error, RateLimited) and error.retry_after_s is not None
    assert 0.5 < error.retry_after_s <= 1.0  # one request a second: the next is due within a second


def test_reset_durations_are_read_as_openai_writes_them() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "6m0s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "1.5s",
    }
    assert parse_rate_limit_reset(headers) == 360.0  # every exhausted limit must have room again
    assert parse_rate_limit_reset({**headers, "x-ratelimit-remaining-requests": "12"}) == 1.5
    assert parse_rate_limit_reset({"x-ratelimit-reset-requests": "20ms"}) == pytest.approx(0.02)
    assert parse_rate_limit_reset({"x-ratelimit-reset-requests": "soon"}) is None


def test_an_exhausted_quota_is_final_not_a_wait() -> None:
    def no_money(request: ResponderRequest) -> None:
        raise ErrorReply(429, "You exceeded your current quota (insufficient_quota).")

    with LLMServer(responder=no_money) as server:
        provider = _provider(server)

        async def main() -> RequestRejected:
            try:
                with pytest.raises(RequestRejected) as raised:
                    await provider.call(_request())
                return raised.value
            finally:
                await provider.close()

        error = asyncio.run(main())
    assert not error.retryable and error.status == 429


# ---------------------------------------------------------------- compatible servers and settings


def test_older_servers_get_max_tokens_and_bad_settings_are_refused(server: LLMServer) -> None:
    _ask(_provider(server, max_tokens_field="max_tokens"), _request(max_tokens=7))
    _ask(_provider(server), _request(max_tokens=7))
    first, second = (c.body for c in _calls(server))
    assert first["max_tokens"] == 7 and "max_completion_tokens" not in first
    assert second["max_completion_tokens"] == 7 and "max_tokens" not in second
    for bad in ({"structured_output": "xml"}, {"max_tokens_field": "limit"}, {"organization": "x"}):
        with pytest.raises(ProviderConfigError):
            get_provider("openai", {"api_key": KEY, **bad})


def test_keys_and_endpoints_reach_workers_and_never_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://gpu-node:8000/v1", "UNRELATED": "x"}
    assert worker_env(env) == {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://gpu-node:8000/v1"}
    # the account a rate limit is shared by: the same key and endpoint from config or environment
    assert account_id("openai", {}, env) == account_id(
        "openai", {"api_key": KEY, "base_url": "http://gpu-node:8000/v1"}, {}
    )
    assert account_id("openai", {}, env) != account_id(
        "openai", {}, {**env, "OPENAI_BASE_URL": "http://x/v1"}
    )
    assert KEY not in redact_log(f"calling with {KEY} failed", {})
    assert "sk-abcdefghijklmnopqrstuvwxyz01" not in redact_log("key sk-abcdefghijklmnopqrstuvwxyz01", {})


def test_a_row_that_fails_everywhere_names_the_openai_error(server: LLMServer) -> None:
    # a 400 fails this row only (a 401, 403 or 404 would stop the whole run: test_fail_fast.py)
    server.responder = lambda request: (_ for _ in ()).throw(ErrorReply(400, "The prompt is too long"))
    spec = LlmClassify(op="llm_classify", input="x", prompt="{{ t }}", labels=["a", "b"])
    settings = CallSettings(node="n", targets=(Target("openai", MODEL),), retry=RetryPolicy(max_attempts=2))
    provider = _provider(server)
    caller = RowCaller(
        RowTask(spec, {}),
        settings,
        {"openai": provider},
        PriceTable(),
        None,
        LocalServices(Ledger(None, {})),
        2,
    )

    async def main() -> None:
        try:
            await caller.answer({"t": "x"})
        finally:
            await provider.close()

    with pytest.raises(RowFailed, match=r"openai \(HTTP 400\).*too long"):
        asyncio.run(main())
    assert len(_calls(server)) == 1  # a 400 is final: not sent again
