"""The checkpoint records and the store interface the graph runner writes to.

A run is one ``RunRecord`` plus a contiguous list of ``StepRecord``s. Each step holds only the *delta*
a node returned (a partial state), never the full state: the runner rebuilds a state by folding the
deltas of ``steps(run_id)`` through its reducers, so the bytes a run stores grow linearly with its
length (LangGraph stores the whole state every step, O(N^2) over a run).

A fork is a run whose ``parent`` is ``(run_id, step)``: its history is the parent's history up to that
step, followed by its own steps, which are numbered from ``step + 1`` on. Parents are followed
recursively, so a fork of a fork reads the whole chain. A run that others fork from cannot be deleted
or pruned while they exist (unless the deletion cascades to them).

Everything stored is plain JSON, encoded by ``serial``; nothing is ever unpickled (CVE-2026-28277).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

JSON = Any  # JSON values only: dict with str keys, list, str, int, float (finite), bool, None
RunStatus = Literal["running", "interrupted", "succeeded", "failed", "cancelled"]
RUN_STATUSES: frozenset[str] = frozenset(get_args(RunStatus))
FORMAT = 1  # checkpoint format version, stored with every record
SUPPORTED_FORMATS: frozenset[int] = frozenset({1})

INPUT_NODE = "__input__"  # the node name of a run's initial input step
UPDATE_NODE = "__update__"  # the node name of a fork's or update_state's edit

StatusFilter = RunStatus | Collection[RunStatus] | None


@dataclass(frozen=True)
class RunRecord:
    """One run of a graph: who it is, what graph it runs, where it stands."""

    run_id: str
    graph: str  # the graph's name
    graph_hash: str  # a stable hash of the graph's structure: resume refuses a different graph
    created_at: float  # unix time
    status: RunStatus
    parent: tuple[str, int] | None = None  # (run_id, step) this run was forked from
    meta: Mapping[str, JSON] = field(default_factory=dict)  # tenant, labels, error message...


@dataclass(frozen=True)
class StepRecord:
    """One step of a run: the update one node made, and where the run goes next."""

    run_id: str
    step: int  # 0, 1, 2... contiguous; a fork's own steps continue after its fork step
    node: str  # the node that produced it; INPUT_NODE or UPDATE_NODE for input and edits
    delta: Mapping[str, JSON]  # the node's update (a partial state), not the full state
    next: tuple[str, ...]  # the nodes to run after this step: where a resume starts
    created_at: float
    meta: Mapping[str, JSON] = field(default_factory=dict)  # {"interrupt": ...}, {"sends": ...}, timings
    format: int = FORMAT


class CheckpointStore(Protocol):
    """Where a graph runner keeps its runs; every backend passes ``tests/conformance``.

    Every method is safe to call from several threads at once. Errors are the ``errors`` module's:
    ``RunNotFound`` for an unknown run id, ``CheckpointConflict`` for a write that breaks a history,
    ``CheckpointCorrupt`` for stored bytes that cannot be read back, ``NotJSON`` for a value that is not
    JSON.
    """

    def create_run(self, run: RunRecord, steps: Sequence[StepRecord] = ()) -> None:
        """Record a new run, with its first ``steps`` in the same transaction (all or none);
        ``CheckpointConflict`` if the id exists, ``RunNotFound`` for a missing parent."""
        ...

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or ``None`` if this store has no such run."""
        ...

    def list_runs(
        self, *, status: RunStatus | None = None, graph: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        """Runs matching the filters, newest first, at most ``limit``."""
        ...

    def set_status(self, run_id: str, status: RunStatus, meta: Mapping[str, JSON] | None = None) -> None:
        """Change a run's status; ``meta``'s keys are merged over the run's meta."""
        ...

    def append(self, record: StepRecord) -> None:
        """Add the run's next step (last + 1, or fork step + 1 for a fork's first); else a conflict."""
        ...

    def append_many(
        self,
        records: Sequence[StepRecord],
        *,
        status: RunStatus | None = None,
        meta: Mapping[str, JSON] | None = None,
    ) -> None:
        """Append several steps in one transaction: all are written or, on any error, none. With
        ``status`` (all records then belong to one run), that run's status is set (``meta`` merged
        over its meta) in the same transaction, after the steps: a runner commits a run's last step
        and its end as one unit."""
        ...

    def steps(self, run_id: str, *, upto: int | None = None) -> list[StepRecord]:
        """The run's whole history (through its fork parents) in step order, up to ``upto`` included."""
        ...

    def last_step(self, run_id: str) -> StepRecord | None:
        """The last step of the run's history (a fresh fork's is its fork step); ``None`` if empty."""
        ...

    def delete_run(self, run_id: str, *, cascade: bool = False) -> None:
        """Delete a run and its steps; refused (``CheckpointConflict``) while forks depend on it, unless
        ``cascade`` deletes them too; ``RunNotFound`` if there is no such run."""
        ...

    def prune(
        self,
        *,
        older_than_s: float | None = None,
        keep_last: int | None = None,
        status: StatusFilter = None,
        graph: str | None = None,
    ) -> int:
        """Retention: delete old runs, never one that others fork from; returns how many were deleted.

        A run goes when it matches ``status`` (default: all but ``running``) and ``graph``, is older than
        ``older_than_s`` and is not among the ``keep_last`` newest matching runs (at least one limit is
        required: ``ValueError`` otherwise). Forks go before their parents within one call.
        """
        ...

    def close(self) -> None:
        """Release connections and files; the store is unusable afterwards."""
        ...
