"""Walking a stage on its source's sample: the rows each LLM node would see, and the requests it renders.

The sampled rows go through the stage's ops in order, in this process. A per-batch op runs on them as a
run would, so a filter's selectivity is measured; a barrier (dedupe, aggregate, limit) runs on them too,
but only a limit, or an aggregate without groups, keeps the row count sure. An LLM node renders each
row's request exactly as a run does (``RowTask``) and answers it with a stand-in (or, with the response
cache consulted, the cached answer), so nodes downstream see answers of the right type and size.

Each sampled row stands for ``scale`` rows of the whole input; ``basis`` says how sure that is.
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
from operators.stateful import BARRIER_OPS


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
    scale: float
    basis: RowsBasis
    notes: list[str]


class StageWalk:
    """The sample as it flows through one stage: its rows, real rows per sampled row, and how sure."""

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
        self.table = sample.table
        source = sample.source
        self.scale = source.rows / self.table.num_rows if self.table.num_rows else 0.0
        self.whole = source.basis == "exact" and source.rows == self.table.num_rows
        """The sample holds every row that reaches this point (at most, after an llm_filter)."""
        self.real = True
        """Every sampled row here is one a run would have here (no llm_filter has been stood in for)."""
        self.basis: RowsBasis = source.basis
        self.notes: list[str] = []
        self.found: list[Occurrence] = []
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
        """The whole input's rows that reach this point."""
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
        answer_tokens = output_tokens(spec, target.provider, self.options)[0]
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
            value = stand_in(spec, answer_tokens, index)
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
            Occurrence(
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
