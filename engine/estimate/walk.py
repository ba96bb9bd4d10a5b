"""Walking a stage on its source's sample: the rows each LLM node would see, and the requests it renders.

The sampled rows go through the stage's ops in order, in this process. A per-batch op runs on them as a
run would, so a filter's selectivity is measured; a barrier (dedupe, aggregate, limit) runs on them too,
but only a limit, or an aggregate without groups, keeps the row count sure. An LLM node renders each
row's request exactly as a run does (``RowTask``) and answers it with a stand-in (or, with the response
cache consulted, the cached answer), so nodes downstream see answers of the right type and size.

The sample comes in parts, one per place of the source it was read from (``sample``), and each part
walks on its own while the ops are per batch, as a run's batches do: so every LLM node knows, per part,
the rows and requests that reach it, and each part's rows stand for ``scale`` rows of the whole input
(``intervals`` makes a range of the parts' spread). A barrier sees the whole sample at once, as it sees
the whole input in a run: after it the parts are pooled into one. ``basis`` says how sure the rows are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from engine.errors import ConfigError, DataError
from engine.estimate.answers import output_tokens, stand_in
from engine.estimate.results import EstimateOptions, RowsBasis
from engine.estimate.sample import Sample
from engine.plan import PlanNode
from engine.spec.models import Pipeline
from operators.batch import batch_fn
from operators.llm import LlmFilter, LlmSpec
from operators.llm_rows import InvalidAnswer, RowTask, Target
from operators.providers.base import LlmRequest
from operators.providers.cache import ResponseCache
from operators.stateful import barrier_state


@dataclass(frozen=True)
class PartCount:
    """What reached an LLM node from one part of the sample."""

    sampled: int
    requests: int
    """How many of ``Occurrence.requests``, in order, are this part's."""
    cached: int
    scale: float
    group: int


@dataclass
class Occurrence:
    """One LLM node in one stage: the requests of the sampled rows that reach it, before counting."""

    node: PlanNode
    target: Target
    sampled: int
    requests: list[LlmRequest]
    """Requests of the sampled rows that would be sent (rendered, not answered by the cache)."""
    cached: int | None
    failed: list[str]
    parts: list[PartCount]
    pooled: bool
    """A barrier upstream pooled the parts: their spread no longer tells the range."""
    basis: RowsBasis
    notes: list[str]
    source: str = ""

    @property
    def scale(self) -> float:
        """Real rows per sampled row, on average over the parts."""
        return sum(p.sampled * p.scale for p in self.parts) / self.sampled if self.sampled else 0.0


@dataclass
class _Part:
    table: pa.Table
    scale: float
    group: int = 0


class StageWalk:
    """The sample as it flows through one stage: its parts' rows, real rows per sampled row, how sure."""

    def __init__(
        self,
        pipeline: Pipeline,
        targets: Mapping[str, Target],
        options: EstimateOptions,
        cache: ResponseCache | None,
        sample: Sample,
    ) -> None:
        self.pipeline = pipeline
        self.targets = targets
        self.options = options
        self.cache = cache
        source = sample.source
        self.source = source.node
        self.parts = [_Part(p.table, p.weight, p.group) for p in sample.parts]
        self.whole = sample.whole
        """The sample holds every row that reaches this point (at most, after an llm_filter)."""
        self.pooled = False
        self.real = True
        """Every sampled row here is one a run would have here (no llm_filter has been stood in for)."""
        self.basis: RowsBasis = source.basis
        self.notes: list[str] = []
        self.found: list[Occurrence] = []
        self.stood_in: list[str] = []
        """LLM nodes upstream whose answers are stand-ins (no cached answer for every row)."""

    @property
    def sampled(self) -> int:
        """Sampled rows at this point."""
        return sum(p.table.num_rows for p in self.parts)

    @property
    def rows(self) -> int:
        """The whole input's rows that reach this point."""
        return round(sum(p.table.num_rows * p.scale for p in self.parts))

    def step(self, node: PlanNode) -> None:
        """Pass the sample through ``node``."""
        try:
            if isinstance(node.spec, LlmSpec):
                self._llm(node, node.spec)
            elif node.spec.barrier:
                self._barrier(node)
            else:
                before = self.sampled
                fn = batch_fn(node.spec)
                for part in self.parts:
                    if part.table.num_rows:
                        part.table = fn(part.table)
                if self.sampled != before and self.stood_in:
                    self.whole = self.real = False
                    self.basis = "estimated" if self.basis == "exact" else self.basis
                    self.notes.append(
                        f"'{node.id}' changes the row count on stand-in answers of "
                        f"{', '.join(map(repr, self.stood_in))} (labels spread evenly): its share is a guess"
                    )
                elif self.basis == "exact" and not self.whole and self.sampled != before:
                    self.basis = "estimated"  # a measured selectivity, not a count
        except (DataError, ConfigError):
            raise
        except Exception as exc:
            raise DataError(f"node '{node.id}': on the sampled rows: {type(exc).__name__}: {exc}") from None

    def _barrier(self, node: PlanNode) -> None:
        spec = node.spec
        state = barrier_state(spec)
        tables = [p.table for p in self.parts if p.table.num_rows]
        whole_sample = pa.concat_tables(tables, promote_options="permissive") if tables else None
        out = state.push(whole_sample) if whole_sample is not None else []
        out += state.finish()
        if out:
            table = pa.concat_tables(out, promote_options="permissive")
        elif self.parts:
            table = self.parts[0].table.slice(0, 0)
        else:
            table = pa.table({})
        limit: int | None = getattr(spec, "n", None) if spec.op == "limit" else None
        if self.whole:
            rows, basis = table.num_rows, self.basis
        elif limit is not None and self.real and self.sampled >= limit:
            rows, basis, self.whole = limit, "exact", True  # the sample alone fills the limit
        elif limit is not None:
            rows, basis = min(limit, self.rows), self.basis
        elif spec.op == "aggregate" and not getattr(spec, "group_by", None):
            rows, basis, self.whole = 1, "exact", True
        else:
            rows, basis = self.rows, "upper bound"
            self.notes.append(f"'{node.id}' ({spec.op}) drops an unknown share of rows: an upper bound")
        self.parts = [_Part(table, rows / table.num_rows if table.num_rows else 0.0)]
        self.pooled = True
        self.basis = basis

    def _llm(self, node: PlanNode, spec: LlmSpec) -> None:
        target = self.targets[node.id]
        task = RowTask(spec, self.pipeline.params)
        answer_tokens = output_tokens(spec, target.provider, self.options)[0]
        requests: list[LlmRequest] = []
        failed: list[str] = []
        counts: list[PartCount] = []
        sampled = self.sampled
        index = 0
        all_cached = 0
        for part in self.parts:
            values: list[Any] = []
            ok: list[bool] = []
            sent = len(requests)
            cached = 0
            for row in part.table.to_pylist():
                try:
                    request = task.request(row, target)
                except Exception as exc:  # a template that fails on this row's values fails the row in a run
                    failed.append(f"{type(exc).__name__}: {exc}")
                    values.append(None)
                    ok.append(False)
                    index += 1
                    continue
                value = stand_in(spec, answer_tokens, index)
                index += 1
                hit = self.cache.get(request) if self.cache is not None else None
                if hit is None:
                    requests.append(request)
                else:
                    cached += 1
                    with contextlib.suppress(InvalidAnswer):  # an unusable cached answer: the stand-in
                        value = task.interpret(request, hit.text, hit.parsed, hit.stop_reason)
                values.append(value)
                ok.append(True)
            counts.append(
                PartCount(part.table.num_rows, len(requests) - sent, cached, part.scale, part.group)
            )
            all_cached += cached
            if part.table.num_rows:
                part.table = task.assemble(part.table, values, ok)
        self.found.append(
            Occurrence(
                node,
                target,
                sampled,
                requests,
                all_cached if self.cache is not None else None,
                failed,
                counts,
                self.pooled,
                self.basis,
                list(self.notes),
                self.source,
            )
        )
        if self.cache is None or all_cached < sampled:
            self.stood_in.append(node.id)
        if isinstance(spec, LlmFilter):
            keep = self.options.keep.get(node.id)
            if keep is not None:
                for part in self.parts:
                    part.scale *= keep
                self.whole = self.real = False
                self.basis = "estimated" if self.basis == "exact" else self.basis
                self.notes.append(f"'{node.id}' keeps {keep:.0%} of rows (--keep)")
            elif self.cache is None or all_cached < sampled:
                self.real = False
                self.basis = "upper bound"
                self.notes.append(
                    f"'{node.id}' (llm_filter) keeps an unknown share of rows: an upper bound "
                    f"(--keep {node.id}=FRACTION sets it)"
                )
