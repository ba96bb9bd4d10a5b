"""The code that runs inside a Ray worker: read one split, transform it, write its part.

A row that a node cannot process fails the split, unless the node's error policy says `skip` or
`dead_letter`: then the batch is bisected to find the failing rows, the others go on, and failed rows
are written (with node, error, input file and split offset) to a dead-letter file of the split.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from connectors.files import filesystem
from connectors.readers import Split, reader_for
from connectors.writers import PartInfo, open_part
from engine.errors import DataError
from engine.physical import StageJob
from operators.batch import batch_fn


@dataclass(frozen=True)
class SplitResult:
    """What one task reports back: its committed part and per-node counts (never the data)."""

    part: PartInfo
    rows: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    bytes_read: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    rows_in: dict[str, int] = field(default_factory=dict)
    dead_letter_file: str | None = None


@dataclass
class _Failure:
    node: str
    error: str
    row: dict[str, Any]


def run_split(job: StageJob, split: Split) -> SplitResult:
    """Stream ``split`` through the stage and commit its part; raise DataError naming where it failed."""
    reader = reader_for(job.source)  # type: ignore[arg-type]
    failures: list[_Failure] = []
    fns = [
        (node, _guarded(node, batch_fn(spec), node in job.on_error, failures))
        for node, spec in job.transforms
    ]
    rows = {job.source_id: 0, **{node: 0 for node, _ in fns}, job.sink_id: 0}
    rows_in = dict.fromkeys(rows, 0)
    seconds = dict.fromkeys(rows, 0.0)
    part = open_part(job.sink, job.output, split.index, split.id)  # type: ignore[arg-type]
    current = job.source_id
    extra: dict[str, Any] = {}
    if job.source_id in job.on_error:
        extra["bad_row"] = lambda error, row: failures.append(_Failure(job.source_id, error, row))
    try:
        clock = time.perf_counter()
        for table in reader.read(job.source, split, job.batch_rows, **extra):
            now = time.perf_counter()
            seconds[job.source_id] += now - clock
            rows[job.source_id] += table.num_rows
            for node, fn in fns:
                current = node
                rows_in[node] += table.num_rows
                table = fn(table)
                rows[node] += table.num_rows
                seconds[node] += time.perf_counter() - now
                now = time.perf_counter()
            current = job.sink_id
            part.write(table)
            rows[job.sink_id] += table.num_rows
            clock = time.perf_counter()
            seconds[job.sink_id] += clock - now
            current = job.source_id
        dead = _write_dead_letters(job, split, failures)
        info = part.commit()
    except DataError:
        part.abort()
        raise
    except Exception as exc:
        part.abort()
        raise DataError(
            f"node '{current}': {split.url} (split {split.index}, bytes {split.start}-"
            f"{split.end}): {type(exc).__name__}: {exc}"
        ) from None
    failed: dict[str, int] = {}
    for f in failures:
        failed[f.node] = failed.get(f.node, 0) + 1
    return SplitResult(info, rows, seconds, split.end - split.start, failed, rows_in, dead)


def _guarded(
    node: str, fn: Callable[[pa.Table], pa.Table], tolerant: bool, failures: list[_Failure]
) -> Callable[[pa.Table], pa.Table]:
    if not tolerant:
        return fn

    def run(table: pa.Table) -> pa.Table:
        try:
            return fn(table)
        except Exception as exc:
            if table.num_rows <= 1:
                failures.extend(_Failure(node, f"{type(exc).__name__}: {exc}", r) for r in table.to_pylist())
                return table.slice(0, 0)
        # Bisect: the good halves go on, the failing rows are isolated in O(k log n) calls.
        middle = table.num_rows // 2
        halves = [run(table.slice(0, middle)), run(table.slice(middle))]
        kept = [h for h in halves if h.num_rows]
        return pa.concat_tables(kept) if kept else halves[0]

    return run


def _write_dead_letters(job: StageJob, split: Split, failures: list[_Failure]) -> str | None:
    if not failures or not job.dead_letters:
        return None
    fs, folder = filesystem(job.dead_letters)
    fs.makedirs(folder, exist_ok=True)
    name = f"dead-{job.sink_id}-{split.index:05d}.jsonl"
    tmp = f"{folder}/.{name}.tmp"
    with fs.open(tmp, "w") as fh:
        for f in failures:
            record = {
                "node": f.node,
                "error": f.error,
                "input": split.url,
                "split": split.index,
                "split_bytes": [split.start, split.end],
                "row": f.row,
            }
            fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    fs.mv(tmp, f"{folder}/{name}")
    return f"{job.dead_letters}/{name}"
