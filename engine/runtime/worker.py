"""The code that runs inside a Ray worker: read one split, transform it, write its part."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

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


def run_split(job: StageJob, split: Split) -> SplitResult:
    """Stream ``split`` through the stage and commit its part; raise DataError naming where it failed."""
    reader = reader_for(job.source)  # type: ignore[arg-type]
    fns = [(node, batch_fn(spec)) for node, spec in job.transforms]
    rows = {job.source_id: 0, **{node: 0 for node, _ in fns}, job.sink_id: 0}
    seconds = dict.fromkeys(rows, 0.0)
    part = open_part(job.sink, job.output, split.index, split.id)  # type: ignore[arg-type]
    current = job.source_id
    try:
        clock = time.perf_counter()
        for table in reader.read(job.source, split, job.batch_rows):
            now = time.perf_counter()
            seconds[job.source_id] += now - clock
            rows[job.source_id] += table.num_rows
            for node, fn in fns:
                current = node
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
    return SplitResult(info, rows, seconds, split.end - split.start)
