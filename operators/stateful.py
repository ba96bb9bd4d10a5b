"""Ops that need the whole stream: `dedupe` and `aggregate` (and the state behind `limit`).

Each has a small state object with two methods, ``push(table) -> [tables out]`` and
``finish() -> [tables out]``. The runtime keeps one such state per node inside a Ray actor (or feeds
it in stream order, when ``ordered``), so the state lives in one place for the whole cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ConfigDict, Field, model_validator

from engine.errors import HeadraceError
from engine.spec.models import ColumnKind, Columns, Model, TransformSpec
from engine.spec.registry import behaviour, register_op
from operators.transforms import Limit


@register_op
class Dedupe(TransformSpec):
    """Keep the first row to arrive for each key, across the whole stream."""

    per_batch: ClassVar[bool] = False
    barrier: ClassVar[bool] = True

    op: Literal["dedupe"] = Field(description="Drop rows whose key was already seen.")
    keys: list[str] = Field(min_length=1, description="Columns that together identify a row.")

    def column_refs(self) -> list[tuple[str, tuple[str | int, ...]]]:
        return [(k, ("keys", i)) for i, k in enumerate(self.keys)]


class Aggregation(Model):
    """One output column of an aggregate."""

    model_config = ConfigDict(
        json_schema_extra={  # the schema's copy of _column_needed
            "if": {"type": "object", "properties": {"fn": {"const": "count"}}, "required": ["fn"]},
            "else": {"type": "object", "properties": {"column": {"type": "string"}}, "required": ["column"]},
        }
    )

    fn: Literal["count", "sum", "min", "max", "mean", "collect"] = Field(
        description="`count` rows (or non-null values of `column`), `sum`, `min`, `max`, `mean`, or "
        "`collect` the values into a list."
    )
    column: str | None = Field(None, description="The input column; only `count` may omit it.")

    @model_validator(mode="after")
    def _column_needed(self) -> Aggregation:
        if self.column is None and self.fn != "count":
            raise ValueError(f"`{self.fn}` needs a `column`")
        return self


@register_op
class Aggregate(TransformSpec):
    """Group the whole stream by keys and aggregate each group; emits one row per group at the end."""

    per_batch: ClassVar[bool] = False
    barrier: ClassVar[bool] = True

    op: Literal["aggregate"] = Field(description="Group by keys and aggregate.")
    group_by: list[str] = Field(default_factory=list, description="Key columns; empty for one global row.")
    aggregations: dict[str, Aggregation] = Field(
        min_length=1, description="Output column -> aggregation, e.g. {total: {fn: sum, column: amount}}."
    )

    def column_refs(self) -> list[tuple[str, tuple[str | int, ...]]]:
        refs: list[tuple[str, tuple[str | int, ...]]] = [
            (k, ("group_by", i)) for i, k in enumerate(self.group_by)
        ]
        refs += [
            (a.column, ("aggregations", name, "column")) for name, a in self.aggregations.items() if a.column
        ]
        return refs

    def column_kinds(self) -> dict[tuple[str | int, ...], ColumnKind]:
        numeric = ("sum", "mean")
        return {
            ("aggregations", n, "column"): "number" for n, a in self.aggregations.items() if a.fn in numeric
        }

    def output_columns(self, inputs: object) -> Columns | None:
        if not (isinstance(inputs, (list, tuple)) and inputs and inputs[0] is not None):
            return None
        known = inputs[0]
        out = {k: known.get(k, "any") for k in self.group_by}
        types = {"count": "int64", "mean": "double", "collect": "list"}
        for name, agg in self.aggregations.items():
            out[name] = types.get(agg.fn) or known.get(agg.column or "", "any")
        return out


class BarrierState:
    """The state of one barrier node over a run."""

    ordered: ClassVar[bool] = False
    """True when the state must see batches in stream order (split order)."""

    def push(self, table: pa.Table) -> list[pa.Table]:
        """Take a batch; return whatever output it releases."""
        raise NotImplementedError

    def finish(self) -> list[pa.Table]:
        """No more input: return the remaining output."""
        return []

    @property
    def satisfied(self) -> bool:
        """True when no further input can change the output (upstream work may stop)."""
        return False


class LimitState(BarrierState):
    """The first `n` rows of the stream, in split order."""

    ordered = True

    def __init__(self, spec: Limit) -> None:
        self.left = spec.n

    def push(self, table: pa.Table) -> list[pa.Table]:
        taken = table.slice(0, self.left)
        self.left -= taken.num_rows
        return [taken] if taken.num_rows else []

    @property
    def satisfied(self) -> bool:
        return self.left <= 0


class DedupeState(BarrierState):
    """Remembers every key seen; passes on the rows with new keys."""

    def __init__(self, spec: Dedupe) -> None:
        self.keys = spec.keys
        self.seen: set[Any] = set()

    def push(self, table: pa.Table) -> list[pa.Table]:
        columns = [table.column(k).to_pylist() for k in self.keys]
        keys = columns[0] if len(columns) == 1 else list(zip(*columns, strict=True))
        keep = []
        for key in keys:
            fresh = key not in self.seen
            if fresh:
                self.seen.add(key)
            keep.append(fresh)
        out = table.filter(pa.array(keep, pa.bool_()))
        return [out] if out.num_rows else []


_ALL = "__headrace_all__"
_PARTIAL: dict[str, list[str]] = {
    "count": ["count"],
    "sum": ["sum"],
    "min": ["min"],
    "max": ["max"],
    "mean": ["sum", "count"],
    "collect": ["list"],
}


class AggregateState(BarrierState):
    """Aggregates each batch to partial results as it arrives, and merges the partials at the end."""

    def __init__(self, spec: Aggregate) -> None:
        self.spec = spec
        self.keys = list(spec.group_by) or [_ALL]
        self.partials: list[pa.Table] = []

    def push(self, table: pa.Table) -> list[pa.Table]:
        if not self.spec.group_by:
            table = table.append_column(_ALL, pa.repeat(pa.scalar(0, pa.int8()), table.num_rows))
        specs: list[tuple[Any, str, Any]] = []
        names: list[str] = []
        for name, agg in self.spec.aggregations.items():
            for part in _PARTIAL[agg.fn]:
                if agg.fn == "count" and agg.column is None:
                    specs.append(([], "count_all", None))
                else:
                    specs.append(
                        (agg.column, part, pc.CountOptions(mode="only_valid") if part == "count" else None)
                    )
                names.append(f"{name}:{part}")
        grouped = table.group_by(self.keys, use_threads=False).aggregate(specs)
        # pyarrow names outputs after their inputs (and puts keys first or last by version): rename
        # the aggregate columns, in order, to stable partial names
        pending = iter(names)
        keys = set(self.keys)
        grouped = grouped.rename_columns([c if c in keys else next(pending) for c in grouped.column_names])
        self.partials.append(grouped)
        return []

    def finish(self) -> list[pa.Table]:
        if not self.partials:
            return []
        merged = pa.concat_tables(self.partials, promote_options="permissive")
        columns: dict[str, Any] = {}
        rows = merged.to_pylist()
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in rows:
            key = tuple(row[k] for k in self.keys)
            acc = groups.setdefault(key, {})
            for name, agg in self.spec.aggregations.items():
                for part in _PARTIAL[agg.fn]:
                    value = row[f"{name}:{part}"]
                    acc[f"{name}:{part}"] = _MERGE[part](acc.get(f"{name}:{part}"), value)
        for key_index, key_name in enumerate(self.keys):
            if key_name != _ALL:
                columns[key_name] = [k[key_index] for k in groups]
        for name, agg in self.spec.aggregations.items():
            values = []
            for acc in groups.values():
                if agg.fn == "mean":
                    total, count = acc[f"{name}:sum"], acc[f"{name}:count"]
                    values.append(total / count if count else None)
                else:
                    values.append(acc[f"{name}:{_PARTIAL[agg.fn][0]}"])
            columns[name] = values
        return [pa.table(columns)]


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return b
    return a if b is None else a + b


def _least(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


def _most(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


def _concat(a: list[Any] | None, b: list[Any] | None) -> list[Any]:
    return (a or []) + (b or [])


_MERGE: dict[str, Callable[[Any, Any], Any]] = {
    "count": _add,
    "sum": _add,
    "min": _least,
    "max": _most,
    "list": _concat,
}


def barrier_state(spec: Any) -> BarrierState:
    """The stream-wide state of a barrier node: its op's ``state`` behaviour from the op registry."""
    make = behaviour(spec.op, "state")
    if make is None:
        raise HeadraceError(f"op '{spec.op}' has no barrier state registered (register_op(..., state=...))")
    state: BarrierState = make(spec)
    return state
