"""From counted samples to a node's figures: scaling, summing a node over its stages, pricing, and the
warnings an estimate gives (budgets it passes, sampled rows that fail, nodes no sampled row reaches).

Cost comes from the pipeline's ``PriceTable`` (its price overrides on top), at batch prices for
``mode: batch``; the worst case lets every call write max_tokens and every llm_extract row use all of its
attempts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from engine.estimate.answers import output_tokens
from engine.estimate.results import Estimate, EstimateOptions, NodeEstimate, RowsBasis
from engine.estimate.sample import Sample
from engine.estimate.walk import Occurrence
from engine.plan import Problem
from engine.spec.models import Pipeline
from operators.llm import LlmExtract, LlmSpec
from operators.providers.cache import ResponseCache
from operators.providers.pricing import PriceTable

_SUMMED = (
    "rows",
    "calls",
    "input_tokens",
    "output_tokens",
    "worst_case_input_tokens",
    "worst_case_output_tokens",
    "sampled_rows",
)
_SURENESS: tuple[RowsBasis, ...] = ("exact", "estimated", "upper bound")


def node_figures(
    found: Occurrence, counted: list[int], method: str, rules: str, options: EstimateOptions
) -> NodeEstimate:
    """A node's figures in one stage (``rules``: the provider whose token rules apply), before pricing."""
    spec: LlmSpec = found.node.spec  # type: ignore[assignment]
    scale = found.scale
    per_call, basis = output_tokens(spec, rules, options)
    attempts = spec.max_attempts if isinstance(spec, LlmExtract) else 1
    calls = round(len(found.requests) * scale)
    input_tokens = round(sum(counted) * scale)
    notes = list(found.notes)
    if found.failed:
        notes.append(
            f"{len(found.failed)} of {found.sampled} sampled rows fail to render their prompt (first: "
            f"{found.failed[0]}); they are not counted"
        )
    if attempts > 1:
        notes.append(f"worst case: each row may take all {attempts} attempts (max_attempts)")
    if spec.fallback:
        notes.append("fallback targets are not priced: only the node's own provider and model are")
    return NodeEstimate(
        node=found.node.id,
        op=spec.op,
        provider=found.target.provider,
        model=found.target.model,
        mode=spec.mode,
        rows=round(found.sampled * scale),
        rows_basis=found.basis,
        calls=calls,
        cached_calls=round(found.cached * scale) if found.cached is not None else None,
        input_tokens=input_tokens,
        output_tokens=calls * per_call,
        expected_usd=0.0,
        worst_case_input_tokens=input_tokens * attempts,
        worst_case_output_tokens=calls * attempts * spec.max_tokens,
        worst_case_usd=0.0,
        input_tokens_method=method,
        output_tokens_basis=basis,
        sampled_rows=found.sampled,
        notes=tuple(notes),
    )


def merged(a: NodeEstimate, b: NodeEstimate) -> NodeEstimate:
    """A node that feeds several sinks runs once per sink's stage: its figures add up."""
    sums = {name: getattr(a, name) + getattr(b, name) for name in _SUMMED}
    cached = None if a.cached_calls is None else a.cached_calls + (b.cached_calls or 0)
    basis = max(a.rows_basis, b.rows_basis, key=_SURENESS.index)
    notes = tuple(dict.fromkeys((*a.notes, *b.notes, "runs once for each sink it feeds")))
    return dataclasses.replace(a, **sums, cached_calls=cached, rows_basis=basis, notes=notes)


def priced(node: NodeEstimate, prices: PriceTable, pipeline: Pipeline) -> NodeEstimate:
    """``node`` with its expected and worst-case cost."""
    price = prices.price(pipeline.priced_as(node.provider), node.model)
    batch = node.mode == "batch"
    return dataclasses.replace(
        node,
        expected_usd=price.cost(node.input_tokens, node.output_tokens, batch=batch),
        worst_case_usd=price.cost(node.worst_case_input_tokens, node.worst_case_output_tokens, batch=batch),
    )


def method(options: EstimateOptions, prices: PriceTable, cache: ResponseCache | None) -> dict[str, Any]:
    """How the figures were found, for the report."""
    return {
        "sample_rows": options.sample_rows,
        "count_tokens": options.count_tokens,
        "rows": "sampled rows reaching each node × source rows / sampled source rows",
        "output_tokens": "per node: labels, a schema instance, or an assumption (see output_tokens_basis)",
        "worst_case": "every call writes max_tokens; an llm_extract row may use all of its max_attempts",
        "prices_as_of": prices.as_of,
        "cache": cache.url if cache is not None else None,
    }


# ---------------------------------------------------------------- warnings


def sample_problems(found: list[Occurrence], samples: Mapping[str, Sample]) -> list[Problem]:
    """Warnings about the sample: malformed rows, rows whose prompt fails, nodes no sampled row reaches."""
    problems = []
    for name, sample in samples.items():
        if sample.source.malformed_rows:
            problems.append(
                warning(
                    ("nodes", name, "path"),
                    f"{sample.source.malformed_rows} malformed rows in the sample of '{name}' were skipped; "
                    "a run fails on them unless the node's on_error skips or dead-letters them",
                )
            )
    for occurrence in found:
        if occurrence.failed:
            problems.append(
                warning(
                    ("nodes", occurrence.node.id, "prompt"),
                    f"{len(occurrence.failed)} of {occurrence.sampled} sampled rows cannot render the prompt "
                    f"of '{occurrence.node.id}' (first: {occurrence.failed[0]}); a run fails on such rows "
                    "unless the node's on_error skips or dead-letters them",
                )
            )
        elif occurrence.sampled == 0:
            problems.append(
                warning(
                    ("nodes", occurrence.node.id),
                    f"no sampled row reaches LLM node '{occurrence.node.id}', so its estimate is 0; "
                    "a larger --sample may reach it",
                )
            )
    return problems


def budget_problems(result: Estimate, pipeline: Pipeline) -> list[Problem]:
    """Warnings for each budget, the pipeline's or a node's, that the estimate passes."""
    total = result.total
    problems = []
    budget = pipeline.budget
    if budget is not None:
        problems += _over(("budget", "max_cost_usd"), "LLM cost", budget.max_cost_usd, total, "usd", "$")
        problems += _over(("budget", "max_input_tokens"), "input tokens", budget.max_input_tokens, total)
        limit = budget.max_output_tokens
        problems += _over(("budget", "max_output_tokens"), "output tokens", limit, total, "output_tokens")
    for name, node in result.nodes.items():
        spec = pipeline.nodes[name]
        limit_usd = spec.budget.max_cost_usd if isinstance(spec, LlmSpec) and spec.budget else None
        where = ("nodes", name, "budget", "max_cost_usd")
        problems += _over(where, f"'{name}' cost", limit_usd, node.as_dict(), "usd", "$")
    return problems


def _over(
    where: tuple[str, ...],
    what: str,
    limit: float | None,
    figures: Mapping[str, Any],
    key: str = "input_tokens",
    unit: str = "",
) -> list[Problem]:
    """A warning when the expected (else the worst-case) figure passes ``limit``."""
    if limit is None:
        return []
    expected, worst = figures[f"expected_{key}" if key == "usd" else key], figures[f"worst_case_{key}"]

    def show(x: float) -> str:
        return f"${x:,.4f}" if unit else f"{x:,.0f}"

    field_name = ".".join(where)
    if expected > limit:
        message = (
            f"expected {what} {show(expected)} is more than {field_name} {show(limit)}: "
            "the run would stop at the budget before every row is answered"
        )
    elif worst > limit:
        message = (
            f"worst-case {what} {show(worst)} (every call using max_tokens) is more than {field_name} "
            f"{show(limit)}; the expected {show(expected)} fits, but the run may stop at the budget"
        )
    else:
        return []
    return [warning(where, message)]


def warning(where: tuple[str, ...], message: str) -> Problem:
    """An estimate's warning at ``where`` in the pipeline document."""
    return Problem(where, message, severity="warning", code="estimate")
