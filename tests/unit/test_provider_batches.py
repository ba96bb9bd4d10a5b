"""Provider batch APIs (Anthropic Message Batches, Gemini batch mode) through the real SDKs against the
loopback server (no Ray, no network): answers mapped back by custom id, per-request errors, cancel, ids
refused before any HTTP, and secrets kept out of every error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar, cast

import jsonschema
import pytest

from operators.providers import (
    BatchProvider,
    BatchStatus,
    KeyRejected,
    LlmRequest,
    LlmResponse,
    Provider,
    ProviderError,
    RateLimited,
    RequestRejected,
    ServerError,
    get_provider,
)
from tests.loopback import ErrorReply, LLMServer, ResponderRequest
from tests.loopback.schema import TICKET_SCHEMA

# google-genai's async transport subclasses aiohttp.ClientSession, which aiohttp deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")

KEY = "test-key-0123456789"
MODELS = {"anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash", "openai": "gpt-5-mini"}
# The field names of the usage the loopback server records for a request, per provider.
USAGE = {
    "anthropic": ("input_tokens", "output_tokens"),
    "gemini": ("promptTokenCount", "candidatesTokenCount"),
    "openai": ("prompt_tokens", "completion_tokens"),
}
CREATE = {"anthropic": "batches.create", "gemini": "batchGenerateContent", "openai": "openai.batches.create"}
SDK_PROVIDERS = pytest.mark.parametrize("name", ["anthropic", "gemini", "openai"])
T = TypeVar("T")
Items = list[tuple[str, LlmRequest]]


class SdkProvider(Provider, BatchProvider, Protocol):
    """What the ``anthropic``, ``gemini`` and ``openai`` providers are: both interfaces."""


def _request(name: str, prompt: str, **fields: Any) -> LlmRequest:
    return LlmRequest(provider=name, model=MODELS[name], prompt=prompt, **fields)


def _items(name: str) -> Items:
    """Text, system-prompted, labelled and schema-constrained requests, with ids of every legal kind."""
    return [
        ("row-0", _request(name, "hello there")),
        ("row_1", _request(name, "summarise this", system="Be brief.", temperature=0.2, max_tokens=50)),
        ("Row2", _request(name, "the app crashes", labels=("bug", "billing", "other"))),
        ("r" * 64, _request(name, "my invoice is wrong", output_schema=TICKET_SCHEMA, max_tokens=500)),
    ]


def _provider(name: str, server: LLMServer, **config: Any) -> SdkProvider:
    url = server.openai_url if name == "openai" else server.url
    provider = get_provider(name, {"api_key": KEY, "base_url": url, **config})
    assert isinstance(provider, BatchProvider)
    return cast(SdkProvider, provider)


def _run(provider: SdkProvider, scenario: Callable[[SdkProvider], Awaitable[T]]) -> T:
    """Run ``scenario`` on one event loop, then close the provider on that loop."""

    async def main() -> T:
        try:
            return await scenario(provider)
        finally:
            await provider.close()

    return asyncio.run(main())


async def _until_ended(provider: BatchProvider, batch_id: str) -> BatchStatus:
    """Poll the batch until it has ended (the loopback ends it after ``batch_delay_s``)."""
    for _ in range(200):
        status = await provider.batch_status(batch_id)
        if status.ended:
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"batch {batch_id} did not end")


@pytest.fixture(autouse=True)
def _no_provider_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials of the developer's shell must not leak into (or decide) these tests."""
    for name in (
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer(batch_delay_s=0.2) as running:
        yield running


# ---------------------------------------------------------------- answers


@SDK_PROVIDERS
def test_a_batch_answers_every_request_by_custom_id_like_a_live_call(server: LLMServer, name: str) -> None:
    items = _items(name)

    async def scenario(provider: SdkProvider) -> tuple[BatchStatus, BatchStatus, dict[str, Any]]:
        batch_id = await provider.submit_batch(items)
        first = await provider.batch_status(batch_id)
        ended = await _until_ended(provider, batch_id)
        return first, ended, await provider.batch_results(batch_id)

    first, ended, results = _run(_provider(name, server), scenario)
    assert not first.ended and first.counts["processing"] == len(items)
    assert ended.counts == {"processing": 0, "succeeded": 4, "errored": 0, "canceled": 0, "expired": 0}
    assert set(results) == {custom_id for custom_id, _ in items}
    (created,) = [r for r in server.requests if r.endpoint == CREATE[name]]
    # Usage is what the server counted for the batch.
    inputs, outputs = USAGE[name]
    assert created.usage == {
        inputs: sum(r.input_tokens for r in results.values()),
        outputs: sum(r.output_tokens for r in results.values()),
    }

    # The same requests answered live: the loopback answer is a pure function of the request.
    live = _run(_provider(name, server), lambda p: asyncio.gather(*(p.call(r) for _, r in items)))
    for (custom_id, _), answer in zip(items, live, strict=True):
        batched = results[custom_id]
        assert isinstance(batched, LlmResponse)
        assert (batched.text, batched.parsed, batched.stop_reason) == (
            answer.text,
            answer.parsed,
            answer.stop_reason,
        )
        assert (batched.input_tokens, batched.output_tokens) == (answer.input_tokens, answer.output_tokens)
        assert batched.batch and not answer.batch and batched.source == "live" and batched.latency_s == 0.0
    assert results["Row2"].text == results["Row2"].parsed == "bug"
    jsonschema.Draft202012Validator(TICKET_SCHEMA).validate(results["r" * 64].parsed)


@SDK_PROVIDERS
def test_each_batch_request_is_the_body_a_live_call_sends(server: LLMServer, name: str) -> None:
    items = _items(name)
    _run(_provider(name, server), lambda p: p.submit_batch(items))
    *uploads, created = server.requests
    server.clear()
    _run(_provider(name, server), lambda p: asyncio.gather(*(p.call(r) for _, r in items)))
    live_bodies = sorted((r.body for r in server.requests), key=json.dumps)
    if name == "anthropic":
        sent = [entry["params"] for entry in created.body["requests"]]
    elif name == "openai":  # the requests went up as a JSONL file; the batch names that file
        (upload,) = uploads
        lines = [json.loads(line) for line in upload.body["file"].decode().splitlines()]
        assert created.body["input_file_id"].startswith("file-") and upload.body["purpose"] == "batch"
        assert [(ln["custom_id"], ln["method"], ln["url"]) for ln in lines] == [
            (i, "POST", "/v1/chat/completions") for i, _ in items
        ]
        sent = [line["body"] for line in lines]
    else:  # the batch names the model in each inlined request; generateContent names it in the URL
        inlined = created.body["batch"]["inputConfig"]["requests"]["requests"]
        assert [entry["metadata"] for entry in inlined] == [{"custom_id": i} for i, _ in items]
        sent = [{k: v for k, v in entry["request"].items() if k != "model"} for entry in inlined]
    assert sorted(sent, key=json.dumps) == live_bodies


# ---------------------------------------------------------------- failures


@SDK_PROVIDERS
def test_an_errored_request_fails_only_its_own_custom_id(name: str) -> None:
    def refuse_some(request: ResponderRequest) -> None:
        if "reject me" in request["prompt"]:
            raise ErrorReply(400, "this prompt is refused")
        if "throttle me" in request["prompt"]:
            raise ErrorReply(429, "slow down")
        if "break me" in request["prompt"]:
            raise ErrorReply(500, "internal error")
        return None

    items = [
        ("ok", _request(name, "hello there")),
        ("rejected", _request(name, "please reject me")),
        ("throttled", _request(name, "please throttle me", labels=("a", "b"))),
        ("broken", _request(name, "please break me", output_schema=TICKET_SCHEMA)),
    ]

    async def scenario(provider: SdkProvider) -> tuple[BatchStatus, dict[str, Any]]:
        batch_id = await provider.submit_batch(items)
        return await _until_ended(provider, batch_id), await provider.batch_results(batch_id)

    with LLMServer(batch_delay_s=0.1, responder=refuse_some) as server:
        status, results = _run(_provider(name, server), scenario)
    assert (status.counts["succeeded"], status.counts["errored"]) == (1, 3)
    assert isinstance(results["ok"], LlmResponse) and results["ok"].text
    rejected, throttled = results["rejected"], results["throttled"]
    assert type(rejected) is RequestRejected and rejected.status == 400 and not rejected.retryable
    assert "this prompt is refused" in str(rejected) and rejected.provider == name
    assert type(throttled) is RateLimited and throttled.status == 429 and throttled.retryable
    assert type(results["broken"]) is ServerError and results["broken"].retryable


@SDK_PROVIDERS
def test_a_canceled_batch_ends_and_every_request_can_be_sent_again(name: str) -> None:
    items = _items(name)

    async def scenario(provider: SdkProvider) -> tuple[BatchStatus, BatchStatus, dict[str, Any]]:
        batch_id = await provider.submit_batch(items)
        before = await provider.batch_status(batch_id)
        await provider.cancel_batch(batch_id)
        return before, await provider.batch_status(batch_id), await provider.batch_results(batch_id)

    with LLMServer(batch_delay_s=60) as server:
        before, after, results = _run(_provider(name, server), scenario)
        cancels = [r for r in server.requests if r.endpoint.endswith("cancel")]
    assert not before.ended and after.ended and after.counts["canceled"] == len(items)
    assert set(results) == {custom_id for custom_id, _ in items} and len(cancels) == 1
    for error in results.values():
        assert type(error) is ProviderError and error.retryable and "canceled" in str(error)


@SDK_PROVIDERS
def test_results_are_refused_before_the_batch_ends(name: str) -> None:
    async def scenario(provider: SdkProvider) -> ProviderError:
        batch_id = await provider.submit_batch(_items(name))
        with pytest.raises(ProviderError) as raised:
            await provider.batch_results(batch_id)
        return raised.value

    with LLMServer(batch_delay_s=60) as server:
        error = _run(_provider(name, server), scenario)
    assert not error.retryable and ("not ended" in str(error) or "results_url" in str(error))


@SDK_PROVIDERS
@pytest.mark.parametrize(
    ("items", "match"),
    [
        ([], "at least one"),
        ([("", None)], "1-64 characters"),
        ([("has space", None)], "1-64 characters"),
        ([("x" * 65, None)], "1-64 characters"),
        ([("ümlaut", None)], "1-64 characters"),
        ([("twice", None), ("twice", None)], "used twice"),
    ],
    ids=["empty", "blank", "space", "too-long", "non-ascii", "duplicate"],
)
def test_bad_custom_ids_are_refused_before_any_http(
    server: LLMServer, name: str, items: list[tuple[str, None]], match: str
) -> None:
    batch = [(custom_id, _request(name, "hello")) for custom_id, _ in items]
    with pytest.raises(ValueError, match=match):
        _run(_provider(name, server), lambda p: p.submit_batch(batch))
    assert server.requests == []


@pytest.mark.parametrize(("name", "other"), [("gemini", "gemini-2.5-pro"), ("openai", "gpt-5")])
def test_a_gemini_or_openai_batch_is_for_one_model(server: LLMServer, name: str, other: str) -> None:
    mixed = [("a", _request(name, "one")), ("b", LlmRequest(name, other, "two"))]
    with pytest.raises(ValueError, match="one model"):
        _run(_provider(name, server), lambda p: p.submit_batch(mixed))
    assert server.requests == []


@SDK_PROVIDERS
def test_an_unknown_batch_is_not_found(server: LLMServer, name: str) -> None:
    unknown = {"anthropic": "msgbatch_nope", "gemini": "batches/nope", "openai": "batch_nope"}[name]
    with pytest.raises(RequestRejected) as raised:
        _run(_provider(name, server), lambda p: p.batch_status(unknown))
    assert raised.value.status == 404 and not raised.value.retryable


@SDK_PROVIDERS
def test_the_api_key_never_shows_in_batch_errors(name: str) -> None:
    secret = "sk-super-secret-abcdef0123456789"

    def echo_key(request: ResponderRequest) -> None:  # a careless server that echoes the caller's key
        raise ErrorReply(400, f"invalid request for key {secret}")

    with LLMServer(api_key="another-key-entirely") as server, pytest.raises(ProviderError) as raised:
        _run(_provider(name, server, api_key=secret), lambda p: p.submit_batch(_items(name)))
    wrong_key = raised.value

    async def scenario(provider: SdkProvider) -> dict[str, Any]:
        batch_id = await provider.submit_batch(_items(name)[:1])
        await _until_ended(provider, batch_id)
        return await provider.batch_results(batch_id)

    with LLMServer(batch_delay_s=0.05, responder=echo_key) as server:
        (echoed,) = _run(_provider(name, server, api_key=secret), scenario).values()
    # Google refuses a wrong key with 400 API_KEY_INVALID: still a refused key (KeyRejected)
    assert type(wrong_key) is (KeyRejected if name == "gemini" else RequestRejected)
    assert wrong_key.__cause__ is None
    assert type(echoed) is RequestRejected and "[REDACTED]" in str(echoed)
    for error in (wrong_key, echoed):
        assert secret not in str(error) and secret not in repr(error)


# ---------------------------------------------------------------- resuming and the interface


@SDK_PROVIDERS
def test_a_batch_submitted_elsewhere_is_read_with_its_requests(server: LLMServer, name: str) -> None:
    items = _items(name)

    async def submit(provider: SdkProvider) -> str:
        batch_id = await provider.submit_batch(items)
        await _until_ended(provider, batch_id)
        return batch_id

    batch_id = _run(_provider(name, server), submit)
    # A new provider object (a resumed run) has not seen the requests: it needs them to read the answers.
    with pytest.raises(ValueError, match="pass its requests"):
        _run(_provider(name, server), lambda p: p.batch_results(batch_id))
    results = _run(_provider(name, server), lambda p: p.batch_results(batch_id, dict(items)))
    labelled = results["Row2"]
    assert isinstance(labelled, LlmResponse) and labelled.parsed == "bug"
    assert all(isinstance(r, LlmResponse) and r.batch for r in results.values())


def test_only_the_sdk_providers_are_batch_providers(server: LLMServer, tmp_path: Any) -> None:
    sdk_providers = ("anthropic", "gemini", "openai")
    assert all(isinstance(_provider(name, server), BatchProvider) for name in sdk_providers)
    offline = get_provider("offline", {})
    replay = get_provider("replay", {"path": str(tmp_path / "r.jsonl"), "provider": "offline"})
    assert not isinstance(offline, BatchProvider) and not isinstance(replay, BatchProvider)


def test_the_batch_marker_survives_json_and_old_json_still_loads() -> None:
    answer = LlmResponse("hi", None, 3, 1, "m", 0.0, "end_turn", "msg_1", "live", batch=True)
    assert LlmResponse.from_json(json.loads(json.dumps(answer.to_json()))) == answer
    written_before = {k: v for k, v in answer.to_json().items() if k != "batch"}
    assert LlmResponse.from_json(written_before).batch is False
