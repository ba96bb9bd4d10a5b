"""The provider layer, driven through the real ``anthropic``, ``google-genai`` and ``openai`` SDKs against
the loopback server (no Ray, no network): answers and usage, structured output, error mapping, credentials
from the environment, secrets kept out of errors, the offline and replay providers, and the registry.
"""

from __future__ import annotations

import asyncio
import json
import math
import pickle
import socket
from collections.abc import Coroutine, Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import pytest

import operators.providers
from operators.providers import (
    BadResponse,
    ConnectionFailed,
    KeyRejected,
    LlmRequest,
    LlmResponse,
    Provider,
    ProviderConfigError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    RecordingMissing,
    RequestRejected,
    ServerError,
    TokenCounter,
    available_providers,
    get_provider,
    register_provider,
    registry,
)
from operators.providers.offline import schema_instance
from tests.loopback import ErrorReply, Faults, LLMServer, ResponderRequest, wire
from tests.loopback.schema import TICKET_SCHEMA

# google-genai's async transport subclasses aiohttp.ClientSession, which aiohttp deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")

KEY = "test-key-0123456789"
MODELS = {"anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash", "openai": "gpt-5-mini"}
T = TypeVar("T")


def _validate(schema: dict[str, Any], instance: Any) -> None:
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(instance)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _ask(provider: Provider, *requests: LlmRequest) -> list[LlmResponse]:
    """Answer the requests one after the other on one loop, then close the provider."""
    try:
        return [await provider.call(request) for request in requests]
    finally:
        await provider.close()


async def _fail(provider: Provider, request: LlmRequest) -> ProviderError:
    """The ProviderError that answering ``request`` raises."""
    try:
        with pytest.raises(ProviderError) as raised:
            await provider.call(request)
    finally:
        await provider.close()
    return raised.value


def _request(name: str, prompt: str = "hello there", **fields: Any) -> LlmRequest:
    return LlmRequest(provider=name, model=MODELS.get(name, "offline-model"), prompt=prompt, **fields)


def _provider(name: str, server: LLMServer, **config: Any) -> Provider:
    url = server.openai_url if name == "openai" else server.url
    return get_provider(name, {"api_key": KEY, "base_url": url, **config})


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer() as running:
        yield running


@pytest.fixture(autouse=True)
def _no_provider_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials of the developer's shell must not leak into (or decide) these tests."""
    for name in (
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "GOOGLE_GEMINI_BASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)


SDK_PROVIDERS = pytest.mark.parametrize("name", ["anthropic", "gemini", "openai"])


# ---------------------------------------------------------------- answers


@SDK_PROVIDERS
def test_text_answer_with_usage(server: LLMServer, name: str) -> None:
    request = _request(name, system="Be brief.", temperature=0.2, max_tokens=100)
    (response,) = _run(_ask(_provider(name, server), request))
    assert response.text and response.parsed is None and response.source == "live"
    # The loopback counts the system prompt and the message: ceil(chars / 4).
    assert response.input_tokens == math.ceil(len("Be brief.hello there") / 4) and response.output_tokens >= 1
    assert response.model == MODELS[name] and response.stop_reason == "end_turn"
    assert response.request_id and response.latency_s > 0
    logged = server.requests
    assert len(logged) == 1 and logged[0].provider == name and logged[0].status == 200
    assert logged[0].usage is not None and response.output_tokens in logged[0].usage.values()
    assert "Be brief." in json.dumps(logged[0].body)  # the system prompt reached the API


def test_every_provider_gives_the_loopback_answer_and_cuts_at_max_tokens(server: LLMServer) -> None:
    names = ("anthropic", "gemini", "openai")
    claude, gemini, openai = (_run(_ask(_provider(n, server), _request(n))) for n in names)
    assert claude[0].text == gemini[0].text == openai[0].text  # a pure function of the prompt
    for name in names:
        (cut,) = _run(_ask(_provider(name, server), _request(name, max_tokens=1)))
        assert cut.stop_reason == "max_tokens" and cut.output_tokens == 1


@SDK_PROVIDERS
def test_structured_output_validates_against_the_schema(server: LLMServer, name: str) -> None:
    request = _request(name, "my invoice is wrong", output_schema=TICKET_SCHEMA, max_tokens=500)
    (response,) = _run(_ask(_provider(name, server), request))
    _validate(TICKET_SCHEMA, response.parsed)
    assert response.text is None
    body = server.requests[0].body
    if name == "anthropic":
        assert body["tool_choice"]["type"] == "tool"
        assert body["tools"][0]["input_schema"] == TICKET_SCHEMA
    elif name == "openai":
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["schema"] == TICKET_SCHEMA
    else:
        assert body["generationConfig"]["responseMimeType"] == "application/json"
        assert "responseJsonSchema" in body["generationConfig"]


@SDK_PROVIDERS
def test_labels_constrain_the_answer(server: LLMServer, name: str) -> None:
    request = _request(name, "the app crashes", labels=("bug", "billing", "other"))
    (response,) = _run(_ask(_provider(name, server), request))
    assert response.text == response.parsed == "bug"  # the loopback answers an enum's first value


# ---------------------------------------------------------------- failures


@SDK_PROVIDERS
@pytest.mark.parametrize(
    ("faults", "error", "status", "retry_after"),
    [
        (Faults(rate_429=1.0, retry_after_s=0.7), RateLimited, 429, 0.7),
        (Faults(rate_500=1.0), ServerError, 500, None),
        (Faults(fail_first_n=1, fail_first_status=503), ServerError, 503, None),
        (Faults(rate_malformed=1.0), BadResponse, None, None),
    ],
    ids=["429", "500", "503", "malformed"],
)
def test_faults_map_to_retryable_errors(
    name: str, faults: Faults, error: type[ProviderError], status: int | None, retry_after: float | None
) -> None:
    with LLMServer(faults=faults) as server:
        raised = _run(_fail(_provider(name, server), _request(name)))
        assert type(raised) is error and raised.retryable and raised.provider == name
        assert raised.status == status and raised.retry_after_s == retry_after
        assert len(server.requests) == 1  # the SDK's own retries are off: headrace retries


@SDK_PROVIDERS
def test_overload_is_retryable(name: str) -> None:
    with LLMServer(faults=Faults(rate_529=1.0)) as server:
        raised = _run(_fail(_provider(name, server), _request(name)))
    # Anthropic's 529 "overloaded" is a rate signal; Gemini and OpenAI answer an overload as 503.
    expected = (RateLimited, 529) if name == "anthropic" else (ServerError, 503)
    assert (type(raised), raised.status, raised.retryable) == (*expected, True)


@SDK_PROVIDERS
def test_a_hang_longer_than_the_timeout_is_a_provider_timeout(name: str) -> None:
    with LLMServer(faults=Faults(rate_timeout=1.0, hang_s=5)) as server:
        raised = _run(_fail(_provider(name, server), _request(name, timeout_s=0.3)))
        assert isinstance(raised, ProviderTimeout) and raised.retryable and raised.status is None
        assert len(server.requests) == 1 and server.requests[0].fault == "rate_timeout"


@SDK_PROVIDERS
def test_rejections_are_final_and_never_show_the_key(name: str) -> None:
    secret = "sk-super-secret-abcdef0123456789"

    def echo_key(request: ResponderRequest) -> str:  # a careless server that echoes the caller's key
        raise ErrorReply(400, f"invalid request for key {secret}")

    with LLMServer(api_key="another-key-entirely") as server:
        wrong_key = _run(_fail(_provider(name, server, api_key=secret), _request(name)))
    with LLMServer(responder=echo_key) as server:
        echoed = _run(_fail(_provider(name, server, api_key=secret), _request(name)))
    # Gemini answers a bad key with 400 INVALID_ARGUMENT (reason API_KEY_INVALID), as the real API does:
    # still a refused key (KeyRejected, which stops a run); Anthropic and OpenAI with 401.
    refused_key = KeyRejected if name == "gemini" else RequestRejected
    for raised, kind, status in (
        (wrong_key, refused_key, 400 if name == "gemini" else 401),
        (echoed, RequestRejected, 400),
    ):
        assert type(raised) is kind and not raised.retryable and raised.status == status
        assert secret not in str(raised) and secret not in repr(raised) and raised.__cause__ is None
    assert "[REDACTED]" in str(echoed)


@SDK_PROVIDERS
def test_a_refused_connection_is_retryable(name: str) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = get_provider(name, {"api_key": KEY, "base_url": f"http://127.0.0.1:{port}"})
    raised = _run(_fail(provider, _request(name, timeout_s=2)))
    assert type(raised) is ConnectionFailed and raised.retryable and raised.status is None


def test_errors_survive_pickling() -> None:
    error = RateLimited("slow down", provider="anthropic", status=429, retry_after_s=0.7)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is RateLimited and repr(copy) == repr(error) and copy.retryable


# ---------------------------------------------------------------- credentials and endpoints


def test_sdk_variables_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    with LLMServer(api_key=KEY) as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("GOOGLE_API_KEY", KEY)  # the fallback of GEMINI_API_KEY
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_url)
        for name in ("anthropic", "gemini", "openai"):
            assert _run(_ask(get_provider(name, {}), _request(name)))[0].text
        monkeypatch.setenv("GEMINI_API_KEY", KEY)
        monkeypatch.setenv("GOOGLE_API_KEY", "wrong-google-key")  # GEMINI_API_KEY comes first
        assert _run(_ask(get_provider("gemini", {}), _request("gemini")))[0].text
        assert [r.status for r in server.requests] == [200, 200, 200, 200]


def test_config_wins_over_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    with LLMServer(api_key=KEY) as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "wrong-env-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
        assert _run(_ask(_provider("anthropic", server), _request("anthropic")))[0].text


@SDK_PROVIDERS
def test_missing_key_and_unknown_config_keys_are_config_errors(name: str) -> None:
    with pytest.raises(ProviderConfigError, match="API_KEY"):
        get_provider(name, {})
    with pytest.raises(ProviderConfigError, match="base_ur"):
        get_provider(name, {"api_key": KEY, "base_ur": "http://x"})


# ---------------------------------------------------------------- offline


def test_offline_is_deterministic_and_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: Any) -> None:
        raise AssertionError("the offline provider opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    requests = [
        _request("offline", "first prompt"),
        _request("offline", "second prompt"),
        _request("offline", "my Invoice is wrong", labels=("bug", "billing", "other")),
        _request("offline", "route me", labels=("bug", "billing", "other")),
        _request("offline", "extract", output_schema=TICKET_SCHEMA),
        _request("offline", "x" * 100, max_tokens=3),
    ]
    config = {"answers": {"invoice": "billing"}}
    first, again = (_run(_ask(get_provider("offline", config), *requests)) for _ in range(2))
    assert first == again and first[0].text != first[1].text
    assert first[2].text == first[2].parsed == "billing"  # an answers rule, case-insensitive
    assert first[3].text in ("bug", "billing", "other")
    _validate(TICKET_SCHEMA, first[4].parsed)
    assert first[5].stop_reason == "max_tokens" and first[5].output_tokens == 3
    assert first[0].input_tokens == math.ceil(len("first prompt") / 4)
    assert all(r.source == "offline" for r in first)


@pytest.mark.parametrize(
    "schema",
    [
        TICKET_SCHEMA,
        {"type": "integer", "exclusiveMinimum": 10, "multipleOf": 4},
        {"type": "number", "maximum": -2.5},
        {"type": "string", "minLength": 40, "format": "date-time"},
        {"anyOf": [{"type": "object", "properties": {"a": {"const": 3}}, "required": ["a"]}, {}]},
        {"allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]}, {"required": ["b"]}]},
        {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}], "minItems": 2},
    ],
)
def test_offline_schema_instances_validate(schema: dict[str, Any]) -> None:
    _validate(schema, schema_instance(schema))


# ---------------------------------------------------------------- replay


def test_replay_records_then_answers_without_calling(server: LLMServer, tmp_path: Path) -> None:
    path = tmp_path / "recordings" / "calls.jsonl"
    inner = {"api_key": KEY, "base_url": server.url}
    requests = [
        _request("replay", "one"),
        _request("replay", "two", output_schema=TICKET_SCHEMA),
        _request("replay", "one"),
    ]
    requests = [LlmRequest(**{**r.to_json(), "model": MODELS["anthropic"], "labels": None}) for r in requests]
    recorder = get_provider(
        "replay", {"path": str(path), "mode": "record", "provider": "anthropic", "provider_config": inner}
    )
    recorded = _run(_ask(recorder, *requests))
    assert [r.source for r in recorded] == ["live", "live", "replay"]  # the repeat is already recorded
    assert len(server.requests) == 2
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2 and KEY not in path.read_text()

    server.clear()
    player = get_provider("replay", {"path": str(path), "provider": "anthropic"})  # replay-only
    replayed = _run(_ask(player, *requests))
    assert server.requests == []
    assert [(r.text, r.parsed, r.input_tokens, r.output_tokens) for r in replayed] == [
        (r.text, r.parsed, r.input_tokens, r.output_tokens) for r in recorded
    ]
    unseen = LlmRequest(provider="replay", model=MODELS["anthropic"], prompt="never asked")
    missing = _run(_fail(get_provider("replay", {"path": str(path), "provider": "anthropic"}), unseen))
    key = LlmRequest(provider="anthropic", model=MODELS["anthropic"], prompt="never asked").fingerprint()
    assert type(missing) is RecordingMissing and key in str(missing) and not missing.retryable


def test_fingerprint_covers_the_answer_not_the_timeout() -> None:
    base = _request("anthropic", output_schema={"type": "object", "properties": {}})
    same = _request("anthropic", output_schema={"properties": {}, "type": "object"}, timeout_s=5)
    assert base.fingerprint() == same.fingerprint()
    for change in ({"prompt": "other"}, {"system": "s"}, {"temperature": 0.0}, {"max_tokens": 7}):
        assert _request("anthropic", **change).fingerprint() != _request("anthropic").fingerprint()
    with pytest.raises(ValueError):
        _request("anthropic", max_tokens=0)


# ---------------------------------------------------------------- registry


def test_registry_lists_builtins_and_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    target, group = "operators.providers.offline:OfflineProvider", registry.ENTRY_POINT_GROUP
    plugin, shadow = EntryPoint("echo", target, group), EntryPoint("anthropic", target, group)
    monkeypatch.setattr(registry, "_entry_points", lambda: [plugin, shadow])
    registry._reset_plugins()
    try:
        with pytest.warns(RuntimeWarning, match="built-in"):
            names = available_providers()
        assert {"anthropic", "gemini", "openai", "offline", "replay", "echo"} <= set(names)
        assert type(get_provider("echo", {})).__name__ == "OfflineProvider"
        with pytest.raises(ProviderConfigError, match="known: anthropic"):
            get_provider("nope", {})
        with pytest.raises(ValueError):
            register_provider("offline", lambda config: get_provider("offline", config))
    finally:
        registry._reset_plugins()


def test_every_provider_satisfies_the_protocol(server: LLMServer, tmp_path: Path) -> None:
    built = [
        _provider("anthropic", server),
        _provider("gemini", server),
        _provider("openai", server),
        get_provider("offline", {}),
        get_provider("replay", {"path": str(tmp_path / "r.jsonl"), "provider": "offline"}),
    ]
    assert all(isinstance(p, Provider) for p in built)
    assert all(KEY not in repr(p) for p in built)


def test_public_names_are_pinned() -> None:
    assert sorted(operators.providers.__all__) == [
        "BadResponse",
        "BatchProvider",
        "BatchStatus",
        "ConnectionFailed",
        "KeyRejected",
        "LlmRequest",
        "LlmResponse",
        "Provider",
        "ProviderConfigError",
        "ProviderError",
        "ProviderTimeout",
        "RateLimited",
        "RecordingMissing",
        "RequestRejected",
        "ServerError",
        "TokenCounter",
        "available_providers",
        "get_provider",
        "register_provider",
    ]


def test_gemini_thinking_tokens_count_as_output_tokens() -> None:
    """Google bills a 2.5 model's thoughts as output, so spend and budgets must count them."""
    from google.genai import types

    from operators.providers.gemini import _response

    answer = types.GenerateContentResponse(
        candidates=[types.Candidate(content=types.Content(role="model", parts=[types.Part(text="ok")]))],
        usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=12, candidates_token_count=3, thoughts_token_count=40
        ),
    )
    response = _response(LlmRequest(provider="gemini", model="gemini-2.5-flash", prompt="hi"), answer, 0.1)
    assert (response.input_tokens, response.output_tokens, response.text) == (12, 43, "ok")


# ---------------------------------------------------------------- token counts


async def _count(provider: Provider, *requests: LlmRequest) -> list[int]:
    """Count the requests' input tokens one after the other on one loop, then close the provider."""
    assert isinstance(provider, TokenCounter)
    try:
        return [await provider.count_tokens(request) for request in requests]
    finally:
        await provider.close()


def _server_count(name: str, body: Any, model: str | None) -> int:
    """What the loopback's token-count endpoint computed for ``body``."""
    if name == "anthropic":
        return wire.parse_anthropic({**body, "max_tokens": 1}).input_tokens
    return wire.parse_gemini(body, model or "").input_tokens


COUNTING = pytest.mark.parametrize("name", ["anthropic", "gemini"])  # Chat Completions counts nothing


@COUNTING
def test_count_tokens_is_what_the_api_counts(server: LLMServer, name: str) -> None:
    plain = _request(name, system="Be brief.", temperature=0.2, max_tokens=100)
    structured = _request(name, "my invoice is wrong", output_schema=TICKET_SCHEMA)
    bare = _request(name, "my invoice is wrong")
    counts = _run(_count(_provider(name, server), plain, structured, bare))
    logged = server.requests
    assert [r.endpoint for r in logged] == ["count_tokens" if name == "anthropic" else "countTokens"] * 3
    assert counts == [_server_count(name, r.body, r.model) for r in logged]
    # The loopback counts ceil(chars / 4) of the system prompt and the message; Gemini's countTokens
    # takes contents only, so the system prompt goes as a part of its own (parts are joined by a newline).
    counted = "Be brief." + ("" if name == "anthropic" else "\n") + "hello there"
    assert counts[0] == math.ceil(len(counted) / 4)
    assert counts[1] > counts[2]  # the answer's schema (Anthropic: its tool) is counted too


@COUNTING
def test_a_count_with_a_bad_key_is_rejected_without_the_key(name: str) -> None:
    secret = "sk-super-secret-abcdef0123456789"
    with LLMServer(api_key="another-key-entirely") as server:
        provider = _provider(name, server, api_key=secret)
        with pytest.raises(ProviderError) as raised:
            _run(_count(provider, _request(name)))
    error = raised.value
    assert type(error) is (
        KeyRejected if name == "gemini" else RequestRejected
    )  # Google: 400 API_KEY_INVALID
    assert not error.retryable and error.provider == name
    assert secret not in str(error) and secret not in repr(error) and error.__cause__ is None


def test_only_the_sdk_providers_count_tokens(server: LLMServer, tmp_path: Path) -> None:
    replay = get_provider("replay", {"path": str(tmp_path / "r.jsonl"), "provider": "anthropic"})
    assert isinstance(_provider("anthropic", server), TokenCounter)
    assert isinstance(_provider("gemini", server), TokenCounter)
    assert not isinstance(_provider("openai", server), TokenCounter)  # estimates count locally
    assert not isinstance(get_provider("offline", {}), TokenCounter)
    assert not isinstance(replay, TokenCounter)  # a recording holds answers, not counts
