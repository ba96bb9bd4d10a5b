"""From counted samples to a node's figures: scaling, summing a node over its stages, pricing, and the
warnings an estimate gives (budgets it passes, sampled rows that fail, nodes no sampled row reaches).

Cost comes from the pipeline's ``PriceTable`` (its price overrides on top), at batch prices for
``mode: batch``; the worst case lets every call write max_tokens and every llm_extract row use all of its
attempts. The p5-p95 range of the expected cost comes from the spread of the sample's parts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from engine.estimate.answers import output_tokens
from engine.estimate.intervals import Z_P95, grouped_se, p5_p95
from engine.estimate.results import Estimate, EstimateOptions, NodeEstimate, RowsBasis, SourceEstimate
from engine.estimate.sample import Sample
from engine.estimate.walk import Occurrence
from engine.plan import Problem
from engine.spec.models import Pipeline
from operators.llm import LlmExtract, LlmSpec
from operators.providers.cache import ResponseCache
from operators.providers.pricing import Price, PriceTable

_SUMMED = (
    "rows",
    "calls",
    "input_tokens",
    "output_tokens",
    "worst_case_input_tokens",
    "worst_case_output_tokens",
    "sampled_rows",
    "expected_usd",
    "worst_case_usd",
)
_SURENESS: tuple[RowsBasis, ...] = ("exact", "estimated", "upper bound")


def node_figures(
    found: Occurrence,
    counted: list[int],
    method: str,
    rules: str,
    options: EstimateOptions,
    price: Price,
    source: SourceEstimate,
) -> NodeEstimate:
    """A node's figures in one stage, priced (``rules``: the provider whose token rules apply).

    Each part of the sample gives its stratum's calls, tokens and dollars (what reached the node from it,
    times its scale); the figures are their sums, and the spread of the parts' dollars gives the p5-p95
    range (``intervals``). After a barrier pooled the parts, the range is the source's row range, scaled.
    """
    spec: LlmSpec = found.node.spec  # type: ignore[assignment]
    per_call, basis = output_tokens(spec, rules, options)
    attempts = spec.max_attempts if isinstance(spec, LlmExtract) else 1
    batch = spec.mode == "batch"
    part_usd: list[float] = []
    calls_f = tokens_f = rows_f = 0.0
    at = 0
    for part in found.parts:
        tokens = sum(counted[at : at + part.requests]) * part.scale
        at += part.requests
        calls = part.requests * part.scale
        part_usd.append(price.cost(round(tokens), round(calls * per_call), batch=batch))
        calls_f, tokens_f, rows_f = calls_f + calls, tokens_f + tokens, rows_f + part.sampled * part.scale
    calls, input_tokens = round(calls_f), round(tokens_f)
    expected = price.cost(input_tokens, calls * per_call, batch=batch)
    worst_in, worst_out = input_tokens * attempts, calls * attempts * spec.max_tokens
    worst = price.cost(worst_in, worst_out, batch=batch)
    se = _usd_se(found, part_usd, expected, source)
    low, high = p5_p95(expected, se, ceiling=max(worst, expected))
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
        rows=round(rows_f),
        rows_basis=found.basis,
        calls=calls,
        cached_calls=round(sum(p.cached * p.scale for p in found.parts))
        if found.cached is not None
        else None,
        input_tokens=input_tokens,
        output_tokens=calls * per_call,
        expected_usd=expected,
        worst_case_input_tokens=worst_in,
        worst_case_output_tokens=worst_out,
        worst_case_usd=worst,
        input_tokens_method=method,
        output_tokens_basis=basis,
        sampled_rows=found.sampled,
        notes=tuple(notes),
        sample_ranges=sum(1 for p in found.parts if p.sampled)
        if not found.pooled
        else len(source.sample_ranges),
        usd_p5=low,
        usd_p95=high,
        usd_se=se,
        source=found.source,
    )


def _usd_se(found: Occurrence, part_usd: list[float], expected: float, source: SourceEstimate) -> float:
    """The standard error of a node's expected dollars: none when the sample held every row, else the
    spread of its parts, or (parts pooled by a barrier, or a single part) the source's relative one."""
    if source.basis == "exact" and source.sampled_rows == source.rows and not found.pooled:
        return 0.0  # every row was walked: the figures are counted, not scaled
    se = grouped_se(part_usd, [p.group for p in found.parts]) if not found.pooled else None
    if se is not None:
        return se
    relative = (source.rows_p95 - source.rows_p5) / (2 * Z_P95 * source.rows) if source.rows else 0.0
    return expected * relative


def merged(a: NodeEstimate, b: NodeEstimate) -> NodeEstimate:
    """A node that feeds several sinks runs once per sink's stage: its figures add up (and their
    standard errors: the stages walk the same sample)."""
    sums = {name: getattr(a, name) + getattr(b, name) for name in _SUMMED}
    cached = None if a.cached_calls is None else a.cached_calls + (b.cached_calls or 0)
    basis = max(a.rows_basis, b.rows_basis, key=_SURENESS.index)
    notes = tuple(dict.fromkeys((*a.notes, *b.notes, "runs once for each sink it feeds")))
    se = a.usd_se + b.usd_se
    low, high = p5_p95(sums["expected_usd"], se, ceiling=max(sums["worst_case_usd"], sums["expected_usd"]))
    return dataclasses.replace(
        a, **sums, cached_calls=cached, rows_basis=basis, notes=notes, usd_se=se, usd_p5=low, usd_p95=high
    )


def method(options: EstimateOptions, prices: PriceTable, cache: ResponseCache | None) -> dict[str, Any]:
    """How the figures were found, for the report."""
    return {
        "sample_rows": options.sample_rows,
        "sample_ranges": options.sample_ranges,
        "count_tokens": options.count_tokens,
        "sampling": "each source's rows are read from sample_ranges places spread evenly over it (byte "
        "ranges of its files end to end, row groups, or files); each place's rows stand for its "
        "stratum's share of the input",
        "rows": "sum over the places of the sampled rows reaching each node × the place's scale",
        "range": "usd_p5-usd_p95: the 5th-95th percentiles of the expected cost from the spread "
        "between neighbouring places (sampling only: the output-token assumption is not in it)",
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
