"""The code that runs inside Ray workers: fused segments of per-batch ops, and barrier actors.

A head segment reads one split, runs the fused transforms and either writes its own part (returning
only counts) or, when a barrier follows, returns its batches to the object store. A tail segment takes
batches released by a barrier, runs the transforms fused after it, and writes a part or passes on.

A row that a node cannot process fails the segment, unless the node's error policy says `skip` or
`dead_letter`: then the batch is bisected to find the failing rows, the others go on, and failed rows
are written (with node, error, input file and split offset) to a dead-letter file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pyarrow as pa
import ray

from connectors.files import filesystem
from connectors.readers import Split, reader_for
from connectors.writers import PartInfo, open_part
from engine import telemetry
from engine.errors import BudgetExceeded, DataError, FatalRunError, TransientError
from engine.physical import StageJob, TailJob
from engine.policy import Policy
from engine.runtime.allocator import keep_freed_memory
from engine.runtime.llm.pool import PoolClient, PoolResult
from engine.spec.models import NodeSpec
from operators.batch import batch_fn
from operators.llm import LlmReduce
from operators.llm_reduce import LlmReduceState
from operators.stateful import BarrierState, barrier_state


@dataclass(frozen=True)
class SplitResult:
    """What one segment task reports back: its committed part (if it wrote one) and per-node counts."""

    part: PartInfo | None
    rows: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    bytes_read: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    rows_in: dict[str, int] = field(default_factory=dict)
    dead_letter_file: str | None = None
    split: int = -1
    """The split (or tail batch) index."""
    input: str | None = None
    """The file a head split read; ``None`` for a tail batch."""
    start: int | None = None
    end: int | None = None
    """The byte range of ``input`` the split covered."""
    began: float = 0.0
    ended: float = 0.0
    """Wall-clock (unix) times the segment started and finished on its worker."""


@dataclass
class _Failure:
    node: str
    error: str
    row: dict[str, Any]


@dataclass
class _Where:
    """Where the data of a segment comes from, for error messages and dead letters."""

    url: str
    index: int
    start: int
    end: int

    def fields(self, row: int | None = None) -> dict[str, object]:
        """The location as fields of an error: input url, split, byte range (and row, when known)."""
        place: dict[str, object] = {"split": self.index}
        if self.start >= 0:
            place.update(url=self.url, start=self.start, end=self.end)
        else:
            place["barrier"] = self.url
        if row is not None:
            place["row"] = row
        return place

    def describe(self) -> str:
        if self.start < 0:
            return f"batches from barrier (part {self.index})"
        return f"{self.url} (split {self.index}, bytes {self.start}-{self.end})"


def run_split(job: StageJob, split: Split) -> Any:
    """Run the head segment on ``split``: a SplitResult, or (SplitResult, tables) when ``job.emit``."""
    keep_freed_memory()
    with _in_force(job.policy):
        return _run_split_traced(job, split)


def _in_force(policy: Policy | None) -> AbstractContextManager[Any]:
    """The run's policy in force for a task (a worker serves many runs, each with its own policy)."""
    return policy.active() if policy is not None else contextlib.nullcontext()


def _run_split_traced(job: StageJob, split: Split) -> Any:
    if job.trace:
        nodes = [job.source_id, *(n for n, _ in job.transforms), *([] if job.emit else [job.sink_id])]
        where = {"headrace.input": split.url, "headrace.byte_range": [split.start, split.end]}
        return _traced("split", job.trace, nodes, split.index, where, partial(_run_split, job, split))
    return _run_split(job, split)


def _run_split(job: StageJob, split: Split) -> Any:
    reader = reader_for(job.source)  # type: ignore[arg-type]
    where = _Where(split.url, split.index, split.start, split.end)
    failures: list[_Failure] = []

    def bad_row(error: str, row: dict[str, Any]) -> None:
        failures.append(_Failure(job.source_id, error, row))

    tolerant = job.source_id in job.on_error
    tables = reader.read(job.source, split, job.batch_rows, bad_row if tolerant else None)
    sink = None if job.emit else (job.sink_id, job.sink)
    result, out = _run_segment(
        tables,
        job.source_id,
        job.transforms,
        sink,
        job.output,
        split.index,
        split.id,
        job.on_error,
        job.dead_letters,
        where,
        failures,
        job.pools,
    )
    result = dataclasses.replace(
        result, bytes_read=split.end - split.start, input=split.url, start=split.start, end=split.end
    )
    return (result, out) if job.emit else result


def run_tail(job: TailJob, tables: list[pa.Table], index: int) -> Any:
    """Run a tail segment on batches a barrier released: a SplitResult, or (SplitResult, tables)."""
    keep_freed_memory()
    with _in_force(job.policy):
        if job.trace:
            nodes = [n for n, _ in job.transforms] + ([job.sink_id] if job.sink is not None else [])
            where = {"headrace.barrier": job.barrier_id}
            return _traced("tail", job.trace, nodes, index, where, partial(_run_tail, job, tables, index))
        return _run_tail(job, tables, index)


def _traced(
    name: str,
    carrier: Mapping[str, str],
    nodes: list[str],
    index: int,
    where: dict[str, Any],
    run: Callable[[], Any],
) -> Any:
    """``run()`` inside a span of the run's trace, with the rows each node produced and bytes read."""
    attributes = {"headrace.nodes": nodes, "headrace.split": index, **where}
    with telemetry.worker_span(name, carrier, attributes) as span:
        out = run()
        result: SplitResult = out[0] if isinstance(out, tuple) else out
        span.set_attributes(
            {
                "headrace.bytes": result.bytes_read,
                "headrace.rows": sum(result.rows.get(n, 0) for n in nodes[-1:]),
                **{f"headrace.rows.{n}": c for n, c in result.rows.items()},
                **{f"headrace.failed_rows.{n}": c for n, c in result.failed.items()},
            }
        )
        return out


def _run_tail(job: TailJob, tables: list[pa.Table], index: int) -> Any:
    sink = (job.sink_id, job.sink) if job.sink is not None else None
    where = _Where(job.barrier_id, index, -1, -1)
    result, out = _run_segment(
        iter(tables),
        None,
        job.transforms,
        sink,
        job.output,
        index,
        f"{job.barrier_id}#{index}",
        job.on_error,
        job.dead_letters,
        where,
        [],
        job.pools,
    )
    return result if sink is not None else (result, out)


def _run_segment(
    tables: Iterable[pa.Table],
    source_id: str | None,
    transforms: tuple[tuple[str, NodeSpec], ...],
    sink: tuple[str, NodeSpec] | None,
    output: str | None,
    index: int,
    part_id: str,
    on_error: Any,
    dead_letters: str | None,
    where: _Where,
    failures: list[_Failure],
    pools: Mapping[str, PoolClient],
) -> tuple[SplitResult, list[pa.Table]]:
    fns = [
        (node, _node_fn(node, spec, pools, index, node in on_error, failures, where))
        for node, spec in transforms
    ]
    names = [n for n in (source_id, *[n for n, _ in fns], sink[0] if sink else None) if n]
    rows = dict.fromkeys(names, 0)
    rows_in = dict.fromkeys(names, 0)
    seconds = dict.fromkeys(names, 0.0)
    part = open_part(sink[1], output or "", index, part_id) if sink else None  # type: ignore[arg-type]
    out: list[pa.Table] = []
    current = source_id or (fns[0][0] if fns else sink[0] if sink else "")
    began = time.time()
    try:
        clock = time.perf_counter()
        for table in tables:
            now = time.perf_counter()
            if source_id:
                seconds[source_id] += now - clock
                rows[source_id] += table.num_rows
            for node, fn in fns:
                current = node
                rows_in[node] += table.num_rows
                table = fn(table)
                rows[node] += table.num_rows
                seconds[node] += time.perf_counter() - now
                now = time.perf_counter()
            if part is not None and sink is not None:
                current = sink[0]
                part.write(table)
                rows_in[sink[0]] += table.num_rows
                rows[sink[0]] += table.num_rows
            elif table.num_rows:
                out.append(table)
            clock = time.perf_counter()
            if sink is not None:
                seconds[sink[0]] += clock - now
            current = source_id or current
        dead = _write_dead_letters(dead_letters, sink[0] if sink else "segment", where, failures)
        info = None
        if part is not None and sink is not None:
            current = sink[0]
            clock = time.perf_counter()
            info = part.commit()  # writes what the part still holds (e.g. its last row group)
            seconds[sink[0]] += time.perf_counter() - clock
    except DataError as exc:
        if part is not None:
            part.abort()
        if exc.node is not None:
            raise
        # an operator's own error: name the node and the input it was reading
        raise type(exc)(
            f"node '{current}': {where.describe()}: {exc}", node=current, input=where.fields()
        ) from None
    except (BudgetExceeded, FatalRunError):  # the run stops: no row-level policy applies
        if part is not None:
            part.abort()
        raise
    except Exception as exc:
        if part is not None:
            part.abort()
        kind = TransientError if isinstance(exc, OSError) else DataError
        raise kind(
            f"node '{current}': {where.describe()}: {type(exc).__name__}: {exc}",
            node=current,
            input=where.fields(),
        ) from None
    failed: dict[str, int] = {}
    for f in failures:
        failed[f.node] = failed.get(f.node, 0) + 1
    return SplitResult(
        info, rows, seconds, 0, failed, rows_in, dead, split=index, began=began, ended=time.time()
    ), out


def _node_fn(
    node: str,
    spec: NodeSpec,
    pools: Mapping[str, PoolClient],
    index: int,
    tolerant: bool,
    failures: list[_Failure],
    where: _Where,
) -> Callable[[pa.Table], pa.Table]:
    if spec.pooled:
        return _pooled(node, pools[node], tolerant, failures, where)
    return _guarded(node, batch_fn(spec), tolerant, failures)


def _pooled(
    node: str, pool: PoolClient, tolerant: bool, failures: list[_Failure], where: _Where
) -> Callable[[pa.Table], pa.Table]:
    """Hand each batch to the node's shared pool and wait; rows it could not answer follow the
    node's error policy (the actor has already retried them)."""
    seen = 0  # rows of this segment before the current batch, to name a failed row

    def run(table: pa.Table) -> pa.Table:
        nonlocal seen
        answered, failed = _ask_pool(pool, table)
        if failed and not tolerant:
            row, error = failed[0]
            raise DataError(
                f"node '{node}': {where.describe()}: row {seen + row}: {error}; "
                f"{len(failed)} rows of this batch failed",
                node=node,
                input=where.fields(seen + row),
            )
        failures.extend(_Failure(node, error, table.slice(row, 1).to_pylist()[0]) for row, error in failed)
        seen += table.num_rows
        return answered

    return run


def _guarded(
    node: str, fn: Callable[[pa.Table], pa.Table], tolerant: bool, failures: list[_Failure]
) -> Callable[[pa.Table], pa.Table]:
    if not tolerant:
        return fn

    def run(table: pa.Table) -> pa.Table:
        try:
            return fn(table)
        except (BudgetExceeded, FatalRunError):  # no row can fix these: bisecting would only repeat them
            raise
        except Exception as exc:
            if table.num_rows <= 1:
                failures.extend(_Failure(node, f"{type(exc).__name__}: {exc}", r) for r in table.to_pylist())
                return table.slice(0, 0)
        # Bisect: the good halves go on, the failing rows are isolated in O(k log n) calls.
        middle = table.num_rows // 2
        halves = [run(table.slice(0, middle)), run(table.slice(middle))]
        kept = [h for h in halves if h.num_rows]
        return pa.concat_tables(kept, promote_options="default") if kept else halves[0]

    return run


def _write_dead_letters(
    folder_url: str | None, sink_id: str, where: _Where, failures: list[_Failure]
) -> str | None:
    if not failures or not folder_url:
        return None
    fs, folder = filesystem(folder_url)
    fs.makedirs(folder, exist_ok=True)
    # named after the nodes whose rows failed (a source's bad rows are the source's, not the sink's)
    label = "+".join(sorted({f.node for f in failures})) or sink_id
    name = f"dead-{label}-{where.index:05d}.jsonl"
    tmp = f"{folder}/.{name}.tmp"
    with fs.open(tmp, "w") as fh:
        for f in failures:
            record = {
                "node": f.node,
                "error": f.error,
                "input": where.url,
                "split": where.index,
                "split_bytes": [where.start, where.end],
                "row": f.row,
            }
            fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    fs.mv(tmp, f"{folder}/{name}")
    return f"{folder_url}/{name}"


def _ask_pool(pool: PoolClient, table: pa.Table) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Send rows (or an LLM barrier's prompt contexts) to the node's pool and wait for the answers."""
    try:
        trace = telemetry.carrier() if telemetry.recording() else None
        result: PoolResult = pool.ask(table, trace)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, (BudgetExceeded, DataError, FatalRunError)):
            raise exc.cause from None
        raise
    return result.table, result.failures


class BarrierActor:
    """Holds the state of one barrier node for a whole run (one actor per node per run)."""

    def __init__(
        self,
        spec: NodeSpec,
        node: str = "",
        pools: Mapping[str, PoolClient] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.state: BarrierState
        if isinstance(spec, LlmReduce):
            self.state = LlmReduceState(spec, partial(_ask_pool, (pools or {})[node]), dict(params or {}))
        else:
            self.state = barrier_state(spec)
        self.rows_in = 0
        self.rows_out = 0

    def push(self, tables: list[pa.Table]) -> list[pa.Table]:
        """Feed batches; return what they release."""
        out: list[pa.Table] = []
        for table in tables:
            self.rows_in += table.num_rows
            out.extend(self.state.push(table))
        self.rows_out += sum(t.num_rows for t in out)
        return out

    def finish(self) -> list[pa.Table]:
        """End of input: the rest of the output."""
        out = self.state.finish()
        self.rows_out += sum(t.num_rows for t in out)
        return out

    def counts(self) -> tuple[int, int, bool]:
        """Rows in, rows out, and whether more input can still change the output."""
        return self.rows_in, self.rows_out, not self.state.satisfied
