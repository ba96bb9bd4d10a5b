"""What a run record is made of: one header per run and an append-only log of events.

Every run (a dataflow or a state graph) writes events in order: ``run_started`` first, ``run_finished``
last, and between them what happened, each event stamped with the run, its node (when it has one) and
wall-clock time. Readers fold the log into views (:mod:`engine.records.view`); nothing is ever updated
in place except the header's status, which is a cache of the last ``run_finished`` event.

Event kinds and their ``data`` (every value JSON):

- ``run_started``: pipeline, pipeline_file, pipeline_hash, tenant, kind (dataflow|graph), resume_of,
  nodes ({id: {op, line, col, inputs}}), edges ([[from, to]]), inputs, outputs.
- ``node_started`` / ``node_finished``: a node's first work / its totals at the end (rows_in, rows,
  failed, seconds, tokens, cost_usd; for a graph step: step, seconds).
- ``batch_committed``: a split or tail batch done: split, input, start, end (byte range), rows (per
  node), seconds (per node), began, ended (wall clock, from the worker), part, failed.
- ``retry``: split, attempt, max_attempts, delay_s, error.
- ``dead_letter``: file, rows.
- ``budget``: an LLM node's cumulative usage from the run's ledger (requests, cached_requests,
  failed_requests, input_tokens, output_tokens, cost_usd), written when it changes; ``refused`` when a
  reservation was refused.
- ``checkpoint``: a state-graph step saved (step, node, seconds since the previous step).
- ``error``: code, message, location (file, line, col of the node in the pipeline), input (url, split,
  start, end, row) and hint.
- ``run_finished``: status, seconds, error, outputs, dead_letters, cost_usd, tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal[
    "run_started",
    "node_started",
    "node_finished",
    "batch_committed",
    "retry",
    "dead_letter",
    "budget",
    "checkpoint",
    "error",
    "run_finished",
]
EVENT_KINDS: tuple[str, ...] = EventKind.__args__  # type: ignore[attr-defined]

RecordStatus = Literal[
    "running", "succeeded", "failed", "budget_exceeded", "cancelled", "interrupted", "died"
]
"""A run's status in its record; ``running`` until ``run_finished`` is written; ``died`` is what readers
see of a ``running`` run whose driver's lease lapsed (:mod:`engine.records.leases`)."""
RECORD_STATUSES: tuple[str, ...] = RecordStatus.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Event:
    """One entry of a run's log; ``seq`` numbers a run's events from 0 without gaps."""

    run_id: str
    seq: int
    at: float
    """Unix time, seconds."""
    kind: str
    node: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "run_id": self.run_id,
            "seq": self.seq,
            "at": self.at,
            "kind": self.kind,
            "node": self.node,
            "data": self.data,
        }


@dataclass(frozen=True)
class RunHeader:
    """The searchable summary of a run: what ``headrace runs list`` filters and prints."""

    run_id: str
    pipeline: str
    tenant: str
    kind: str
    """``dataflow`` or ``graph``."""
    status: str
    started_at: float
    updated_at: float
    """When the run last wrote an event: a ``running`` run that stopped writing long ago has died."""
    finished_at: float | None = None
    cost_usd: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "tenant": self.tenant,
            "kind": self.kind,
            "status": self.status,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "cost_usd": self.cost_usd,
            "error": self.error,
        }
