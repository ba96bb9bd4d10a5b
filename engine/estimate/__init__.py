"""Predict what a run's LLM steps will do before it runs: calls, tokens and dollars per LLM node.

Nothing here starts Ray or asks a model. For every stage with an LLM node, about ``sample_rows`` rows of
its source are read in this process from ``sample_ranges`` places spread evenly over the whole input, and
pushed through the stage's ops in order; each LLM node renders the request of every sampled row that
reaches it, counts its input tokens, and each place's counts are scaled to its share of the input::

    source rows    exact (Parquet metadata, one row per file, or a sample that read the whole input),
                   else the sum over places of rows read × stratum bytes / bytes read, with a p5-p95
                   range from the spread between neighbouring places          (sample.py, intervals.py)
    rows at a node sampled rows reaching it from each place × its scale; per-batch filters run on the
                   sample, so their selectivity is measured where each place is; an llm_filter keeps
                   every row unless told otherwise, and dedupe and grouped aggregates keep every row:
                   both upper bounds; a limit is applied exactly                          (walk.py)
    input tokens   the sampled requests' tokens (counted locally or by the provider's token-count
                   endpoint) × each place's scale                                         (tokens.py)
    output tokens  llm_classify/llm_filter: the longest label; llm_extract: a minimal instance of the
                   schema; llm_map: an assumption (min(max_tokens, 256) unless given)    (answers.py)
    cost           the pipeline's PriceTable (its price overrides on top), at batch prices for
                   ``mode: batch``; the worst case lets every call write max_tokens and every
                   llm_extract row use all of its attempts; the p5-p95 range of the expected
                   cost comes from the places' spread                                    (figures.py)

An LLM node's answers are stood in for by values of the right type and size (labels in turn, the schema
instance, a filler text of the assumed length) so that nodes downstream render realistic prompts; with the
response cache consulted, a cached answer is used instead. Ops that filter on stand-in answers are
reported as guesses.
"""

from __future__ import annotations

import asyncio
import dataclasses

from engine.check import CheckedPipeline, locate
from engine.compile import compile_pipeline
from engine.errors import ConfigError
from engine.estimate.figures import (
    budget_problems,
    merged,
    method,
    node_figures,
    sample_problems,
    warning,
)
from engine.estimate.results import Estimate, EstimateOptions, NodeEstimate, SourceEstimate
from engine.estimate.sample import Sample, sample_source
from engine.estimate.tokens import count_all, counters
from engine.estimate.walk import Occurrence, StageWalk
from engine.plan import Problem
from operators.providers.cache import ResponseCache

__all__ = [
    "Estimate",
    "EstimateOptions",
    "NodeEstimate",
    "SourceEstimate",
    "estimate_checked",
]


def estimate_checked(checked: CheckedPipeline, options: EstimateOptions | None = None) -> Estimate:
    """Estimate every LLM node of ``checked``; ``ConfigError`` for config problems (located), DataError
    when a source cannot be read, ``HeadraceError`` when a token-count endpoint fails."""
    options = options or EstimateOptions()
    pipeline = checked.loaded.spec
    # compiled as a run would be (a missing API key only warns: estimating needs none by default)
    compiled = compile_pipeline(checked, credentials="warning").raise_errors()
    stages, pools, prices = compiled.stages, compiled.pools, compiled.prices
    assert prices is not None  # no table means compilation found an error, raised above
    targets = {p.node: p.targets[0] for p in pools}
    counting, problems = counters(pipeline, targets, options.count_tokens)
    _raise_located(problems, checked)
    cache = _cache(checked) if options.with_cache else None
    resolve_path = checked.resolver()

    samples: dict[str, Sample] = {}
    found: list[Occurrence] = []
    for stage in stages:
        middle = stage.nodes[1:-1]
        last = max((i for i, n in enumerate(middle) if n.spec.pooled), default=-1)
        if last < 0:
            continue
        source = stage.source
        if source.id not in samples:
            paths = source.spec.path  # type: ignore[attr-defined]
            urls = [resolve_path(source.id, p) for p in (paths if isinstance(paths, list) else [paths])]
            samples[source.id] = sample_source(source, urls, options.sample_rows, options.sample_ranges)
        walk = StageWalk(pipeline, targets, options, cache, samples[source.id])
        for node in middle[: last + 1]:
            walk.step(node)
        found.extend(walk.found)

    jobs = [(counting[o.target.provider], r) for o in found for r in o.requests]
    tokens = asyncio.run(count_all(jobs, list(counting.values())))
    nodes: dict[str, NodeEstimate] = {}
    at = 0
    for occurrence in found:
        counted = tokens[at : at + len(occurrence.requests)]
        at += len(occurrence.requests)
        rules = pipeline.priced_as(occurrence.target.provider)
        how = counting[occurrence.target.provider].method
        price = prices.price(rules, occurrence.target.model)
        sampled = samples[occurrence.source].source
        figures = node_figures(occurrence, counted, how, rules, options, price, sampled)
        earlier = nodes.get(figures.node)
        nodes[figures.node] = figures if earlier is None else merged(earlier, figures)
    result = Estimate(
        pipeline=pipeline.name,
        sources={k: s.source for k, s in samples.items()},
        nodes=nodes,
        method=method(options, prices, cache),
        budget_usd=pipeline.budget.max_cost_usd if pipeline.budget else None,
    )
    problems = sample_problems(found, samples) + budget_problems(result, pipeline)
    if options.with_cache and cache is None:
        message = "--with-cache: the pipeline's response cache is disabled, so no row is counted as cached"
        problems.append(warning(("cache", "enabled"), message))
    warnings = tuple(locate(p, checked.loaded.document) for p in problems)
    return dataclasses.replace(result, warnings=warnings)


def _raise_located(problems: list[Problem], checked: CheckedPipeline) -> None:
    errors = [locate(p, checked.loaded.document) for p in problems if p.severity == "error"]
    if errors:
        raise ConfigError(errors)


def _cache(checked: CheckedPipeline) -> ResponseCache | None:
    """The response cache a run would use, if the pipeline keeps one."""
    url = checked.cache_url()
    return ResponseCache(url) if url is not None else None
