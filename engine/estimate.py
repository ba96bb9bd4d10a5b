"""Predict what a run's LLM steps will do before it runs: calls, tokens and dollars per LLM node.

Nothing here starts Ray or asks a model. For every stage with an LLM node, the first ``sample_rows`` rows
of its source are read in this process and pushed through the stage's ops in order; each LLM node renders
the request of every sampled row that reaches it, counts its input tokens, and the counts are scaled to
the whole input::

    source rows    exact (Parquet metadata, one row per file, or a sample that read the whole input),
                   else input bytes / sampled bytes per row
    rows at a node sampled rows reaching it × source rows / sampled rows; per-batch filters run on the
                   sample, so their selectivity is measured; an llm_filter keeps every row unless told
                   otherwise, and dedupe and grouped aggregates keep every row: both upper bounds;
                   a limit is applied exactly
    input tokens   the sampled requests' tokens (counted locally or by the provider's token-count
                   endpoint) × rows / sampled rows
    output tokens  llm_classify/llm_filter: the longest label; llm_extract: a minimal instance of the
                   schema; llm_map: an assumption (min(max_tokens, 256) unless given)
    cost           the pipeline's PriceTable (its price overrides on top), at batch prices for
                   ``mode: batch``; the worst case lets every call write max_tokens and every
                   llm_extract row use all of its attempts

An LLM node's answers are stood in for by values of the right type and size (labels in turn, the schema
instance, a filler text of the assumed length) so that nodes downstream render realistic prompts; with the
response cache consulted, a cached answer is used instead. Ops that filter on stand-in answers are
reported as guesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.files import filesystem
from connectors.readers import Reader, Split, reader_for
from connectors.sources import FileSource, ReadParquet, ReadText
from engine.check import CheckedPipeline, locate
from engine.errors import ConfigError, DataError, Diagnostic, HeadraceError
from engine.optimizer import optimize
from engine.physical import check_prices, plan_pools
from engine.plan import PlanNode, Problem
from engine.spec.models import Pipeline
from operators.batch import batch_fn
from operators.llm import LlmClassify, LlmExtract, LlmFilter, LlmSpec
from operators.llm_rows import InvalidAnswer, RowTask, Target
from operators.providers.base import ConfigReader, LlmRequest
from operators.providers.cache import ResponseCache
from operators.providers.errors import ProviderConfigError, redact
from operators.providers.offline import estimate_tokens, schema_instance
from operators.providers.pricing import PriceTable
from operators.stateful import BARRIER_OPS

CountMode = Literal["local", "api"]
RowsBasis = Literal["exact", "estimated", "upper bound"]

DEFAULT_SAMPLE_ROWS = 200
MAP_OUTPUT_TOKENS = 256
"""Output tokens assumed per llm_map call (capped at its max_tokens) when none are given."""

_FIRST_RANGE_BYTES = 256 * 1024
"""The first byte range read from a line or CSV file; it grows fourfold until it holds the sample."""
_WHOLE_FILE = 1 << 62
"""Split size that makes one split per file: planning then never scans a large file's quotes."""
_COUNT_CONCURRENCY = 4
_TOOL_PROMPT_TOKENS: Mapping[str, int] = {"anthropic": 313}
"""Input tokens a provider adds to a call that forces a tool (every structured answer): Anthropic's
documented tool-use system prompt for ``tool_choice`` any/tool."""
_ANSWER_FRAMING_TOKENS: Mapping[str, int] = {"anthropic": 30, "gemini": 2}
"""Output tokens around a structured answer: Claude's tool_use block, Gemini's JSON quoting (approximate)."""
_SEED = "0" * 64
"""A fingerprint-length seed: schema instances get strings as long as the offline provider's."""
_FILLER = "the model's answer to this row, of about the assumed length. "


@dataclass(frozen=True)
class EstimateOptions:
    """How to estimate: the sample, the token counter, assumptions, and whether to consult the cache."""

    sample_rows: int = DEFAULT_SAMPLE_ROWS
    count_tokens: CountMode = "local"
    output_tokens: int | None = None
    """Output tokens per llm_map call (None: ``min(max_tokens, MAP_OUTPUT_TOKENS)``)."""
    with_cache: bool = False
    keep: Mapping[str, float] = field(default_factory=dict)
    """The share of rows each named llm_filter node keeps (absent: all of them, an upper bound)."""


@dataclass(frozen=True)
class SourceEstimate:
    """How many rows a source holds, and how that was found."""

    node: str
    rows: int
    basis: RowsBasis
    how: str
    sampled_rows: int
    input_bytes: int
    malformed_rows: int
    """Malformed rows met (and skipped) in the sample."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class NodeEstimate:
    """What one LLM node is expected to do over the whole input."""

    node: str
    op: str
    provider: str
    model: str
    mode: str
    rows: int
    rows_basis: RowsBasis
    calls: int
    """Calls expected to be sent (and paid): one per row, less rows answered from the cache."""
    cached_calls: int | None
    """Rows answered from the response cache (None when it was not consulted)."""
    input_tokens: int
    output_tokens: int
    expected_usd: float
    worst_case_input_tokens: int
    worst_case_output_tokens: int
    worst_case_usd: float
    input_tokens_method: str
    output_tokens_basis: str
    sampled_rows: int
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        data = dataclasses.asdict(self)
        data["notes"] = list(self.notes)
        return data


@dataclass(frozen=True)
class Estimate:
    """A pipeline's estimate: every LLM node, the sources they read, and how the figures were found."""

    pipeline: str
    sources: Mapping[str, SourceEstimate]
    nodes: Mapping[str, NodeEstimate]
    method: Mapping[str, Any]
    warnings: tuple[Diagnostic, ...] = ()
    budget_usd: float | None = None

    @property
    def total(self) -> dict[str, Any]:
        """Sums over the LLM nodes, and the pipeline's budget."""
        nodes = self.nodes.values()
        cached = [n.cached_calls for n in nodes if n.cached_calls is not None]
        return {
            "calls": sum(n.calls for n in nodes),
            "cached_calls": sum(cached) if cached else None,
            "input_tokens": sum(n.input_tokens for n in nodes),
            "output_tokens": sum(n.output_tokens for n in nodes),
            "expected_usd": sum(n.expected_usd for n in nodes),
            "worst_case_input_tokens": sum(n.worst_case_input_tokens for n in nodes),
            "worst_case_output_tokens": sum(n.worst_case_output_tokens for n in nodes),
            "worst_case_usd": sum(n.worst_case_usd for n in nodes),
            "budget_usd": self.budget_usd,
        }

    def as_dict(self) -> dict[str, Any]:
        """One JSON object: pipeline, nodes, total, method (with the sources) and warnings."""
        return {
            "pipeline": self.pipeline,
            "nodes": {name: n.as_dict() for name, n in self.nodes.items()},
            "total": self.total,
            "method": {**self.method, "sources": {k: s.as_dict() for k, s in self.sources.items()}},
            "warnings": [d.as_dict() for d in self.warnings],
        }


def estimate_checked(checked: CheckedPipeline, options: EstimateOptions | None = None) -> Estimate:
    """Estimate every LLM node of ``checked``; ``ConfigError`` for config problems (located), DataError
    when a source cannot be read, ``HeadraceError`` when a token-count endpoint fails."""
    options = options or EstimateOptions()
    pipeline = checked.loaded.spec
    stages, problems = optimize(checked.plan)
    _raise_located(problems, checked)
    pools, problems = plan_pools(stages, pipeline.defaults)
    _raise_located(problems, checked)
    prices = _price_table(checked, [(p.node, p.targets) for p in pools])
    targets = {p.node: p.targets[0] for p in pools}
    counters = _counters(checked, targets, options.count_tokens)
    cache = _cache(checked) if options.with_cache else None
    resolve_path = checked.resolver()

    samples: dict[str, _Sample] = {}
    found: list[_Occurrence] = []
    for stage in stages:
        middle = stage.nodes[1:-1]
        last = max((i for i, n in enumerate(middle) if n.spec.pooled), default=-1)
        if last < 0:
            continue
        source = stage.source
        if source.id not in samples:
            paths = source.spec.path  # type: ignore[attr-defined]
            urls = [resolve_path(source.id, p) for p in (paths if isinstance(paths, list) else [paths])]
            samples[source.id] = _sample_source(source, urls, options.sample_rows)
        walk = _Walk(pipeline, targets, options, cache, samples[source.id])
        for node in middle[: last + 1]:
            walk.step(node)
        found.extend(walk.found)

    tokens = asyncio.run(_count_all([(counters[o.target.provider], r) for o in found for r in o.requests]))
    nodes: dict[str, NodeEstimate] = {}
    at = 0
    for occurrence in found:
        counted = tokens[at : at + len(occurrence.requests)]
        at += len(occurrence.requests)
        rules = pipeline.priced_as(occurrence.target.provider)
        method = counters[occurrence.target.provider].method
        figures = _figures(occurrence, counted, method, rules, options)
        earlier = nodes.get(figures.node)
        nodes[figures.node] = figures if earlier is None else _merged(earlier, figures)
    nodes = {name: _priced(n, prices, pipeline) for name, n in nodes.items()}
    result = Estimate(
        pipeline=pipeline.name,
        sources={k: s.source for k, s in samples.items()},
        nodes=nodes,
        method=_method(options, prices, cache),
        budget_usd=pipeline.budget.max_cost_usd if pipeline.budget else None,
    )
    problems = _sample_problems(found, samples) + _budget_problems(result, pipeline)
    if options.with_cache and cache is None:
        message = "--with-cache: the pipeline's response cache is disabled, so no row is counted as cached"
        problems.append(_warning(("cache", "enabled"), message))
    warnings = tuple(locate(p, checked.loaded.document) for p in problems)
    return dataclasses.replace(result, warnings=warnings)


# ---------------------------------------------------------------- config


def _raise_located(problems: list[Problem], checked: CheckedPipeline) -> None:
    errors = [locate(p, checked.loaded.document) for p in problems if p.severity == "error"]
    if errors:
        raise ConfigError(errors)


def _price_table(checked: CheckedPipeline, pools: list[tuple[str, tuple[Target, ...]]]) -> PriceTable:
    """The run's price table; every target must have a price, as a run requires."""
    prices, problems = check_prices(pools, checked.loaded.spec)
    _raise_located(problems, checked)
    assert prices is not None  # no table means a problem was raised above
    return prices


def _cache(checked: CheckedPipeline) -> ResponseCache | None:
    """The response cache a run would use, if the pipeline keeps one."""
    url = checked.cache_url()
    return ResponseCache(url) if url is not None else None


# ---------------------------------------------------------------- reading the sample


@dataclass(frozen=True)
class _Sample:
    table: pa.Table
    source: SourceEstimate


def _sample_source(node: PlanNode, urls: list[str], want: int) -> _Sample:
    """The first ``want`` rows of a source, and its row count (exact or estimated from bytes)."""
    spec: FileSource = node.spec  # type: ignore[assignment]
    reader = reader_for(spec)
    splits = reader.splits(spec.model_copy(update={"split_bytes": _WHOLE_FILE}), node.id, urls)
    malformed = [0]

    def bad_row(error: str, row: dict[str, Any]) -> None:
        malformed[0] += 1

    def first_rows(tables: list[pa.Table]) -> pa.Table:
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables, promote_options="permissive").slice(0, want)

    size = sum(s.end - s.start for s in splits)
    if isinstance(spec, ReadParquet) or (isinstance(spec, ReadText) and spec.mode == "file"):
        tables = list(_take(reader, spec, splits, want, bad_row))
        if isinstance(spec, ReadParquet):
            rows, how = _parquet_rows(splits), "Parquet metadata"
        else:
            rows, how = len(splits), "one row per file"
        table = first_rows(tables)
        return _Sample(table, SourceEstimate(node.id, rows, "exact", how, table.num_rows, size, malformed[0]))

    # Line and CSV files: read a growing prefix of each file until the sample is full, then scale the
    # rows read by input bytes / bytes read (header lines are not rows).
    tables = []
    rows_read = bytes_read = 0
    whole = True
    for split in splits:
        if rows_read >= want:
            whole = False
            break
        header = len(split.header or b"")
        end = min(split.end, _FIRST_RANGE_BYTES)
        before = malformed[0]
        while True:
            malformed[0] = before  # a longer prefix of the file meets its malformed rows again
            got = list(reader.read(spec, dataclasses.replace(split, end=end), max(want, 1), bad_row))
            count = sum(t.num_rows for t in got)
            if rows_read + count >= want or end >= split.end:
                break
            end = min(split.end, end * 4)
        tables.extend(got)
        rows_read += count
        bytes_read += max(end - header, 0)
        whole = whole and end >= split.end
    data_bytes = sum(max(s.end - len(s.header or b""), 0) for s in splits)
    table = first_rows(tables)
    if whole:
        source = SourceEstimate(
            node.id, rows_read, "exact", "the whole input was read", table.num_rows, size, malformed[0]
        )
    else:
        rows = round(rows_read * data_bytes / bytes_read) if bytes_read else 0
        how = f"{rows_read:,} rows in the first {_size(bytes_read)} of {_size(data_bytes)}, scaled by bytes"
        source = SourceEstimate(node.id, rows, "estimated", how, table.num_rows, size, malformed[0])
    return _Sample(table, source)


def _take(
    reader: Reader, spec: FileSource, splits: list[Split], want: int, bad_row: Callable[..., None]
) -> Iterator[pa.Table]:
    got = 0
    for split in splits:
        for table in reader.read(spec, split, max(want, 1), bad_row):
            yield table
            got += table.num_rows
            if got >= want:
                return


def _parquet_rows(splits: list[Split]) -> int:
    rows = 0
    for url in dict.fromkeys(s.url for s in splits):
        fs, path = filesystem(url)
        with fs.open(path, "rb") as fh:
            rows += pq.ParquetFile(fh).metadata.num_rows
    return rows


def _size(n: int) -> str:
    value, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n:,} bytes" if unit == "bytes" else f"{value:,.1f} {unit}"


# ---------------------------------------------------------------- walking a stage on the sample


@dataclass
class _Occurrence:
    """One LLM node in one stage: the requests of the sampled rows that reach it, before counting."""

    node: PlanNode
    target: Target
    sampled: int
    requests: list[LlmRequest]
    """Requests of the sampled rows that would be sent (rendered, not answered by the cache)."""
    cached: int | None
    failed: list[str]
    scale: float
    basis: RowsBasis
    notes: list[str]


class _Walk:
    """The sample as it flows through one stage: its rows, real rows per sampled row, and how sure."""

    def __init__(
        self,
        pipeline: Pipeline,
        targets: Mapping[str, Target],
        options: EstimateOptions,
        cache: ResponseCache | None,
        sample: _Sample,
    ) -> None:
        self.pipeline = pipeline
        self.targets = targets
        self.options = options
        self.cache = cache
        self.table = sample.table
        source = sample.source
        self.scale = source.rows / self.table.num_rows if self.table.num_rows else 0.0
        self.whole = source.basis == "exact" and source.rows == self.table.num_rows
        """The sample holds every row that reaches this point (at most, after an llm_filter)."""
        self.real = True
        """Every sampled row here is one a run would have here (no llm_filter has been stood in for)."""
        self.basis: RowsBasis = source.basis
        self.notes: list[str] = []
        self.found: list[_Occurrence] = []
        self.stood_in: list[str] = []
        """LLM nodes upstream whose answers are stand-ins (no cached answer for every row)."""

    def step(self, node: PlanNode) -> None:
        """Pass the sample through ``node``."""
        try:
            if isinstance(node.spec, LlmSpec):
                self._llm(node, node.spec)
            elif node.spec.barrier:
                self._barrier(node)
            elif self.table.num_rows:
                before = self.table.num_rows
                self.table = batch_fn(node.spec)(self.table)
                if self.table.num_rows != before and self.stood_in:
                    self.whole = self.real = False
                    self.basis = "estimated" if self.basis == "exact" else self.basis
                    self.notes.append(
                        f"'{node.id}' changes the row count on stand-in answers of "
                        f"{', '.join(map(repr, self.stood_in))} (labels spread evenly): its share is a guess"
                    )
                elif self.basis == "exact" and not self.whole and self.table.num_rows != before:
                    self.basis = "estimated"  # a measured selectivity, not a count
        except (DataError, ConfigError):
            raise
        except Exception as exc:
            raise DataError(f"node '{node.id}': on the sampled rows: {type(exc).__name__}: {exc}") from None

    @property
    def rows(self) -> int:
        return round(self.table.num_rows * self.scale)

    def _barrier(self, node: PlanNode) -> None:
        spec = node.spec
        state = BARRIER_OPS[spec.op](spec)
        out = state.push(self.table) if self.table.num_rows else []
        out += state.finish()
        table = pa.concat_tables(out, promote_options="permissive") if out else self.table.slice(0, 0)
        limit: int | None = getattr(spec, "n", None) if spec.op == "limit" else None
        if self.whole:
            rows, basis = table.num_rows, self.basis
        elif limit is not None and self.real and self.table.num_rows >= limit:
            rows, basis, self.whole = limit, "exact", True  # the sample alone fills the limit
        elif limit is not None:
            rows, basis = min(limit, self.rows), self.basis
        elif spec.op == "aggregate" and not getattr(spec, "group_by", None):
            rows, basis, self.whole = 1, "exact", True
        else:
            rows, basis = self.rows, "upper bound"
            self.notes.append(f"'{node.id}' ({spec.op}) drops an unknown share of rows: an upper bound")
        self.table = table
        self.scale = rows / table.num_rows if table.num_rows else 0.0
        self.basis = basis

    def _llm(self, node: PlanNode, spec: LlmSpec) -> None:
        target = self.targets[node.id]
        task = RowTask(spec, self.pipeline.params)
        answer_tokens = _output_tokens(spec, target.provider, self.options)[0]
        requests: list[LlmRequest] = []
        failed: list[str] = []
        cached = 0
        values: list[Any] = []
        ok: list[bool] = []
        for index, row in enumerate(self.table.to_pylist()):
            try:
                request = task.request(row, target)
            except Exception as exc:  # a template that fails on this row's values fails the row in a run
                failed.append(f"{type(exc).__name__}: {exc}")
                values.append(None)
                ok.append(False)
                continue
            value = _stand_in(spec, answer_tokens, index)
            hit = self.cache.get(request) if self.cache is not None else None
            if hit is None:
                requests.append(request)
            else:
                cached += 1
                with contextlib.suppress(InvalidAnswer):  # an unusable cached answer: the stand-in
                    value = task.interpret(request, hit.text, hit.parsed, hit.stop_reason)
            values.append(value)
            ok.append(True)
        self.found.append(
            _Occurrence(
                node,
                target,
                self.table.num_rows,
                requests,
                cached if self.cache is not None else None,
                failed,
                self.scale,
                self.basis,
                list(self.notes),
            )
        )
        if self.table.num_rows:
            self.table = task.assemble(self.table, values, ok)
        if self.cache is None or cached < len(values):
            self.stood_in.append(node.id)
        if isinstance(spec, LlmFilter):
            keep = self.options.keep.get(node.id)
            if keep is not None:
                self.scale *= keep
                self.whole = self.real = False
                self.basis = "estimated" if self.basis == "exact" else self.basis
                self.notes.append(f"'{node.id}' keeps {keep:.0%} of rows (--keep)")
            elif self.cache is None or cached < len(values):
                self.real = False
                self.basis = "upper bound"
                self.notes.append(
                    f"'{node.id}' (llm_filter) keeps an unknown share of rows: an upper bound "
                    f"(--keep {node.id}=FRACTION sets it)"
                )


def _stand_in(spec: LlmSpec, output_tokens: int, index: int) -> Any:
    """A value standing in for the answer to row ``index``, of the right type and about the expected
    size; labels take turns, so a filter on them keeps each label's even share."""
    if isinstance(spec, LlmClassify):
        return spec.labels[index % len(spec.labels)]
    if isinstance(spec, LlmFilter):
        return True
    if isinstance(spec, LlmExtract):
        try:
            return schema_instance(dict(spec.output_schema), seed=_SEED)
        except (ValueError, KeyError, TypeError):
            return None
    chars = output_tokens * 4
    return (_FILLER * (chars // len(_FILLER) + 1))[:chars]


# ---------------------------------------------------------------- tokens


class _Counter(Protocol):
    method: str

    async def count(self, request: LlmRequest) -> int: ...

    async def close(self) -> None: ...


def _local_tokens(request: LlmRequest, provider: str) -> int:
    """About four characters a token over what a call sends; the offline provider's own rule for it."""
    if provider == "offline":
        return estimate_tokens((request.system or "") + request.prompt)
    chars = len(request.prompt) + len(request.system or "")
    schema = request.structured_schema()
    if schema is None:
        return math.ceil(chars / 4)
    return math.ceil((chars + len(json.dumps(schema))) / 4) + _TOOL_PROMPT_TOKENS.get(provider, 0)


class _LocalCounter:
    def __init__(self, provider: str) -> None:
        self.provider = provider
        tool = _TOOL_PROMPT_TOKENS.get(provider)
        if provider == "offline":
            self.method = "local: the offline provider's own count (characters / 4)"
        else:
            self.method = "local: about 4 characters a token (prompt, system prompt, answer schema)"
            if tool:
                self.method += f", plus the {tool}-token tool-use system prompt of structured answers"

    async def count(self, request: LlmRequest) -> int:
        return _local_tokens(request, self.provider)

    async def close(self) -> None:
        return None


class _AnthropicCounter:
    method = "api: anthropic messages.count_tokens"

    def __init__(self, config: Mapping[str, Any]) -> None:
        reader = ConfigReader("anthropic", config, frozenset({"api_key", "base_url"}))
        self._key = reader.string("api_key", "ANTHROPIC_API_KEY", environ=os.environ)
        if not self._key:
            raise ProviderConfigError(
                "no API key for --count-tokens api: set ANTHROPIC_API_KEY or the provider config's "
                "`api_key` (or count locally)",
                provider="anthropic",
            )
        self._base_url = reader.string("base_url", "ANTHROPIC_BASE_URL", environ=os.environ)
        self._client: Any = None

    async def count(self, request: LlmRequest) -> int:
        import anthropic

        # the very body a call sends, so that the count covers the tool definition too
        from operators.providers.claude import _params

        if self._client is None:
            self._client = anthropic.AsyncAnthropic(api_key=self._key, base_url=self._base_url, max_retries=6)
        body = {k: v for k, v in _params(request).items() if k not in ("max_tokens", "temperature")}
        try:
            result = await self._client.messages.count_tokens(**body, timeout=request.timeout_s)
        except anthropic.AnthropicError as exc:
            raise _count_failed("anthropic", exc, self._key) from None
        return int(result.input_tokens)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


class _GeminiCounter:
    method = "api: gemini models.count_tokens (system prompt and answer schema as extra parts)"

    def __init__(self, config: Mapping[str, Any]) -> None:
        reader = ConfigReader("gemini", config, frozenset({"api_key", "base_url", "api_version"}))
        self._key = reader.string("api_key", "GEMINI_API_KEY", "GOOGLE_API_KEY", environ=os.environ)
        if not self._key:
            raise ProviderConfigError(
                "no API key for --count-tokens api: set GEMINI_API_KEY (or GOOGLE_API_KEY) or the "
                "provider config's `api_key` (or count locally)",
                provider="gemini",
            )
        self._base_url = reader.string("base_url", "GOOGLE_GEMINI_BASE_URL", environ=os.environ)
        self._api_version = reader.string("api_version", environ={})
        self._client: Any = None

    async def count(self, request: LlmRequest) -> int:
        from google import genai
        from google.genai import types

        if self._client is None:
            options = types.HttpOptions(base_url=self._base_url, api_version=self._api_version)
            self._client = genai.Client(api_key=self._key, http_options=options)
        # The Gemini API's count takes contents only (no system instruction or response schema), so
        # those are counted as extra parts: a close, slightly high, figure.
        schema = request.structured_schema()
        parts = [p for p in (request.system, request.prompt, schema and json.dumps(schema)) if p]
        try:
            result = await self._client.aio.models.count_tokens(model=request.model, contents=parts)
        except Exception as exc:  # the SDK's API errors, and transport errors of either of its clients
            raise _count_failed("gemini", exc, self._key) from None
        return int(result.total_tokens or 0)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aio.aclose()


def _count_failed(provider: str, exc: Exception, key: str | None) -> HeadraceError:
    message = redact(str(exc) or type(exc).__name__, [key])
    return HeadraceError(
        f"{provider} token count failed: {type(exc).__name__}: {message}; "
        "`--count-tokens local` estimates without the API"
    )


def _counters(
    checked: CheckedPipeline, targets: Mapping[str, Target], mode: CountMode
) -> dict[str, _Counter]:
    """One counter per provider of the nodes' targets; a provider that cannot count is a located error."""
    pipeline = checked.loaded.spec
    counters: dict[str, _Counter] = {}
    failed: set[str] = set()
    problems = []
    api: dict[str, Callable[[Mapping[str, Any]], _Counter]] = {
        "anthropic": _AnthropicCounter,
        "gemini": _GeminiCounter,
    }
    for node, target in targets.items():
        name = target.provider
        if name in counters or name in failed:
            continue
        if mode == "api" and name in api:
            try:
                counters[name] = api[name](pipeline.provider_config(name))
            except ProviderConfigError as exc:
                failed.add(name)  # said once, at the first node that uses the provider
                problems.append(Problem(("nodes", node, "provider"), str(exc), code="provider"))
        else:
            counters[name] = _LocalCounter(pipeline.priced_as(name))
            if mode == "api":
                counters[name].method += f" ({name} has no token-count endpoint)"
    _raise_located(problems, checked)
    return counters


async def _count_all(jobs: list[tuple[_Counter, LlmRequest]]) -> list[int]:
    """Every request's input tokens, in order; identical requests are counted once."""
    slots = asyncio.Semaphore(_COUNT_CONCURRENCY)
    seen: dict[tuple[int, str], asyncio.Task[int]] = {}

    async def one(counter: _Counter, request: LlmRequest) -> int:
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
        for counter in {id(c): c for c, _ in jobs}.values():
            await counter.close()


def _output_tokens(spec: LlmSpec, provider: str, options: EstimateOptions) -> tuple[int, str]:
    """Output tokens expected per call, and what that figure rests on."""
    framing = _ANSWER_FRAMING_TOKENS.get(provider, 0) if provider != "offline" else 0
    extra = f" + {framing} for the answer's framing" if framing else ""
    if isinstance(spec, (LlmClassify, LlmFilter)):
        labels = spec.labels if isinstance(spec, LlmClassify) else ["yes", "no"]
        tokens, basis = max(estimate_tokens(label) for label in labels) + framing, f"the longest label{extra}"
    elif isinstance(spec, LlmExtract):
        try:
            instance = json.dumps(schema_instance(dict(spec.output_schema), seed=_SEED))
            tokens = estimate_tokens(instance) + framing
            basis = f"a minimal instance of output_schema (required fields, short strings: a floor){extra}"
        except (ValueError, KeyError, TypeError):
            tokens, basis = MAP_OUTPUT_TOKENS, "assumed: output_schema has no instance to measure"
    elif options.output_tokens is not None:
        tokens, basis = options.output_tokens, "assumed: --output-tokens"
    else:
        tokens = MAP_OUTPUT_TOKENS
        basis = f"assumed: min(max_tokens, {MAP_OUTPUT_TOKENS}); --output-tokens N sets it"
    return min(tokens, spec.max_tokens), basis


# ---------------------------------------------------------------- figures and cost


def _figures(
    found: _Occurrence, counted: list[int], method: str, rules: str, options: EstimateOptions
) -> NodeEstimate:
    """A node's figures in one stage (``rules``: the provider whose token rules apply), before pricing."""
    spec: LlmSpec = found.node.spec  # type: ignore[assignment]
    scale = found.scale
    per_call, basis = _output_tokens(spec, rules, options)
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


def _merged(a: NodeEstimate, b: NodeEstimate) -> NodeEstimate:
    """A node that feeds several sinks runs once per sink's stage: its figures add up."""
    sums = {name: getattr(a, name) + getattr(b, name) for name in _SUMMED}
    cached = None if a.cached_calls is None else a.cached_calls + (b.cached_calls or 0)
    basis = max(a.rows_basis, b.rows_basis, key=_SURENESS.index)
    notes = tuple(dict.fromkeys((*a.notes, *b.notes, "runs once for each sink it feeds")))
    return dataclasses.replace(a, **sums, cached_calls=cached, rows_basis=basis, notes=notes)


def _priced(node: NodeEstimate, prices: PriceTable, pipeline: Pipeline) -> NodeEstimate:
    price = prices.price(pipeline.priced_as(node.provider), node.model)
    batch = node.mode == "batch"
    return dataclasses.replace(
        node,
        expected_usd=price.cost(node.input_tokens, node.output_tokens, batch=batch),
        worst_case_usd=price.cost(node.worst_case_input_tokens, node.worst_case_output_tokens, batch=batch),
    )


def _method(options: EstimateOptions, prices: PriceTable, cache: ResponseCache | None) -> dict[str, Any]:
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


def _sample_problems(found: list[_Occurrence], samples: Mapping[str, _Sample]) -> list[Problem]:
    problems = []
    for name, sample in samples.items():
        if sample.source.malformed_rows:
            problems.append(
                _warning(
                    ("nodes", name, "path"),
                    f"{sample.source.malformed_rows} malformed rows in the sample of '{name}' were skipped; "
                    "a run fails on them unless the node's on_error skips or dead-letters them",
                )
            )
    for occurrence in found:
        if occurrence.failed:
            problems.append(
                _warning(
                    ("nodes", occurrence.node.id, "prompt"),
                    f"{len(occurrence.failed)} of {occurrence.sampled} sampled rows cannot render the prompt "
                    f"of '{occurrence.node.id}' (first: {occurrence.failed[0]}); a run fails on such rows "
                    "unless the node's on_error skips or dead-letters them",
                )
            )
        elif occurrence.sampled == 0:
            problems.append(
                _warning(
                    ("nodes", occurrence.node.id),
                    f"no sampled row reaches LLM node '{occurrence.node.id}', so its estimate is 0; "
                    "a larger --sample may reach it",
                )
            )
    return problems


def _budget_problems(result: Estimate, pipeline: Pipeline) -> list[Problem]:
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
    return [_warning(where, message)]


def _warning(where: tuple[str, ...], message: str) -> Problem:
    return Problem(where, message, severity="warning", code="estimate")
