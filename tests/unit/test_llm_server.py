"""The loopback LLM server, driven by the real ``anthropic``, ``google-genai`` and ``openai`` SDKs (no Ray,
no network).

What is proved here is that the fake is faithful enough to stand in for the providers: the SDKs parse its
answers, map its errors to their own exception types, retry as they would against the real APIs, and
honour its ``retry-after``; and that it is deterministic and overlaps waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import openai
import pydantic
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tests.loopback import ErrorReply, Faults, LLMServer, ResponderRequest, schema_instance
from tests.loopback.faults import FaultPlan
from tests.loopback.schema import TICKET_SCHEMA

KEY = "test-key"
MODEL = "claude-haiku-4-5"
GEMINI = "gemini-2.5-flash"


def _ask(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}]


def _claude(server: LLMServer, **options: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=KEY, base_url=server.url, **options)


def _text(client: anthropic.Anthropic, prompt: str, max_tokens: int = 100) -> str:
    """The text of Claude's answer to one user message."""
    block = client.messages.create(model=MODEL, max_tokens=max_tokens, messages=_ask(prompt)).content[0]
    assert block.type == "text"
    return block.text


def _gemini(server: LLMServer, *, api_key: str = KEY, **options: Any) -> genai.Client:
    return genai.Client(api_key=api_key, http_options=types.HttpOptions(base_url=server.url, **options))


def _generate(
    server: LLMServer, contents: str, config: types.GenerateContentConfig | None = None, **options: Any
) -> types.GenerateContentResponse:
    # The client must stay referenced during the call: a collected genai Client closes its connections.
    client = _gemini(server, **options)
    return client.models.generate_content(model=GEMINI, contents=contents, config=config)


def _post(url: str, body: Any, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """A raw POST, for what the SDKs refuse to send (missing fields, missing headers)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer() as running:
        yield running


# ---------------------------------------------------------------- Anthropic


def test_anthropic_text_answer_has_usage_and_is_deterministic(server: LLMServer) -> None:
    client = _claude(server)
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=100, messages=_ask("hello there"))
    message = raw.parse()
    assert raw.headers["request-id"].startswith("req_")
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.content[0].type == "text" and message.content[0].text
    usage = message.usage
    assert usage.input_tokens == 3 and usage.output_tokens >= 1  # ceil(len("hello there") / 4)
    assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens == 0

    assert _text(client, "hello there") == message.content[0].text != _text(client, "something else")
    logged = server.requests[0]
    assert (logged.provider, logged.endpoint, logged.model, logged.status) == (
        "anthropic",
        "messages",
        MODEL,
        200,
    )
    assert logged.body["messages"] == _ask("hello there") and logged.usage == usage.model_dump(
        include={"input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"}
    )


def test_async_anthropic_gets_the_same_answer(server: LLMServer) -> None:
    async def ask() -> anthropic.types.Message:
        async with anthropic.AsyncAnthropic(api_key=KEY, base_url=server.url) as client:
            return await client.messages.create(model=MODEL, max_tokens=100, messages=_ask("hello there"))

    message = asyncio.run(ask())
    assert message.content[0].text == _text(_claude(server), "hello there")
    assert server.requests[0].headers["x-stainless-async"].startswith("async")


def test_max_tokens_truncates_the_answer(server: LLMServer) -> None:
    message = _claude(server).messages.create(model=MODEL, max_tokens=2, messages=_ask("hello"))
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2 and len(message.content[0].text) == 8


def test_forced_tool_answers_tool_use_valid_against_the_schema(server: LLMServer) -> None:
    tool = {"name": "file_ticket", "description": "File a ticket.", "input_schema": TICKET_SCHEMA}
    message = _claude(server).messages.create(
        model=MODEL,
        max_tokens=500,
        messages=_ask("my invoice is wrong"),
        tools=[tool],
        tool_choice={"type": "tool", "name": "file_ticket"},
    )
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use" and block.name == "file_ticket" and block.id.startswith("toolu_")
    validator = jsonschema.Draft202012Validator(TICKET_SCHEMA, format_checker=jsonschema.FormatChecker())
    validator.validate(block.input)
    assert block.input["label"] == "bug"  # enums give their first value


@pytest.mark.parametrize(
    "schema",
    [
        TICKET_SCHEMA,
        {"type": "integer", "exclusiveMinimum": 10, "multipleOf": 4},
        {"type": "number", "maximum": -2.5},
        {"type": "string", "minLength": 40, "format": "date-time"},
        {
            "anyOf": [
                {"type": "null"},
                {"type": "object", "properties": {"a": {"const": 3}}, "required": ["a"]},
            ]
        },
        {"allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]}, {"required": ["b"]}]},
        {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}], "minItems": 2},
    ],
)
def test_schema_instances_validate(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(
        schema_instance(schema)
    )


def test_responder_chooses_the_answer_for_both_providers() -> None:
    def classify(request: ResponderRequest) -> str:
        return "billing" if "invoice" in request["prompt"] else "other"

    with LLMServer(responder=classify) as server:
        claude = _claude(server)
        assert (_text(claude, "an invoice"), _text(claude, "a crash")) == ("billing", "other")
        gemini = _gemini(server)
        assert gemini.models.generate_content(model=GEMINI, contents="invoice #3").text == "billing"
        enum = gemini.models.generate_content(
            model=GEMINI,
            contents="my invoice",
            config=types.GenerateContentConfig(
                response_mime_type="text/x.enum",
                response_schema={"type": "STRING", "enum": ["billing", "other"]},
            ),
        )
        assert enum.text == "billing"


def test_responder_error_reply_fails_one_prompt() -> None:
    def poison(request: ResponderRequest) -> str:
        if "poison" in request["prompt"]:
            raise ErrorReply(400, "this row is poison")
        return "ok"

    with LLMServer(responder=poison) as server:
        client = _claude(server, max_retries=0)
        assert _text(client, "fine") == "ok"
        with pytest.raises(anthropic.BadRequestError, match="this row is poison"):
            client.messages.create(model=MODEL, max_tokens=5, messages=_ask("poison"))
        assert [r.fault for r in server.requests] == [None, "responder"]


def test_bad_requests_get_anthropic_shaped_errors(server: LLMServer) -> None:
    url = server.url + "/v1/messages"
    good = {"model": MODEL, "max_tokens": 5, "messages": _ask("hi")}
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    assert _post(url, good, headers)[0] == 200  # the older x-api-key spelling is accepted too

    status, body = _post(url, good, {"anthropic-version": "2023-06-01"})
    assert status == 401 and body["type"] == "error" and body["error"]["type"] == "authentication_error"
    for bad in (
        {**good, "max_tokens": 0},
        {"model": MODEL, "messages": _ask("hi")},
        {**good, "messages": []},
    ):
        status, body = _post(url, bad, headers)
        assert status == 400 and body["error"]["type"] == "invalid_request_error", bad
    assert (
        _post(url, good, {"x-api-key": KEY})[1]["error"]["message"] == "anthropic-version: header is required"
    )
    assert _post(url, b"{not json", headers)[0] == 400
    assert _post(server.url + "/v1/nothing", good, headers)[1]["error"]["type"] == "not_found_error"


def test_token_counts_for_both_providers(server: LLMServer) -> None:
    assert _claude(server).messages.count_tokens(model=MODEL, messages=_ask("12345678")).input_tokens == 2
    gemini = _gemini(server)
    assert gemini.models.count_tokens(model=GEMINI, contents="12345678").total_tokens == 2


def test_batch_is_in_progress_then_ended_with_results() -> None:
    with LLMServer(batch_delay_s=0.3) as server:
        client = _claude(server)
        requests: list[Any] = [
            {"custom_id": "a", "params": {"model": MODEL, "max_tokens": 50, "messages": _ask("hello there")}},
            {"custom_id": "b", "params": {"model": MODEL, "max_tokens": 50, "messages": _ask("second")}},
            {"custom_id": "bad", "params": {"model": MODEL, "messages": _ask("no max_tokens")}},
        ]
        batch = client.messages.batches.create(requests=requests)
        assert batch.type == "message_batch" and batch.processing_status == "in_progress"
        assert batch.request_counts.processing == 3 and batch.results_url is None
        deadline = time.monotonic() + 5
        while (batch := client.messages.batches.retrieve(batch.id)).processing_status != "ended":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        counts = batch.request_counts
        assert (counts.processing, counts.succeeded, counts.errored) == (0, 2, 1) and batch.ended_at
        results = {line.custom_id: line.result for line in client.messages.batches.results(batch.id)}
        direct = client.messages.create(model=MODEL, max_tokens=50, messages=_ask("hello there"))
        assert results["a"].type == "succeeded" and results["a"].message.content == direct.content
        assert results["bad"].type == "errored" and results["bad"].error.error.type == "invalid_request_error"
        assert [r.endpoint for r in server.requests][:2] == ["batches.create", "batches.retrieve"]


def test_canceled_batch_ends_with_canceled_requests() -> None:
    with LLMServer(batch_delay_s=60) as server:
        client = _claude(server)
        params = {"model": MODEL, "max_tokens": 5, "messages": _ask("x")}
        batch = client.messages.batches.create(requests=[{"custom_id": "only", "params": params}])
        with pytest.raises(anthropic.AnthropicError, match="results_url"):  # the SDK checks before asking
            client.messages.batches.results(batch.id)
        with pytest.raises(anthropic.BadRequestError, match="not ended"):  # and so does the server
            client.get(f"/v1/messages/batches/{batch.id}/results", cast_to=object)
        canceled = client.messages.batches.cancel(batch.id)
        assert canceled.processing_status == "ended" and canceled.request_counts.canceled == 1
        assert [line.result.type for line in client.messages.batches.results(batch.id)] == ["canceled"]


# ---------------------------------------------------------------- Gemini


class Ticket(pydantic.BaseModel):
    label: str
    score: float
    tags: list[str]


def test_gemini_text_answer_with_usage(server: LLMServer) -> None:
    response = _generate(server, "hello there", types.GenerateContentConfig(system_instruction="Be brief."))
    assert response.text and response.candidates[0].finish_reason == types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage.prompt_token_count == 5 and usage.total_token_count == 5 + usage.candidates_token_count
    assert response.model_version == GEMINI and response.response_id
    logged = server.requests[0]
    assert logged.provider == "gemini" and logged.model == GEMINI and logged.path.endswith(":generateContent")
    # The Claude and Gemini answers to one prompt are the same text: a pure function of the prompt.
    assert response.text == _text(_claude(server), "hello there")


# google-genai's async transport subclasses aiohttp.ClientSession, which aiohttp deprecates: not ours to fix.
@pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")
def test_async_gemini_and_json_modes(server: LLMServer) -> None:
    async def ask() -> tuple[types.GenerateContentResponse, types.GenerateContentResponse]:
        client = _gemini(server)
        typed = await client.aio.models.generate_content(
            model=GEMINI,
            contents="classify this",
            config=types.GenerateContentConfig(response_mime_type="application/json", response_schema=Ticket),
        )
        plain = await client.aio.models.generate_content(
            model=GEMINI,
            contents="classify this",
            config=types.GenerateContentConfig(
                response_mime_type="application/json", response_json_schema=TICKET_SCHEMA
            ),
        )
        return typed, plain

    typed, plain = asyncio.run(ask())
    assert isinstance(typed.parsed, Ticket) and typed.parsed.tags
    jsonschema.Draft202012Validator(TICKET_SCHEMA, format_checker=jsonschema.FormatChecker()).validate(
        json.loads(plain.text)
    )
    assert plain.usage_metadata.candidates_token_count >= 1
    assert "responseSchema" in server.requests[0].body["generationConfig"]
    assert "responseJsonSchema" in server.requests[1].body["generationConfig"]


def test_gemini_max_output_tokens_and_errors(server: LLMServer) -> None:
    client = _gemini(server)
    cut = client.models.generate_content(
        model=GEMINI, contents="hello", config=types.GenerateContentConfig(max_output_tokens=1)
    )
    assert cut.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    status, body = _post(
        server.url + f"/v1beta/models/{GEMINI}:generateContent", {"contents": []}, {"x-goog-api-key": KEY}
    )
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    status, body = _post(
        server.url + f"/v1beta/models/{GEMINI}:generateContent?key={KEY}",
        {"contents": [{"parts": [{"text": "hi"}]}]},
        {},
    )
    assert status == 200 and body["candidates"][0]["content"]["role"] == "model"
    assert _post(server.url + f"/v1/models/{GEMINI}:generateContent", {}, {})[1]["error"]["code"] == 403


# ---------------------------------------------------------------- faults and limits


def test_injected_429_surfaces_as_each_sdks_error() -> None:
    with LLMServer(faults=Faults(rate_429=1.0, retry_after_s=2)) as server:
        with pytest.raises(anthropic.RateLimitError) as claude_error:
            _claude(server, max_retries=0).messages.create(model=MODEL, max_tokens=5, messages=_ask("hi"))
        assert claude_error.value.response.headers["retry-after"] == "2"
        assert claude_error.value.body["error"]["type"] == "rate_limit_error"
        with pytest.raises(genai_errors.ClientError) as gemini_error:
            _generate(server, "hi")
        assert gemini_error.value.code == 429 and gemini_error.value.status == "RESOURCE_EXHAUSTED"
        assert [(r.status, r.fault) for r in server.requests] == [(429, "rate_429")] * 2


def test_injected_5xx_map_to_overloaded_and_internal_errors() -> None:
    with LLMServer(faults=Faults(rate_500=0.5, rate_529=0.5, seed=3)) as server:
        client = _claude(server, max_retries=0)
        raised = set()
        for _ in range(12):
            with pytest.raises(anthropic.InternalServerError) as error:
                client.messages.create(model=MODEL, max_tokens=5, messages=_ask("hi"))
            raised.add((type(error.value), error.value.status_code, error.value.body["error"]["type"]))
        assert raised == {
            (anthropic.InternalServerError, 500, "api_error"),
            (anthropic.OverloadedError, 529, "overloaded_error"),
        }
        server.faults = Faults(rate_529=1.0)
        with pytest.raises(genai_errors.ServerError) as gemini_error:
            _generate(server, "hi")
        assert gemini_error.value.code == 503  # Gemini's overload status


def test_timeouts_and_malformed_bodies() -> None:
    with LLMServer(faults=Faults(rate_timeout=1.0, hang_s=30)) as server:
        started = time.monotonic()
        with pytest.raises(anthropic.APITimeoutError):
            _claude(server, max_retries=0, timeout=0.3).messages.create(
                model=MODEL, max_tokens=5, messages=_ask("x")
            )
        assert server.requests[0].status == 0 and server.requests[0].fault == "rate_timeout"
        server.stop()  # wakes the hanging handler at once
        assert time.monotonic() - started < 5
    with LLMServer(faults=Faults(rate_malformed=1.0)) as server:
        # Neither SDK wraps a bad body in its own error type: providers must catch ValueError.
        with pytest.raises(ValueError):
            _claude(server, max_retries=0).messages.create(model=MODEL, max_tokens=5, messages=_ask("x"))
        with pytest.raises(ValueError):
            _generate(server, "x")


def test_faults_are_deterministic_for_a_seed() -> None:
    def outcomes(faults: Faults) -> list[str | None]:
        plan = FaultPlan(faults)
        return [plan.draw() for _ in range(200)]

    faults = Faults(rate_429=0.2, rate_500=0.05, rate_malformed=0.05, seed=1)
    first = outcomes(faults)
    assert (
        first
        == outcomes(faults)
        != outcomes(Faults(rate_429=0.2, rate_500=0.05, rate_malformed=0.05, seed=2))
    )
    assert 20 <= first.count("rate_429") <= 60 and first.count(None) >= 100
    assert outcomes(Faults(fail_first_n=3, seed=1))[:4] == ["fail_first_n"] * 3 + [None]
    with pytest.raises(ValueError):
        Faults(rate_429=0.8, rate_500=0.3)

    # Through the server, sequential requests see exactly the plan's sequence.
    with LLMServer(faults=faults) as server:
        client = _claude(server, max_retries=0)
        for _ in range(30):
            with contextlib.suppress(anthropic.APIStatusError, ValueError):  # ValueError: malformed body
                client.messages.create(model=MODEL, max_tokens=5, messages=_ask("x"))
        assert [r.fault for r in server.requests] == first[:30]


def test_sdk_retries_succeed_against_fail_first_n() -> None:
    with LLMServer(faults=Faults(fail_first_n=2)) as server:
        message = _claude(server).messages.create(model=MODEL, max_tokens=5, messages=_ask("x"))  # 2 retries
        assert message.content[0].text
        logged = server.requests
        assert [r.status for r in logged] == [500, 500, 200]
        assert [r.headers["x-stainless-retry-count"] for r in logged] == ["0", "1", "2"]

        server.faults = Faults(fail_first_n=2, fail_first_status=429)
        retry = types.HttpRetryOptions(attempts=3, initial_delay=0.01, max_delay=0.05)
        assert _generate(server, "x", retry_options=retry).text
        assert [r.status for r in server.requests[3:]] == [429, 429, 200]


def test_anthropic_sdk_waits_for_retry_after() -> None:
    # 0.8 s is above the SDK's own first backoff (at most 0.5 s), so only retry-after explains the wait.
    with LLMServer(faults=Faults(fail_first_n=1, fail_first_status=429, retry_after_s=0.8)) as server:
        _claude(server).messages.create(model=MODEL, max_tokens=5, messages=_ask("x"))
        first, second = server.requests
        assert first.status == 429 and second.status == 200
        assert second.received_at - first.responded_at >= 0.8


def test_rpm_limit_caps_the_accepted_rate() -> None:
    with LLMServer(rpm_limit=1200, rpm_burst=1) as server:  # 20 per second
        client = _claude(server, max_retries=0)
        give_up = time.monotonic() + 10.0
        waits: list[float] = []  # the retry-after of every refusal

        def accepted_span() -> float:
            times = [r.received_at for r in server.requests if r.status == 200]
            return max(times) - min(times) if times else 0.0

        def hammer() -> None:
            # a second of accepted requests, however late the threads start on a busy machine
            while accepted_span() < 1.0 and time.monotonic() < give_up:
                try:
                    client.messages.create(model=MODEL, max_tokens=5, messages=_ask("x"))
                except anthropic.RateLimitError as error:
                    waits.append(float(error.response.headers["retry-after"]))

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        accepted = [r for r in server.requests if r.status == 200]
        refused = [r for r in server.requests if r.status == 429]
        assert accepted_span() >= 1.0, "the client never kept the server busy for a second"
        assert 15 <= len(accepted) <= 2 + 20 * accepted_span()  # one per 1/20 s, one in the bucket
        assert refused and all(r.fault == "rpm_limit" for r in refused)
        assert len(waits) == len(refused) and all(0 < wait <= 0.05 for wait in waits)  # one token: 1/20 s
        assert 15 <= server.requests_per_second(status=200) <= 25


def test_two_hundred_requests_in_flight_overlap() -> None:
    async def burst(server: LLMServer) -> None:
        async with anthropic.AsyncAnthropic(api_key=KEY, base_url=server.url, max_retries=0) as client:
            calls = [
                client.messages.create(model=MODEL, max_tokens=20, messages=_ask(f"prompt {i}"))
                for i in range(200)
            ]
            answers = await asyncio.gather(*calls)
        assert len({a.content[0].text for a in answers}) == 200

    with LLMServer(latency_s=0.2) as server:
        started = time.monotonic()
        asyncio.run(burst(server))
        assert time.monotonic() - started < 5  # 200 x 0.2 s = 40 s if the waits did not overlap
        events = sorted(
            [(r.received_at, 1) for r in server.requests] + [(r.responded_at, -1) for r in server.requests]
        )
        in_flight = peak = 0
        for _, step in events:
            in_flight += step
            peak = max(peak, in_flight)
        assert peak >= 100


def test_api_keys_are_never_recorded() -> None:
    secret = "sk-very-secret-0123456789"
    with LLMServer(api_key=secret) as server:
        anthropic.Anthropic(api_key=secret, base_url=server.url).messages.create(
            model=MODEL, max_tokens=5, messages=_ask("x")
        )
        gemini = _gemini(server, api_key=secret)
        gemini.models.generate_content(model=GEMINI, contents="x")
        body = {"contents": [{"parts": [{"text": "x"}]}]}
        assert _post(server.url + f"/v1beta/models/{GEMINI}:generateContent?key={secret}", body, {})[0] == 200
        assert (
            _post(server.url + "/v1/messages", {}, {"x-api-key": secret, "anthropic-version": "1"})[0] == 400
        )
        with pytest.raises(anthropic.AuthenticationError):
            _claude(server, max_retries=0).messages.create(model=MODEL, max_tokens=5, messages=_ask("x"))
        with pytest.raises(genai_errors.ClientError):
            _generate(server, "x")
        logged = server.requests
        assert len(logged) == 6 and all(r.api_key_present for r in logged)
        assert secret not in repr(logged)
        assert logged[0].headers["authorization"] == "[REDACTED]"
        assert logged[1].headers["x-goog-api-key"] == "[REDACTED]"


def test_public_names_are_pinned() -> None:
    import tests.loopback

    assert sorted(tests.loopback.__all__) == [
        "ErrorReply",
        "Faults",
        "LLMServer",
        "RecordedRequest",
        "Responder",
        "ResponderRequest",
        "schema_instance",
    ]


# ---------------------------------------------------------------- OpenAI Chat Completions and Batch API


def _openai(server: LLMServer, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY, base_url=server.openai_url, **options)


def _complete(client: openai.OpenAI, prompt: str = "x", *, raw: bool = False, **fields: Any) -> Any:
    """A Chat Completions call with plain dicts (the SDK's TypedDict overloads are not the point here)."""
    chat = client.chat.completions
    create: Any = chat.with_raw_response.create if raw else chat.create
    return create(model="gpt-5-mini", messages=_ask(prompt), **fields)


def test_openai_chat_completion_has_usage_and_the_loopback_answer(server: LLMServer) -> None:
    create: Any = _openai(server).chat.completions.create
    completion = create(
        model="gpt-5-mini", messages=[{"role": "system", "content": "Be brief."}, *_ask("hello")]
    )
    claude = _text(_claude(server), "hello")
    choice = completion.choices[0]
    assert choice.message.content == claude and choice.finish_reason == "stop"  # same pure answer
    assert completion.usage is not None and completion.usage.prompt_tokens == 4  # ceil(14 chars / 4)
    assert server.requests[0].endpoint == "chat.completions" and server.requests[0].provider == "openai"


def test_openai_json_schema_answers_valid_json_and_refuses_what_openai_refuses(server: LLMServer) -> None:
    client = _openai(server, max_retries=0)
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": TICKET_SCHEMA}}
    answer = _complete(client, response_format=fmt)
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), TICKET_SCHEMA)
    strict = {"type": "json_schema", "json_schema": {"name": "t", "schema": TICKET_SCHEMA, "strict": True}}
    enum_root = {"type": "json_schema", "json_schema": {"name": "t", "schema": {"enum": ["a"]}}}
    for bad in (strict, enum_root):  # strict needs closed objects; the root must be an object
        with pytest.raises(openai.BadRequestError, match="Invalid schema"):
            _complete(client, response_format=bad)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        _complete(client, max_tokens=5, max_completion_tokens=5)
    with (
        LLMServer(openai_structured=False) as plain,
        pytest.raises(openai.BadRequestError, match="not supported"),
    ):
        _complete(_openai(plain, max_retries=0), response_format={"type": "json_object"})


def test_openai_rate_limit_sends_x_ratelimit_headers_and_the_sdk_reads_errors() -> None:
    with LLMServer(rpm_limit=60, rpm_burst=1, faults=Faults(fail_first_n=1, fail_first_status=500)) as server:
        client = _openai(server, max_retries=0)
        with pytest.raises(openai.InternalServerError):
            _complete(client)
        ok = _complete(client, raw=True)
        with pytest.raises(openai.RateLimitError) as raised:
            _complete(client)
    assert (
        ok.headers["x-ratelimit-limit-requests"] == "60"
        and ok.headers["x-ratelimit-remaining-requests"] == "0"
    )
    headers = raised.value.response.headers
    assert "retry-after" not in headers and re.fullmatch(
        r"\d+ms|[\d.]+s", headers["x-ratelimit-reset-requests"]
    )
    assert raised.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]


def test_openai_batch_runs_from_an_uploaded_file_to_output_and_error_files() -> None:
    def refuse(request: ResponderRequest) -> str | None:
        if "refuse" in request["prompt"]:
            raise ErrorReply(400, "refused")
        return None

    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-5-mini", "messages": _ask(prompt)},
        }
        for i, prompt in enumerate(["one", "two", "please refuse"])
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    with LLMServer(batch_delay_s=0.2, responder=refuse) as server:
        client = _openai(server)
        uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.status == "in_progress" and batch.output_file_id is None
        time.sleep(0.3)
        done = client.batches.retrieve(batch.id)
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
        out = [json.loads(x) for x in client.files.content(done.output_file_id or "").text.splitlines()]
        errors = [json.loads(x) for x in client.files.content(done.error_file_id or "").text.splitlines()]
        assert client.files.content(uploaded.id).content == data
    assert [o["custom_id"] for o in out] == ["r0", "r1"] and errors[0]["custom_id"] == "r2"
    assert out[0]["response"]["body"]["choices"][0]["message"]["content"].startswith("Loopback answer")
    assert errors[0]["response"]["status_code"] == 400
