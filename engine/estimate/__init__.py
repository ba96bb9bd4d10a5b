"""Predict what a run's LLM steps will do before it runs: calls, tokens and dollars per LLM node.

Nothing here starts Ray or asks a model. For every stage with an LLM node, the first ``sample_rows`` rows
of its source are read in this process and pushed through the stage's ops in order; each LLM node renders
the request of every sampled row that reaches it, counts its input tokens, and the counts are scaled to
the whole input::

    source rows    exact (Parquet metadata, one row per file, or a sample that read the whole input),
                   else input bytes / sampled bytes per row                               (sample.py)
    rows at a node sampled rows reaching it × source rows / sampled rows; per-batch filters run on the
                   sample, so their selectivity is measured; an llm_filter keeps every row unless told
                   otherwise, and dedupe and grouped aggregates keep every row: both upper bounds;
                   a limit is applied exactly                                               (walk.py)
    input tokens   the sampled requests' tokens (counted locally or by the provider's token-count
                   endpoint) × rows / sampled rows                                        (tokens.py)
    output tokens  llm_classify/llm_filter: the longest label; llm_extract: a minimal instance of the
                   schema; llm_map: an assumption (min(max_tokens, 256) unless given)    (answers.py)
    cost           the pipeline's PriceTable (its price overrides on top), at batch prices for
                   ``mode: batch``; the worst case lets every call write max_tokens and every
                   llm_extract row use all of its attempts                               (figures.py)

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
    priced,
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
            samples[source.id] = sample_source(source, urls, options.sample_rows)
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
        figures = node_figures(occurrence, counted, how, rules, options)
        earlier = nodes.get(figures.node)
        nodes[figures.node] = figures if earlier is None else merged(earlier, figures)
    nodes = {name: priced(n, prices, pipeline) for name, n in nodes.items()}
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
