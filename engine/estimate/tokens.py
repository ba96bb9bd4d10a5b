"""Counting the input tokens of the sampled requests: locally (about four characters a token), or by the
provider's token-count endpoint (``--count-tokens api``).

A provider counts through its API when it is a ``TokenCounter`` (anthropic, gemini); any other provider
is counted locally, and the method says so. Identical requests are counted once, a few at a time, and a
count the provider failed with a retryable error is tried again (``LLM_RETRY``, as a run would retry the
call itself): providers never retry on their own.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Protocol

from engine.errors import HeadraceError
from engine.estimate.results import CountMode
from engine.physical import LLM_RETRY
from engine.plan import Problem
from engine.spec.models import Pipeline
from operators.llm_rows import Target
from operators.providers.base import LlmRequest, Provider, TokenCounter
from operators.providers.claude import messages_body
from operators.providers.errors import ProviderError
from operators.providers.offline import estimate_tokens
from operators.providers.registry import get_provider

_COUNT_CONCURRENCY = 4
_TOOL_PROMPT_TOKENS: Mapping[str, int] = {"anthropic": 313}
"""Input tokens a provider adds to a call that forces a tool (every structured answer): Anthropic's
documented tool-use system prompt for ``tool_choice`` any/tool."""
_API_METHODS: Mapping[str, str] = {
    "anthropic": "api: anthropic messages.count_tokens",
    "gemini": "api: gemini models.count_tokens (system prompt and answer schema as extra parts)",
}
_LOCAL_INSTEAD = "`--count-tokens local` estimates without the API"


class Counter(Protocol):
    """Counts the input tokens of one provider's requests; ``method`` says how, for the report."""

    method: str

    async def count(self, request: LlmRequest) -> int:
        """The input tokens of ``request``."""
        ...

    async def close(self) -> None:
        """Release the counter's connections, if any."""
        ...


def local_tokens(request: LlmRequest, provider: str) -> int:
    """About four characters a token over what a call sends; the offline provider's own rule for it.

    For anthropic, what the call sends is its Messages body: the system prompt, the message, and for a
    structured answer the tool definition (name, description, schema as JSON), plus the tool-use system
    prompt the API adds. Other providers: the prompt, the system prompt and the answer schema."""
    if provider == "offline":
        return estimate_tokens((request.system or "") + request.prompt)
    chars = len(request.prompt) + len(request.system or "")
    schema = request.structured_schema()
    if schema is None:
        return math.ceil(chars / 4)
    if provider == "anthropic":
        tools = messages_body(request)["tools"]
        return math.ceil((chars + len(json.dumps(tools, sort_keys=True))) / 4) + _TOOL_PROMPT_TOKENS[provider]
    return math.ceil((chars + len(json.dumps(schema))) / 4) + _TOOL_PROMPT_TOKENS.get(provider, 0)


class LocalCounter:
    """Counts without a network: ``local_tokens`` under ``rules``, the provider whose prices apply.

    ``built`` is a provider made only to learn that it cannot count (``--count-tokens api``): closed
    with the counter.
    """

    def __init__(self, rules: str, built: Provider | None = None) -> None:
        self.rules = rules
        self._built = built
        tool = _TOOL_PROMPT_TOKENS.get(rules)
        if rules == "offline":
            self.method = "local: the offline provider's own count (characters / 4)"
        else:
            sent = (
                "prompt, system prompt, tool definition"
                if rules == "anthropic"
                else "prompt, system prompt, answer schema"
            )
            self.method = f"local: about 4 characters a token ({sent})"
            if tool:
                self.method += f", plus the {tool}-token tool-use system prompt of structured answers"

    async def count(self, request: LlmRequest) -> int:
        """The local count of ``request``."""
        return local_tokens(request, self.rules)

    async def close(self) -> None:
        """Close the provider built for nothing, if any."""
        if self._built is not None:
            await self._built.close()


class _CountingProvider(Provider, TokenCounter, Protocol):
    """A provider with a token-count endpoint."""


class ApiCounter:
    """Counts through a provider's token-count endpoint, retrying what the provider says is retryable."""

    def __init__(self, name: str, provider: _CountingProvider) -> None:
        self.name = name
        self.method = _API_METHODS.get(name, f"api: {name} count_tokens")
        self._provider = provider

    async def count(self, request: LlmRequest) -> int:
        """The provider's count of ``request``; ``HeadraceError`` once it fails for good."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._provider.count_tokens(request)
            except ProviderError as exc:  # its message is free of keys: providers redact them
                if not exc.retryable or attempt >= LLM_RETRY.max_attempts:
                    status = f", HTTP {exc.status}" if exc.status is not None else ""
                    raise HeadraceError(
                        f"{self.name} token count failed ({type(exc).__name__}{status}): {exc.message}; "
                        f"{_LOCAL_INSTEAD}"
                    ) from None
                await asyncio.sleep(LLM_RETRY.backoff_s(attempt, exc.retry_after_s))

    async def close(self) -> None:
        """Close the provider."""
        await self._provider.close()


def counters(
    pipeline: Pipeline, targets: Mapping[str, Target], mode: CountMode
) -> tuple[dict[str, Counter], list[Problem]]:
    """One counter per provider of the nodes' targets (by node), and a problem for each provider that
    cannot be built for ``--count-tokens api``, at the first node that uses it."""
    built: dict[str, Counter] = {}
    failed: set[str] = set()
    problems = []
    for node, target in targets.items():
        name = target.provider
        if name in built or name in failed:
            continue
        if mode == "local":
            built[name] = LocalCounter(pipeline.priced_as(name))
            continue
        try:
            provider = get_provider(name, pipeline.provider_config(name))
        except ProviderError as exc:
            failed.add(name)  # said once, at the first node that uses the provider
            problems.append(Problem(("nodes", node, "provider"), str(exc), _LOCAL_INSTEAD, code="provider"))
            continue
        if isinstance(provider, TokenCounter):
            built[name] = ApiCounter(name, provider)
        else:
            built[name] = LocalCounter(pipeline.priced_as(name), provider)
            built[name].method += f" ({name} has no token-count endpoint)"
    return built, problems


async def count_all(jobs: list[tuple[Counter, LlmRequest]], every: list[Counter]) -> list[int]:
    """Every request's input tokens, in order; identical requests are counted once. Closes ``every``
    counter, used or not."""
    slots = asyncio.Semaphore(_COUNT_CONCURRENCY)
    seen: dict[tuple[int, str], asyncio.Task[int]] = {}

    async def one(counter: Counter, request: LlmRequest) -> int:
        async with slots:
            return await counter.count(request)

    try:
        tasks = []
        for counter, request in jobs:
            key = (id(counter), request.fingerprint())
            if key not in seen:
                seen[key] = asyncio.ensure_future(one(counter, request))
            tasks.append(seen[key])
        return list(await asyncio.gather(*tasks))
    finally:
        for task in seen.values():
            task.cancel()
        await asyncio.gather(*seen.values(), return_exceptions=True)
        for counter in every:
            await counter.close()
