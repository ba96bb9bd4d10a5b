"""One scheduled node execution (:class:`Task`), its identity, and what a node calls from inside it.

A task's id is ``"{base}.{index}"``: ``base`` is the step number of the checkpoint record that
scheduled it and ``index`` its place in that superstep's task list (which is deterministic). So the
id is the same when a run is resumed in another process, and needs no bytes of its own in most
checkpoints. An interrupt's id hashes the run, the task id, the node and the interrupt's position in
the node (its first ``interrupt()`` call, its second...), so it too survives a resume.

``interrupt()`` and ``once()`` find their task through a context variable that the runner sets around
each attempt of a node (asyncio tasks and ``asyncio.to_thread`` copy it, so sync nodes run in
threads see it too).
"""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.graph.errors import GraphError, GraphInterrupt

if TYPE_CHECKING:
    from engine.graph.builder import GraphPlan


@dataclass
class Task:
    """One scheduled execution of a node."""

    node: str
    arg: dict[str, Any] | None = None
    """A ``Send`` payload (validated state values) set on the node's state snapshot."""
    resume: list[Any] = field(default_factory=list)
    """Values that successive ``interrupt()`` calls in this node return, in order."""
    skip_before: bool = False
    """Already paused by ``interrupt_before``; do not pause again."""
    interrupted: Any = None
    """The interrupt (a dict with ``id``, ``value``...) that paused this task, if any."""
    paused: bool = False
    done: dict[str, Any] = field(default_factory=dict)
    """Results of ``once(key, ...)`` calls this node already made: kept across its re-runs (a resume
    after ``interrupt()``, a retry), so their side effects happen once."""
    id: str = ""
    """``"{base}.{index}"``; set by the runner when the superstep's task list is known."""

    def to_json(self, plan: GraphPlan[Any]) -> dict[str, Any]:
        """JSON for a step's ``meta['pending']``: declared types only."""
        out: dict[str, Any] = {"node": self.node}
        if self.arg is not None:
            out["arg"] = plan.schema.dump(self.arg)
        if self.resume:
            out["resume"] = self.resume
        if self.skip_before:
            out["skip_before"] = True
        if self.paused:
            out["interrupt"] = self.interrupted
        if self.done:
            out["done"] = self.done
        return out

    @classmethod
    def from_json(cls, plan: GraphPlan[Any], data: Mapping[str, Any] | str) -> Task:
        """The inverse of :meth:`to_json` (a bare node name is a plain task)."""
        if isinstance(data, str):
            return cls(data)
        arg = data.get("arg")
        return cls(
            node=data["node"],
            arg=None if arg is None else plan.schema.load(data["node"], arg),
            resume=list(data.get("resume", [])),
            skip_before=bool(data.get("skip_before", False)),
            interrupted=data.get("interrupt"),
            paused="interrupt" in data,
            done=dict(data.get("done", {})),
        )

    @property
    def plain(self) -> bool:
        """Fully described by its node name (no payload, resume values or flags to keep)."""
        return self.arg is None and not self.resume and not self.skip_before and not self.paused


def number(tasks: list[Task], base: int) -> None:
    """Give each task of a superstep its id (see the module docstring)."""
    if len(tasks) == 1:
        tasks[0].id = f"{base}.0"
        return
    for i, t in enumerate(tasks):
        t.id = f"{base}.{i}"


def interrupt_id(run_id: str, task_id: str, node: str, index: int) -> str:
    """A stable id for the ``index``-th ``interrupt()`` of a task (or a static breakpoint, ``-1``)."""
    return hashlib.sha256(f"{run_id}|{task_id}|{node}|{index}".encode()).hexdigest()[:16]


class Scope:
    """What ``interrupt()``/``once()`` see inside one attempt of a node."""

    __slots__ = ("index", "run_id", "task")

    def __init__(self, task: Task, run_id: str) -> None:
        self.task = task  # its resume values and once() results outlive this attempt
        self.run_id = run_id
        self.index = 0


SCOPE: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("headrace_interrupt", default=None)


def once(key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` the first time this node reaches ``once(key, ...)``; its result after that.

    A node that calls ``interrupt()`` re-runs from its start on resume (and a failed attempt re-runs on
    retry): wrap the side effects it makes before that point (sending an email, charging a card, an
    expensive call) in ``once`` and they happen once. The result is kept in the node's checkpoint, so it
    must be JSON when the graph is checkpointed, and survives a crash and a resume in a new process.
    """
    scope = SCOPE.get()
    if scope is None:
        raise GraphError("once() was called outside a graph node (or inside a Ray-task node)")
    done = scope.task.done
    if key not in done:
        done[key] = fn(*args, **kwargs)
    return done[key]


def interrupt(value: Any = None) -> Any:
    """Pause the run from inside a node, showing ``value``; on ``resume(run_id, value=v)`` returns ``v``.

    The node re-runs from its start when resumed, so code before ``interrupt()`` runs again: wrap side
    effects before it in :func:`once` (or move them after it, or into a separate node). Each call has an
    id (``get_state(run).interrupts[i]['id']``); with several pending, resume with ``{id: value}``.
    With checkpoints, ``value`` and the resume value must be JSON. Not available in Ray-task nodes.
    """
    scope = SCOPE.get()
    if scope is None:
        raise GraphError("interrupt() was called outside a graph node (or inside a Ray-task node)")
    task = scope.task
    if scope.index < len(task.resume):
        scope.index += 1
        return task.resume[scope.index - 1]
    info = {
        "id": interrupt_id(scope.run_id, task.id, task.node, scope.index),
        "node": task.node,
        "when": "inside",
        "value": value,
    }
    raise GraphInterrupt(value, info)
