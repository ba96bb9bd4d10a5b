"""The systems a streaming-transform job is measured on: headrace and three baselines.

Every system runs the same job: read the input files, apply the case's DuckDB query to batches of
:data:`BATCH_ROWS` rows, write Parquet with pyarrow's defaults (snappy, dictionary encoding). DuckDB
is used by every system, not only by headrace (whose ``sql`` op is DuckDB), so the comparison
measures reading, scheduling and writing rather than two different string kernels; each DuckDB
connection is limited to one thread, as in headrace's ``sql`` op. CSV is parsed by pyarrow in blocks
of :data:`CSV_BLOCK_BYTES` everywhere (Ray Data included), with types inferred from the data.

- ``pyarrow``: one process, a loop over the files' batches, one ``ParquetWriter`` per input file.
- ``ray_tasks``: plain Ray tasks, one per Parquet row group or per ~64 MB byte range of a CSV file
  (cut at line ends, valid because the generated text holds no newline); each task reads,
  transforms and writes its own part and returns only its row count.
- ``ray_data``: ``ray.data.read_parquet``/``read_csv`` -> ``map_batches`` -> ``write_parquet``.
- ``headrace``: a pipeline file (``read_* -> sql -> write_parquet``) run in this process with
  ``check_file`` + ``run_checked`` inside the Ray session the harness started.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

BATCH_ROWS = 65_536
"""Rows per batch in every system (headrace's default ``batch_rows``)."""
CSV_BLOCK_BYTES = 16 * 1024 * 1024
CSV_RANGE_BYTES = 64 * 1024 * 1024
"""Byte range of one plain-Ray CSV task (headrace's default ``split_bytes``)."""

BatchFn = Callable[[pa.Table], pa.Table]


@dataclass(frozen=True)
class Job:
    """One run of a case: the input files, their format, the query and where the output goes."""

    source: str
    files: tuple[str, ...]
    query: str
    output: str
    work_dir: str


def duckdb_transform(query: str) -> BatchFn:
    """``query`` over each batch (named ``batch``) on a one-thread DuckDB connection."""
    import duckdb

    con = duckdb.connect(config={"threads": 1})

    def run(table: pa.Table) -> pa.Table:
        con.register("batch", table)
        try:
            return con.sql(query).to_arrow_table()
        finally:
            con.unregister("batch")

    return run


def _csv_read_options(names: list[str] | None = None) -> pacsv.ReadOptions:
    return pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, column_names=names)


# --- pyarrow: one process -------------------------------------------------------------------------


def run_pyarrow(job: Job) -> dict[str, Any]:
    """A hand-written loop in this process: batches in, DuckDB, ``ParquetWriter`` out."""
    transform = duckdb_transform(job.query)
    for i, path in enumerate(job.files):
        if job.source == "parquet":
            batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
        else:
            batches = pacsv.open_csv(path, read_options=_csv_read_options())
        _write_batches((transform(pa.Table.from_batches([b])) for b in batches), job.output, i)
    return {}


def _write_batches(tables: Any, folder: str, index: int) -> int:
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        for table in tables:
            if writer is None:
                writer = pq.ParquetWriter(f"{folder}/part-{index:05d}.parquet", table.schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


# --- plain Ray tasks: read, transform and write inside each task ---------------------------------


def _parquet_task(path: str, row_group: int, query: str, folder: str, index: int) -> int:
    transform = duckdb_transform(query)
    batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, row_groups=[row_group])
    return _write_batches((transform(pa.Table.from_batches([b])) for b in batches), folder, index)


def _csv_task(
    path: str,
    start: int,
    end: int,
    names: list[str],
    types: dict[str, str],
    query: str,
    folder: str,
    index: int,
) -> int:
    data = _line_range(path, start, end)
    if not data:
        return 0
    transform = duckdb_transform(query)
    reader = pacsv.open_csv(
        pa.BufferReader(data),
        read_options=_csv_read_options(names),
        convert_options=pacsv.ConvertOptions(
            column_types={k: pa.type_for_alias(v) for k, v in types.items()}
        ),
    )
    return _write_batches((transform(pa.Table.from_batches([b])) for b in reader), folder, index)


def _line_range(path: str, start: int, end: int) -> bytes:
    """The lines of ``path`` that start in [start, end) (lines are records: no newline in values)."""
    with open(path, "rb") as fh:
        if start > 0:
            fh.seek(start - 1)
            fh.readline()  # the rest of a line that started before `start` belongs to the range before
        pos = fh.tell()
        if pos >= end:
            return b""
        data = fh.read(end - pos)
        if data and not data.endswith(b"\n"):
            data += fh.readline()
        return data


def _csv_layout(path: str) -> tuple[int, list[str], dict[str, str]]:
    """The header's length, the column names and the types pyarrow infers from the first block."""
    with open(path, "rb") as fh:
        header = fh.readline()
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 20))
    schema = reader.schema
    reader.close()
    return len(header), schema.names, {f.name: str(f.type) for f in schema}


def run_ray_tasks(job: Job) -> dict[str, Any]:
    """One plain Ray task per row group (Parquet) or per line-aligned byte range (CSV)."""
    import ray

    calls: list[tuple[Callable[..., int], tuple[Any, ...]]] = []
    if job.source == "parquet":
        for path in job.files:
            for rg in range(pq.ParquetFile(path).metadata.num_row_groups):
                calls.append((_parquet_task, (path, rg, job.query, job.output, len(calls))))
    else:
        for path in job.files:
            first, names, types = _csv_layout(path)
            size = os.path.getsize(path)
            for start in range(first, size, CSV_RANGE_BYTES):
                end = min(size, start + CSV_RANGE_BYTES)
                args = (path, start, end, names, types, job.query, job.output, len(calls))
                calls.append((_csv_task, args))
    remotes = {fn: ray.remote(num_cpus=1)(fn) for fn in {fn for fn, _ in calls}}
    refs = [remotes[fn].remote(*args) for fn, args in calls]
    rows = sum(ray.get(refs))
    return {"tasks": len(calls), "rows_reported": rows}


# --- Ray Data ------------------------------------------------------------------------------------

_RAY_DATA_FNS: dict[str, BatchFn] = {}


def _ray_data_batch(table: pa.Table, query: str) -> pa.Table:
    fn = _RAY_DATA_FNS.get(query)
    if fn is None:  # one connection per worker process, as the other systems have one per task
        fn = _RAY_DATA_FNS[query] = duckdb_transform(query)
    return fn(table)


def run_ray_data(job: Job) -> dict[str, Any]:
    """``read_parquet``/``read_csv`` -> ``map_batches`` (pyarrow batches) -> ``write_parquet``."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if job.source == "parquet":
        ds = ray.data.read_parquet(list(job.files))
    else:
        ds = ray.data.read_csv(list(job.files), read_options=_csv_read_options())
    ds = ds.map_batches(
        functools.partial(_ray_data_batch, query=job.query),
        batch_format="pyarrow",
        batch_size=BATCH_ROWS,
        zero_copy_batch=True,
    )
    ds.write_parquet(job.output)
    return {}


# --- headrace ------------------------------------------------------------------------------------


def pipeline_yaml(job: Job) -> str:
    """The headrace pipeline for ``job``: ``read_* -> sql -> write_parquet``."""
    op = "read_parquet" if job.source == "parquet" else "read_csv"
    paths = json.dumps(list(job.files))
    lines = [
        "version: 1",
        "name: bench-streaming-transform",
        "defaults:",
        f"  batch_rows: {BATCH_ROWS}",
        "nodes:",
        "  input:",
        f"    op: {op}",
        f"    path: {paths}",
        "  transform:",
        "    op: sql",
        "    input: input",
        f"    query: {json.dumps(job.query)}",
        "  output:",
        "    op: write_parquet",
        "    input: transform",
        f"    path: {json.dumps(job.output)}",
        "    overwrite: true",
    ]
    return "\n".join(lines) + "\n"


def run_headrace(job: Job) -> dict[str, Any]:
    """Write the pipeline file into the work folder, check it and run it in this process."""
    from engine.check import check_file
    from engine.runtime import run_checked

    path = Path(job.work_dir) / "pipeline.yaml"
    path.write_text(pipeline_yaml(job))
    checked = check_file(str(path))
    summary = run_checked(checked, progress=False)
    if summary.status != "succeeded":
        raise RuntimeError(f"headrace run {summary.status}: {summary.error}")
    return {
        "node_seconds": {name: round(s.seconds, 3) for name, s in summary.nodes.items()},
        "engine_seconds": round(summary.seconds, 3),
        "rows_reported": summary.nodes["output"].rows,
    }


SYSTEMS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "pyarrow": run_pyarrow,
    "ray_tasks": run_ray_tasks,
    "ray_data": run_ray_data,
    "headrace": run_headrace,
}
"""Every measured system, baselines first."""

USES_RAY = frozenset({"ray_tasks", "ray_data", "headrace"})
"""Systems that run inside a Ray session."""


def output_rows(folder: str) -> int:
    """Rows in the Parquet files of an output folder (from their footers)."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(Path(folder).rglob("*.parquet")))


def output_digest(folder: str) -> dict[str, int]:
    """Order-independent facts about an output, equal for systems that did the same job: rows, sum of
    ids, characters of text, and rows whose text is all upper case."""
    import pyarrow.compute as pc

    digest = {"rows": 0, "id_sum": 0, "text_chars": 0, "upper_rows": 0}
    for path in sorted(Path(folder).rglob("*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(columns=["id", "text"], batch_size=BATCH_ROWS):
            digest["rows"] += batch.num_rows
            digest["id_sum"] += pc.sum(batch["id"]).as_py() or 0
            digest["text_chars"] += pc.sum(pc.utf8_length(batch["text"])).as_py() or 0
            digest["upper_rows"] += pc.sum(pc.utf8_is_upper(batch["text"])).as_py() or 0
    return digest
