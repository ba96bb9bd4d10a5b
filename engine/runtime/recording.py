"""A run's record, as the runtime writes it: the glue between a running run and :mod:`engine.records`.

``RunRecording`` turns what the run loop sees (split results, retries, dead letters, ledger readings,
the outcome) into record events. Recording never fails a run: a store that cannot be opened or written
is logged, and the run's summary says its record is incomplete.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from engine.check import CheckedPipeline
from engine.logs import get_logger
from engine.records import Recorder, RunHeader, open_records
from engine.records.base import run_key
from engine.records.leases import LeaseHeld, LeaseKeeper
from engine.spec.models import Edge

if TYPE_CHECKING:  # the runtime's types; a light state graph never imports Ray
    from engine.runtime.summary import RunSummary
    from engine.runtime.worker import SplitResult

_log = get_logger("records")


class RunRecording:
    """The record of one run (or one attempt of a resumed run) being written."""

    def __init__(self, url: str, run_id: str) -> None:
        self.url = url
        self.run_id = run_id
        self._recorder: Recorder | None = None
        self._usage: dict[str, tuple[Any, ...]] = {}
        self._started_nodes: set[str] = set()
        self._leases: LeaseKeeper | None = None
        try:
            self._recorder = Recorder(open_records(url), run_id)
            store = self._recorder.store
            self._leases = LeaseKeeper(store.claim, store.release, label=f"run {run_id}")
        except Exception as exc:
            self.problem: str | None = (
                f"the run's record cannot be opened at {url}: {type(exc).__name__}: {exc}"
            )
            _log.warning("run %s: %s", run_id, self.problem)
        else:
            self.problem = None

    def own(self, outputs: list[str]) -> RunHeader | None:
        """Take the run's lease and each output folder's before the run writes anything (the leases are
        renewed until :meth:`close`); raise ``LeaseHeld`` when another live driver holds one. Returns
        the run's header as it was (a resumed run's earlier attempt: ``died`` when its driver died)."""
        if self._recorder is None or self._leases is None:
            return None  # no store, no leases: the run goes on unguarded (``problem`` says so)
        before = self._recorder.store.header(self.run_id)
        try:
            self._leases.claim(run_key(self.run_id))
            for url in outputs:
                self._leases.claim(f"output:{url}")
        except LeaseHeld:
            self._leases.close()
            self._leases = None
            raise
        return before

    def emit(self, kind: str, node: str | None = None, at: float | None = None, /, **data: Any) -> None:
        """Record one event, at ``at`` or now (nothing when the store could not be opened)."""
        if self._recorder is not None:
            self._recorder.emit(kind, node, at, **data)

    def started(
        self,
        checked: CheckedPipeline,
        *,
        kind: str,
        tenant: str,
        resume_of: str | None,
        inputs: list[str] = [],  # noqa: B006 - read only
        outputs: list[str] = [],  # noqa: B006 - read only
    ) -> None:
        """``run_started``: the pipeline, its nodes with their place in the file, and its edges."""
        document = checked.loaded.document
        spec = checked.loaded.spec
        nodes: dict[str, Any] = {}
        for node_id, node in spec.nodes.items():
            span = document.source_map.locate(("nodes", node_id), prefer="key")
            nodes[node_id] = {
                "op": node.op,
                "line": span.line,
                "col": span.col,
                "inputs": list(node.inputs()),
            }
            written_in = document.file_of(span)
            if written_in != document.path:  # an included, extended or inlined file's node
                nodes[node_id]["file"] = os.path.abspath(written_in)
        edges = [[edge.from_, to] for edge in spec.edges for to in _targets(edge)]
        self.emit(
            "run_started",
            pipeline=spec.name,
            pipeline_file=os.path.abspath(document.path) if document.path != "-" else "-",
            pipeline_hash=checked.plan.spec_hash,
            tenant=tenant,
            kind=kind,
            resume_of=resume_of,
            nodes=nodes,
            edges=edges,
            inputs=inputs,
            outputs=outputs,
        )

    def batch(self, result: SplitResult, sink: str | None) -> None:
        """``batch_committed`` for a split or tail batch a worker finished (``node_started`` first)."""
        for node in result.rows:
            if node not in self._started_nodes:
                self._started_nodes.add(node)
                self.emit("node_started", node)
        self.emit(
            "batch_committed",
            sink,
            split=result.split,
            input=result.input,
            start=result.start,
            end=result.end,
            rows=result.rows,
            rows_in=result.rows_in,
            failed=result.failed,
            seconds={n: round(s, 6) for n, s in result.seconds.items()},
            began=result.began,
            ended=result.ended,
            part=result.part.file if result.part is not None else None,
        )
        if result.dead_letter_file:  # one event per node whose rows failed: the node, not the sink
            for node, rows in result.failed.items():
                if rows:
                    self.emit(
                        "dead_letter", node, file=result.dead_letter_file, rows=rows, split=result.split
                    )

    def retry(
        self, node: str, split: int, attempt: int, max_attempts: int, delay_s: float, error: str
    ) -> None:
        """``retry``: a split failed in a way that may pass and runs again after ``delay_s``."""
        self.emit(
            "retry",
            node,
            split=split,
            attempt=attempt,
            max_attempts=max_attempts,
            delay_s=round(delay_s, 3),
            error=error,
        )

    def usage(self, usage: Mapping[str, Mapping[str, Any]]) -> None:
        """``budget`` events for the LLM nodes whose ledger figures changed since the last reading."""
        for node, figures in usage.items():
            key = tuple(sorted(figures.items()))
            if self._usage.get(node) != key:
                self._usage[node] = key
                self.emit("budget", node, **dict(figures))

    def failed(self, data: Mapping[str, Any], node: str | None) -> None:
        """``error``: why the run failed, where in the pipeline file and in the input."""
        self.emit("error", node, **dict(data))

    def finished(self, summary: RunSummary) -> None:
        """``node_finished`` per node with its totals, then ``run_finished``."""
        for node, stats in summary.nodes.items():
            if node in self._started_nodes or stats.rows or stats.rows_in:
                self.emit(
                    "node_finished",
                    node,
                    rows_in=stats.rows_in,
                    rows=stats.rows,
                    failed=stats.failed,
                    seconds=round(stats.seconds, 6),
                    tokens=stats.tokens,
                    cost_usd=stats.cost_usd,
                )
        self.emit(
            "run_finished",
            status=summary.status,
            seconds=round(summary.seconds, 3),
            error=summary.error,
            outputs=summary.outputs,
            dead_letters=sorted(summary.dead_letters),
            cost_usd=summary.total_cost_usd,
            tokens=sum(s.tokens for s in summary.nodes.values()),
            finished=time.time(),
        )

    def graph_steps(self, steps: list[Any], before: float) -> None:
        """``node_finished`` and ``checkpoint`` for each state-graph step this invocation saved (the
        steps' own times; a step's seconds run from the step before it, or from ``before``)."""
        last = before
        for step in steps:
            seconds = max(0.0, step.created_at - last)
            last = step.created_at
            self.emit("node_finished", step.node, step.created_at, step=step.step, seconds=round(seconds, 6))
            self.emit("checkpoint", step.node, step.created_at, step=step.step, next=list(step.next))

    def graph_finished(self, status: str, seconds: float, error: str | None, outputs: dict[str, str]) -> None:
        """``run_finished`` of a state-graph run."""
        self.emit("run_finished", status=status, seconds=round(seconds, 3), error=error, outputs=outputs)

    def close(self) -> None:
        """Write what is pending, stop the writer and give the run's leases up."""
        if self._recorder is not None:
            self._recorder.close()
            self.problem = self.problem or self._recorder.problem
        if self._leases is not None:
            self._leases.close()


def _targets(edge: Edge) -> list[str]:
    if edge.branches:
        return [b.to for b in edge.branches]
    if edge.to is None:
        return []
    return [edge.to] if isinstance(edge.to, str) else list(edge.to)
