"""What per-batch transforms do: a table from op name to a factory of ``Table -> Table`` functions.

Each factory runs once per task (inside a Ray worker); the function it returns runs once per batch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import DataError, HeadraceError
from engine.policy import import_object
from engine.spec.models import NodeSpec
from engine.spec.registry import behaviour
from operators.text import chunk_spans
from operators.transforms import (
    Cast,
    ChunkText,
    Explode,
    Filter,
    FlatMap,
    MapBatches,
    Rename,
    Sample,
    Select,
    Sql,
)

BatchFn = Callable[[pa.Table], pa.Table]


def _sql(spec: Sql) -> BatchFn:
    return _duckdb(spec.query)


def _filter(spec: Filter) -> BatchFn:
    return _duckdb(f"SELECT * FROM batch WHERE {spec.where}")


_THREAD = threading.local()
_KEPT_DATABASES = 4
"""DuckDB databases each thread keeps, one per query text, the least recently used dropped first."""


def _duckdb_session(query: str) -> Any:
    """A new DuckDB connection for one task's ``query``: its own session (settings, temporary tables,
    the registered ``batch``) on a one-thread in-memory database this thread keeps for that query.

    Opening a database costs about 16 ms of CPU, as much as the query spends on a fifth of a 64 MiB
    CSV split, and a task used to open one per node; a cursor on a kept database costs microseconds.
    A database is kept per query text so that what one query leaves in it (a table or macro it
    created, a global setting) is never seen by another pipeline's query in the same worker.
    """
    import duckdb

    kept: OrderedDict[str, Any] | None = getattr(_THREAD, "duckdb", None)
    if kept is None:
        kept = _THREAD.duckdb = OrderedDict()
    database = kept.pop(query, None)
    if database is None:
        database = duckdb.connect(config={"threads": 1})
    kept[query] = database
    while len(kept) > _KEPT_DATABASES:
        kept.popitem(last=False)  # a task still using it keeps it open through its cursor
    return database.cursor()


def _duckdb(query: str) -> BatchFn:
    con = _duckdb_session(query)

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


def _import(path: str) -> Any:
    return import_object(path)  # the operator's module allow-list applies in every worker


def _map_batches(spec: MapBatches) -> BatchFn:
    target = _import(spec.fn)
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


# Errors below are plain exceptions, not DataError: the worker wraps them with node, file and split.


def _flat_map(spec: FlatMap) -> BatchFn:
    target = _import(spec.fn)
    kwargs = dict(spec.kwargs)

    def run(table: pa.Table) -> pa.Table:
        out: list[Mapping[str, Any]] = []
        for i, row in enumerate(table.to_pylist()):
            produced = target(row, **kwargs)
            if isinstance(produced, (Mapping, str, bytes)) or not isinstance(produced, Iterable):
                raise TypeError(
                    f"{spec.fn} returned {type(produced).__name__} for row {i} of a batch; "
                    "it must return a list of rows (dicts), [] for none"
                )
            for new in produced:
                if not isinstance(new, Mapping):
                    raise TypeError(
                        f"{spec.fn} returned a {type(new).__name__} among the rows for row {i} of a "
                        "batch; each row must be a dict of column -> value"
                    )
                out.append(new)
        names = list(dict.fromkeys(k for row in out for k in row))
        return pa.table({k: [row.get(k) for row in out] for k in names})

    return run


def _explode(spec: Explode) -> BatchFn:
    def run(table: pa.Table) -> pa.Table:
        column = table[spec.column]
        kind = column.type
        if pa.types.is_null(kind):  # a batch whose lists are all null, as JSON inference types it
            return table.slice(0, 0)
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
            raise TypeError(f"explode needs a list column; '{spec.column}' is {kind}")
        # flatten drops null and empty lists; the parent index of each element repeats its row
        items = pc.list_flatten(column)
        rows = table.take(pc.list_parent_indices(column))
        at = table.column_names.index(spec.column)
        return rows.set_column(at, pa.field(spec.column, items.type), items)

    return run


_U64 = pa.uint64()
_GOLDEN = 0x9E3779B97F4A7C15


def _mix(x: pa.Array) -> pa.Array:
    """The splitmix64 finaliser (uint64 arithmetic wraps): spreads any bit difference over all 64 bits."""
    x = pc.multiply(
        pc.bit_wise_xor(x, pc.shift_right(x, pa.scalar(30, _U64))), pa.scalar(0xBF58476D1CE4E5B9, _U64)
    )
    x = pc.multiply(
        pc.bit_wise_xor(x, pc.shift_right(x, pa.scalar(27, _U64))), pa.scalar(0x94D049BB133111EB, _U64)
    )
    return pc.bit_wise_xor(x, pc.shift_right(x, pa.scalar(31, _U64)))


def _sample(spec: Sample) -> BatchFn:
    if spec.fraction >= 1:
        return lambda table: table
    con = _duckdb_session("sample: row hashes")
    salt = _mix(pa.array([(spec.seed * _GOLDEN) % 2**64], _U64))[0]
    # a row is kept when its mixed hash falls in the lowest `fraction` of the 64-bit range
    threshold = pa.scalar(min(int(spec.fraction * 2.0**64), 2**64 - 1), _U64)

    def run(table: pa.Table) -> pa.Table:
        if table.num_columns == 0 or table.num_rows == 0:
            return table
        return table.filter(pc.less(_mix(pc.bit_wise_xor(_row_hashes(con, table), salt)), threshold))

    return run


def _row_hashes(con: Any, table: pa.Table) -> pa.Array:
    """DuckDB's hash of each row's values, in order: the same values give the same hash in any batch."""
    quoted = ", ".join('"' + name.replace('"', '""') + '"' for name in table.column_names)
    con.register("rows", table)
    try:
        relation = con.sql(f"SELECT hash({quoted}) AS h FROM rows")
        fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
        hashes = fetch()["h"]
    finally:
        con.unregister("rows")
    return hashes.combine_chunks().cast(_U64)


def _chunk_text(spec: ChunkText) -> BatchFn:
    def run(table: pa.Table) -> pa.Table:
        column = table[spec.column]
        kind = column.type
        text_type = (
            pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
        )
        if not (text_type or pa.types.is_null(kind)):
            raise TypeError(f"chunk_text needs a string column; '{spec.column}' is {kind}")
        parents: list[int] = []
        chunks: list[str] = []
        positions: list[int] = []
        for i, text in enumerate(column.to_pylist()):
            if not text:
                continue
            for n, (start, end) in enumerate(chunk_spans(text, spec.chunk_chars, spec.overlap_chars)):
                parents.append(i)
                chunks.append(text[start:end])
                positions.append(n)
        out = table.take(pa.array(parents, pa.int64()))
        out = _put(out, spec.output, pa.array(chunks, pa.string()))
        return _put(out, spec.index_column, pa.array(positions, pa.int64()))

    return run


def _put(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    """Set column ``name``, in place when it exists, else appended."""
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


def batch_fn(spec: NodeSpec) -> BatchFn:
    """The per-batch function of ``spec``: its op's ``batch`` behaviour from the op registry (the
    built-ins above are registered in :mod:`operators`; a plugin registers its own)."""
    make = behaviour(spec.op, "batch")
    if make is None:
        raise HeadraceError(
            f"op '{spec.op}' has no per-batch function registered (register_op(..., batch=...))"
        )
    fn: BatchFn = make(spec)
    return fn
