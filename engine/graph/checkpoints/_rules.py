"""The rules every store applies the same way: step numbering, conflicts, and what ``prune`` deletes.

Pure functions over records, so each rule is tested once and every backend reads alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from engine.graph.checkpoints.base import RUN_STATUSES, SUPPORTED_FORMATS, RunRecord, StatusFilter, StepRecord
from engine.graph.checkpoints.errors import CheckpointConflict

# Safe as a file name and an object key on every filesystem headrace runs on (POSIX, object stores).
_RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:@+=-]{0,127}")


def check_run_id(run_id: str) -> None:
    """Refuse a run id that could not name a file or an object key safely (``../x``, ``a/b``, spaces)."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"invalid run id {run_id!r}: use 1-128 letters, digits and _ - . : @ + =, "
            "starting with a letter, digit or _"
        )


def first_step(run: RunRecord) -> int:
    """The number a run's first own step must have: 0, or the fork step + 1."""
    return 0 if run.parent is None else run.parent[1] + 1


def check_step(record: StepRecord) -> None:
    """Refuse to write a step that no reader could decode: an unknown format, a bad step number."""
    if record.format not in SUPPORTED_FORMATS:
        raise ValueError(
            f"run '{record.run_id}' step {record.step}: cannot write checkpoint format {record.format!r}; "
            f"this headrace writes {sorted(SUPPORTED_FORMATS)}"
        )
    if type(record.step) is not int or record.step < 0:
        raise ValueError(f"run '{record.run_id}': step numbers are ints >= 0, got {record.step!r}")


def check_status(status: str) -> None:
    """Refuse a status that is not one of ``RunStatus``."""
    if status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {status!r}; expected one of {sorted(RUN_STATUSES)}")


def step_conflict(record: StepRecord, want: int) -> CheckpointConflict:
    """The error for a step that does not continue its run's history."""
    return CheckpointConflict(
        f"run '{record.run_id}': cannot append step {record.step} (node '{record.node}'); the next "
        f"step must be {want}. Another writer may own this run: reload it with last_step()"
    )


def exists_conflict(run_id: str) -> CheckpointConflict:
    """The error for creating a run whose id is taken."""
    return CheckpointConflict(f"run '{run_id}' already exists; choose another run id, or resume that run")


def dependents_conflict(run_id: str, children: Sequence[str]) -> CheckpointConflict:
    """The error for deleting a run that other runs fork from."""
    shown = ", ".join(f"'{c}'" for c in sorted(children)[:5])
    more = f" and {len(children) - 5} more" if len(children) > 5 else ""
    verb = "forks" if len(children) == 1 else "fork"
    return CheckpointConflict(
        f"run '{run_id}' cannot be deleted: {shown}{more} {verb} from it; delete those first, "
        "or pass cascade=True to delete them too"
    )


def fork_base_missing(run: RunRecord) -> CheckpointConflict:
    """The error for a fork whose parent has no step at the fork point."""
    assert run.parent is not None
    parent_id, step = run.parent
    return CheckpointConflict(
        f"run '{run.run_id}' cannot fork from step {step} of run '{parent_id}': that run has no step {step}"
    )


def plan_sequence(records: Sequence[StepRecord], next_of: dict[str, int]) -> None:
    """Check that ``records`` continue each run's history without gaps or repeats.

    ``next_of`` maps each run id in ``records`` to the number its next step must have; it is advanced
    in place, so a batch may hold several consecutive steps of one run.
    """
    for record in records:
        want = next_of[record.run_id]
        if record.step != want:
            raise step_conflict(record, want)
        next_of[record.run_id] = want + 1


def check_first_steps(run: RunRecord, steps: Sequence[StepRecord]) -> None:
    """Check the steps a run is created with: all of that run, numbered from its first step on."""
    for s in steps:
        if s.run_id != run.run_id:
            raise ValueError(
                f"create_run('{run.run_id}') was given step {s.step} of run '{s.run_id}'; a run is "
                "created with its own first steps only"
            )
    plan_sequence(steps, {run.run_id: first_step(run)})


def status_target(records: Sequence[StepRecord], status: str | None) -> str | None:
    """The run an ``append_many`` writes to (None: nothing to do); with ``status``, the records must
    all belong to one run, whose status is then set."""
    if status is None:
        return records[0].run_id if records else None
    check_status(status)
    runs = {r.run_id for r in records}
    if len(runs) != 1:
        raise ValueError(
            f"append_many(status={status!r}) sets the status of the records' run, so they must all "
            f"belong to one run; got runs {sorted(runs)}"
        )
    return runs.pop()


def status_set(status: StatusFilter) -> frozenset[str]:
    """The statuses a ``prune`` selects; ``None`` means every status but ``running``.

    A running run is only pruned when asked for by name: its runner may still be writing to it.
    """
    if status is None:
        return RUN_STATUSES - {"running"}
    chosen = frozenset([status]) if isinstance(status, str) else frozenset(status)
    for s in chosen:
        check_status(s)
    return chosen


def descendants(run_id: str, runs: Iterable[RunRecord]) -> list[str]:
    """Every run forked from ``run_id``, directly or not, deepest first (the order to delete them)."""
    children: dict[str, list[str]] = {}
    for r in runs:
        if r.parent is not None:
            children.setdefault(r.parent[0], []).append(r.run_id)
    order: list[str] = []

    def visit(rid: str) -> None:
        for child in sorted(children.get(rid, ())):
            visit(child)
            order.append(child)

    visit(run_id)
    return order


def prune_plan(
    runs: Sequence[RunRecord],
    *,
    now: float,
    older_than_s: float | None,
    keep_last: int | None,
    status: StatusFilter,
    graph: str | None = None,
) -> list[str]:
    """The run ids ``prune`` deletes, in an order that deletes forks before the runs they fork from.

    A run is deleted when it matches ``status`` and ``graph`` and every limit given: it was created more
    than ``older_than_s`` seconds ago, and it is not among the ``keep_last`` newest matching runs. A run
    that a kept run forks from is kept too, whatever its age: deleting it would break that fork's history.
    """
    if older_than_s is None and keep_last is None:
        raise ValueError("prune needs older_than_s or keep_last (or both); refusing to delete every run")
    if keep_last is not None and keep_last < 0:
        raise ValueError(f"keep_last must be >= 0, got {keep_last}")
    statuses = status_set(status)
    matching = [r for r in runs if r.status in statuses and (graph is None or r.graph == graph)]
    matching.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
    doomed = {
        r.run_id
        for i, r in enumerate(matching)
        if (older_than_s is None or r.created_at < now - older_than_s)
        and (keep_last is None or i >= keep_last)
    }
    children: dict[str, set[str]] = {}
    for r in runs:
        if r.parent is not None:
            children.setdefault(r.parent[0], set()).add(r.run_id)
    # Repeat until nothing changes: deleting a fork may free the run it forked from.
    order: list[str] = []
    deleted: set[str] = set()
    progress = True
    while progress:
        progress = False
        for rid in sorted(doomed - deleted):
            if children.get(rid, set()) <= deleted:
                order.append(rid)
                deleted.add(rid)
                progress = True
    return order
