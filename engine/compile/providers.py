"""Compile-time checks of the LLM pools: every provider exists and can be built, every model has a price,
and a batch-mode node's provider has a batch API. A run would refuse any of these before its first call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from engine.physical import PoolPlan, check_prices
from engine.plan import Problem
from engine.spec.models import Pipeline
from operators.providers.base import BatchProvider, Provider
from operators.providers.errors import MissingCredentials, ProviderError
from operators.providers.pricing import PriceTable
from operators.providers.registry import get_provider


def check_pools(
    pools: Sequence[PoolPlan],
    pipeline: Pipeline,
    *,
    credentials: Literal["error", "warning"] = "error",
) -> tuple[PriceTable | None, list[Problem]]:
    """The run's price table, and the problems that would stop an LLM node's first call: a provider that
    cannot be built (a bad config; a missing key, reported with ``credentials`` severity), a batch mode
    its provider lacks, or a model without a price."""
    prices, problems = check_prices([(p.node, p.targets) for p in pools], pipeline)
    built: dict[str, Provider | ProviderError] = {}
    for pool in pools:
        for i, target in enumerate(pool.targets):
            where = ("nodes", pool.node, "provider") if i == 0 else ("nodes", pool.node, "fallback", i - 1)
            if target.provider not in built:
                try:
                    built[target.provider] = get_provider(
                        target.provider, pipeline.provider_config(target.provider)
                    )
                except ProviderError as exc:
                    built[target.provider] = exc
            provider = built[target.provider]
            if isinstance(provider, MissingCredentials):
                hint = "the machine that runs the pipeline needs it; `validate --strict` refuses this"
                problems.append(Problem(where, str(provider), hint, severity=credentials, code="credentials"))
                continue
            if isinstance(provider, ProviderError):
                problems.append(Problem(where, str(provider), code="provider"))
                continue
            provider = built[target.provider]
            if i == 0 and getattr(pool.spec, "mode", "online") == "batch":
                if not isinstance(provider, BatchProvider):
                    problems.append(
                        Problem(
                            ("nodes", pool.node, "mode"),
                            f"provider '{target.provider}' has no batch API",
                            "use `mode: online`, or a provider with one (anthropic, gemini, openai)",
                            code="provider",
                        )
                    )
                elif pool.spec.fallback:  # type: ignore[attr-defined]
                    problems.append(
                        Problem(
                            ("nodes", pool.node, "fallback"),
                            "`mode: batch` sends rows to the node's own provider only; fallbacks never apply",
                            "remove `fallback`, or use `mode: online`",
                            code="provider",
                        )
                    )
    return prices, problems
