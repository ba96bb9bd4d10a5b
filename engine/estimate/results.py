"""What an estimate is asked for and what it answers: options in, per-source and per-node figures out.

Frozen values only; ``Estimate.as_dict`` is the JSON ``headrace estimate --json`` prints.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.errors import Diagnostic
from engine.estimate.intervals import p5_p95

CountMode = Literal["local", "api"]
RowsBasis = Literal["exact", "estimated", "upper bound"]

DEFAULT_SAMPLE_ROWS = 400
DEFAULT_SAMPLE_RANGES = 32
MAP_OUTPUT_TOKENS = 256
"""Output tokens assumed per llm_map call (capped at its max_tokens) when none are given."""


@dataclass(frozen=True)
class EstimateOptions:
    """How to estimate: the sample, the token counter, assumptions, and whether to consult the cache."""

    sample_rows: int = DEFAULT_SAMPLE_ROWS
    """Rows to read from each source, spread over ``sample_ranges`` places of it (at least this many
    where the input holds them: a window reads whole records)."""
    sample_ranges: int = DEFAULT_SAMPLE_RANGES
    """How many places of each source (byte ranges, row groups, files) the sample is spread over."""
    count_tokens: CountMode = "local"
    output_tokens: int | None = None
    """Output tokens per llm_map call (None: ``min(max_tokens, MAP_OUTPUT_TOKENS)``)."""
    with_cache: bool = False
    keep: Mapping[str, float] = field(default_factory=dict)
    """The share of rows each named llm_filter node keeps (absent: all of them, an upper bound)."""


@dataclass(frozen=True)
class SampleRange:
    """One place a source's sample was read from: a byte range of a file (``end`` exclusive; the rows
    are those whose record starts in it), a Parquet row group (``row_group``), or a whole file."""

    url: str
    start: int
    end: int
    rows: int
    row_group: int | None = None


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
    rows_p5: int = 0
    rows_p95: int = 0
    """The p5-p95 range of ``rows`` (both ``rows`` when exact)."""
    bytes_read: int = 0
    """Bytes of the input the sample read (its windows, not the header or schema reads)."""
    sample_ranges: tuple[SampleRange, ...] = ()

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
    sample_ranges: int = 0
    """How many places of the source the sampled rows reaching this node came from."""
    usd_p5: float = 0.0
    usd_p95: float = 0.0
    """The p5-p95 range of ``expected_usd`` from the spread of the sample (see ``intervals``)."""
    usd_se: float = 0.0
    """The standard error of ``expected_usd`` that range comes from."""
    source: str = ""
    """The source node whose sample the figures come from."""

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
            **dict(zip(("usd_p5", "usd_p95"), self.usd_range, strict=True)),
            "budget_usd": self.budget_usd,
        }

    @property
    def usd_range(self) -> tuple[float, float]:
        """The p5-p95 range of the total expected cost: nodes fed by one source move together (their
        standard errors add), sources are independent (their variances add)."""
        by_source: dict[str, float] = {}
        for node in self.nodes.values():
            by_source[node.source] = by_source.get(node.source, 0.0) + node.usd_se
        se = math.sqrt(sum(s * s for s in by_source.values()))
        expected = sum(n.expected_usd for n in self.nodes.values())
        worst = sum(n.worst_case_usd for n in self.nodes.values())
        return p5_p95(expected, se, ceiling=max(worst, expected))

    def as_dict(self) -> dict[str, Any]:
        """One JSON object: pipeline, nodes, total, method (with the sources) and warnings."""
        return {
            "pipeline": self.pipeline,
            "nodes": {name: n.as_dict() for name, n in self.nodes.items()},
            "total": self.total,
            "method": {**self.method, "sources": {k: s.as_dict() for k, s in self.sources.items()}},
            "warnings": [d.as_dict() for d in self.warnings],
        }
