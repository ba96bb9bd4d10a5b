"""What per-batch transforms do: a table from op name to a factory of ``Table -> Table`` functions.

Each factory runs once per task (inside a Ray worker); the function it returns runs once per batch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from engine.errors import DataError
from engine.spec.models import NodeSpec
from operators.transforms import Cast, Filter, MapBatches, Rename, Select, Sql

BatchFn = Callable[[pa.Table], pa.Table]


def _sql(spec: Sql) -> BatchFn:
    return _duckdb(spec.query)


def _filter(spec: Filter) -> BatchFn:
    return _duckdb(f"SELECT * FROM batch WHERE {spec.where}")


def _duckdb(query: str) -> BatchFn:
    import duckdb

    con = duckdb.connect(config={"threads": 1})

    def run(table: pa.Table) -> pa.Table:
        con.register("batch", table)
        try:
            relation = con.sql(query)
            fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
            return fetch()
        finally:
            con.unregister("batch")

    return run


def _select(spec: Select) -> BatchFn:
    return lambda table: table.select(spec.columns)


def _rename(spec: Rename) -> BatchFn:
    return lambda table: table.rename_columns([spec.columns.get(c, c) for c in table.column_names])


def _cast(spec: Cast) -> BatchFn:
    def run(table: pa.Table) -> pa.Table:
        fields = [
            pa.field(f.name, _arrow_type(spec.columns[f.name])) if f.name in spec.columns else f
            for f in table.schema
        ]
        return table.cast(pa.schema(fields))

    return run


def _arrow_type(name: str) -> pa.DataType:
    try:
        return pa.type_for_alias(name)
    except (ValueError, KeyError):
        raise DataError(f"'{name}' is not an Arrow type name (e.g. int64, string, double)") from None


def _map_batches(spec: MapBatches) -> BatchFn:
    module_name, _, attr = spec.fn.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    kwargs = dict(spec.kwargs)

    def run(table: pa.Table) -> pa.Table:
        out = target(table, **kwargs)
        if isinstance(out, pa.RecordBatch):
            return pa.Table.from_batches([out])
        if not isinstance(out, pa.Table):
            raise DataError(
                f"{spec.fn} returned {type(out).__name__}; it must return a pyarrow Table or RecordBatch"
            )
        return out

    return run


BATCH_OPS: dict[str, Callable[[Any], BatchFn]] = {
    "sql": _sql,
    "filter": _filter,
    "select": _select,
    "rename": _rename,
    "cast": _cast,
    "map_batches": _map_batches,
}
"""Per-batch ops the optimizer may fuse into one task, by op name."""


def batch_fn(spec: NodeSpec) -> BatchFn:
    """The per-batch function of ``spec`` (its op must be in :data:`BATCH_OPS`)."""
    return BATCH_OPS[spec.op](spec)
