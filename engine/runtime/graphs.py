"""Running a state-graph pipeline: build the graph from the file, compile it with a checkpoint store,
invoke (or resume) it, and summarise the run.

A pipeline is a state graph when it has state nodes (op ``call``) or ``edges``; one that mixes state
nodes with dataflow nodes is refused with a located message. Light nodes run inline in this process
(no Ray); Ray is started (or ``address`` joined) only when a node asks for ``resources``.

Checkpoints go to ``--checkpoint``/``--store`` when given, else ``$HEADRACE_CHECKPOINTS``, else
:func:`engine.graph.checkpoints.default_store_url` (SQLite under ``$HEADRACE_HOME``), so ``headrace runs``
finds every run ``headrace run`` made.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, cast

from engine.audit import AuditLog, actor
from engine.check import CheckedPipeline, locate
from engine.errors import ConfigError, HeadraceError
from engine.plan import Problem
from engine.runtime.recording import RunRecording
from engine.spec.models import Pipeline

if TYPE_CHECKING:
    from engine.physical import Placement

GraphRunStatus = Literal["succeeded", "failed", "interrupted", "cancelled"]
STORE_ENV = "HEADRACE_CHECKPOINTS"
"""The environment variable naming the checkpoint store when no ``--store``/``--checkpoint`` is given."""

_EXIT = {"succeeded": 0, "interrupted": 0, "failed": 3, "cancelled": 130}
_MARKERS = frozenset({"__input__", "__update__", "__interrupt__", "__write__"})
UNSET: Any = object()
"""``value`` left out: resume without answering an ``interrupt()``."""


@dataclass
class GraphRunSummary:
    """The outcome of one invocation (or continuation) of a state-graph run."""

    run_id: str
    pipeline: str
    status: GraphRunStatus
    seconds: float
    steps: int
    """Node executions in the run's history (its fork parents' included); input and edit steps excluded."""
    state: dict[str, Any]
    """The state after the last step, as JSON."""
    checkpoint: str
    """The URL of the checkpoint store that holds the run."""
    next: list[str] = field(default_factory=list)
    interrupts: list[Any] = field(default_factory=list)
    error: str | None = None
    pipeline_path: str | None = None

    @property
    def exit_code(self) -> int:
        """0 succeeded or interrupted (waiting for a resume), 3 failed, 130 cancelled."""
        return _EXIT[self.status]

    @property
    def outputs(self) -> dict[str, str]:
        """What the run leaves behind: its record in the checkpoint store (a local path when it has one)."""
        return {"checkpoint": _local_path(self.checkpoint) or self.checkpoint}

    def as_dict(self) -> dict[str, Any]:
        """The JSON object ``headrace run --json`` prints for a state graph."""
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "status": self.status,
            "steps": self.steps,
            "state": self.state,
            "checkpoint": self.checkpoint,
            "seconds": round(self.seconds, 3),
            "next": self.next,
            "error": self.error,
        }
        if self.interrupts:
            out["interrupts"] = self.interrupts
        return out

    def render(self) -> str:
        """A short report for people."""
        lines = [
            f"run {self.run_id} ({self.pipeline}): {self.status} after {self.steps} steps "
            f"in {self.seconds:.2f}s",
            f"  checkpoints: {self.checkpoint}",
            "  state: " + json.dumps(self.state, ensure_ascii=False),
        ]
        if self.next:
            lines.append(f"  next: {', '.join(self.next)}")
        path = self.pipeline_path or "PIPELINE.yaml"
        if self.status == "interrupted":
            for info in self.interrupts:
                value = "" if info.get("value") is None else f": {json.dumps(info.get('value'))}"
                lines.append(f"  waiting {info.get('when', 'at')} node {info.get('node')!r}{value}")
            lines.append(
                f"  resume with: headrace runs resume {self.run_id} {path} [--value JSON]"
                + ("" if self.checkpoint == default_url() else f" --store {self.checkpoint}")
            )
        if self.error:
            lines.append(f"  error: {self.error}")
            if self.status in ("failed", "cancelled"):
                lines.append(f"  after a fix, continue with: headrace runs resume {self.run_id} {path}")
        return "\n".join(lines)


def is_state_graph(pipeline: Pipeline) -> bool:
    """Whether the pipeline has state nodes or state edges (and so runs as a state graph)."""
    return bool(pipeline.edges) or any(n.kind == "state" for n in pipeline.nodes.values())


def default_url() -> str:
    """``$HEADRACE_CHECKPOINTS``, else the default SQLite store under ``$HEADRACE_HOME``."""
    from engine.graph.checkpoints import default_store_url

    return os.environ.get(STORE_ENV) or default_store_url()


def store_url(explicit: str | None) -> str:
    """The checkpoint store to use: ``explicit`` (``--store``/``--checkpoint``) or :func:`default_url`."""
    return explicit or default_url()


def compile_checked(checked: CheckedPipeline, checkpoint: str) -> Any:
    """The compiled graph of a checked state-graph pipeline, writing checkpoints to ``checkpoint``.

    Raises :class:`ConfigError` (located) when the pipeline mixes dataflow and state nodes.
    """
    from engine.graph.spec import graph_from_spec, recursion_limit_of

    pipeline = checked.loaded.spec
    problems = [
        Problem(
            ("nodes", name, "op"),
            f"node '{name}' is a {node.kind} node in a pipeline with state nodes; a pipeline is either a "
            "dataflow or a state graph in this version of headrace",
            "move the dataflow into its own pipeline, or call it from a state node",
            code="not_executable",
        )
        for name, node in pipeline.nodes.items()
        if node.kind != "state"
    ]
    if problems:
        raise ConfigError([locate(p, checked.loaded.document) for p in problems])
    ensure_store_folder(checkpoint)
    graph = graph_from_spec(pipeline, base_dir=checked.base_dir())
    return graph.compile(checkpoint=checkpoint, recursion_limit=recursion_limit_of(pipeline))


def run_graph(
    checked: CheckedPipeline,
    *,
    input: Mapping[str, Any] | None = None,
    checkpoint: str | None = None,
    run_id: str | None = None,
    resume: str | None = None,
    value: Any = UNSET,
    address: str | None = None,
    placement: Placement | None = None,
) -> GraphRunSummary:
    """Run a state-graph pipeline on ``input`` (or continue run ``resume``) and summarise it.

    A failure of a node is in the summary (status ``failed``); a pipeline that cannot be built raises,
    as does one with a heavy node that could never be scheduled inside ``placement``.
    """
    url = store_url(checkpoint)
    app = compile_checked(checked, url)
    try:
        if placement is not None:
            from engine.graph.remote import check_placement

            check_placement(app.plan.nodes.values(), placement)
        if resume is not None:
            start = functools.partial(resume_run, app, resume, value, placement)
            return drive(app, resume, start, checked, url, address)
        if value is not UNSET:
            raise HeadraceError("a value answers an interrupt of a run being resumed; pass --resume RUN_ID")
        rid = run_id or new_graph_run_id()
        invoke = functools.partial(app.invoke, input or {}, run_id=rid, placement=placement)
        return drive(app, rid, invoke, checked, url, address)
    finally:
        app.close()


def resume_run(app: Any, run_id: str, value: Any = UNSET, placement: Placement | None = None) -> Any:
    """``app.resume(run_id)``, answering a pending ``interrupt()`` with ``value`` when one is given."""
    options: dict[str, Any] = {} if placement is None else {"placement": placement}
    if value is not UNSET:
        options["value"] = value
    return app.resume(run_id, **options)


def drive(
    app: Any,
    run_id: str,
    start: Callable[[], Any],
    checked: CheckedPipeline,
    url: str,
    address: str | None = None,
) -> GraphRunSummary:
    """Call ``start`` (an invoke or resume of ``run_id`` on ``app``) and summarise the run after it."""
    from engine.graph.errors import GraphError

    audit = AuditLog()
    audit.append("run_started", _audit_started(run_id, checked, app, url))
    recording = RunRecording(url, run_id)
    last = app.store.last_step(run_id) if app.store.get_run(run_id) is not None else None
    recording.started(
        checked,
        kind="graph",
        tenant=checked.loaded.spec.labels.get("tenant", "default"),
        resume_of=run_id if last is not None else None,
    )
    began = time.time()
    started = time.perf_counter()
    error: str | None = None
    failure: GraphError | None = None
    cancelled = False
    with _ray_if_needed(app, address):
        try:
            start()
        except Exception as exc:  # a node's own exception reaches the caller as itself
            error = str(exc) if isinstance(exc, GraphError) else _node_error(exc)
            failure = exc if isinstance(exc, GraphError) else GraphError(error)
        except KeyboardInterrupt:
            cancelled = True
            error = "interrupted; the steps finished so far are checkpointed"
            with contextlib.suppress(Exception):
                app.store.set_status(run_id, "cancelled", {})
    seconds = time.perf_counter() - started
    summary = None
    if failure is None or app.store.get_run(run_id) is not None:
        summary = summarize(app, run_id, url, seconds=seconds, error=error)
        if cancelled:
            summary.status = "cancelled"
        summary.pipeline_path = _path_of(checked)
    refused = failure is not None and (summary is None or summary.status != "failed")
    _record_steps(recording, app, run_id, -1 if last is None else last.step, began)
    status = "failed" if refused or summary is None else summary.status
    recording.graph_finished(status, seconds, error, {"checkpoint": url})
    recording.close()
    audit.append(
        "run_finished",
        {
            "run_id": run_id,
            "actor": actor(),
            "status": "refused" if refused or summary is None else summary.status,
            "seconds": round(seconds, 3),
            "steps": 0 if summary is None else summary.steps,
            "outputs": {"checkpoint": url},
            "error": (error or "")[:500] or None,
        },
    )
    if summary is None:
        # refused before the run existed (its input does not fit the state): bad input, exit 1
        raise HeadraceError(f"run {run_id!r} did not start: {failure}") from failure
    if refused and failure is not None:
        raise failure  # refused before the run went on (e.g. no interrupt to answer): not a run failure
    return summary


def _node_error(exc: BaseException) -> str:
    """``ValueError: bad input (raised by node 'x' at step 3 of graph run 'r')`` for a node's error."""
    where = "; ".join(getattr(exc, "__notes__", []))
    return f"{type(exc).__name__}: {exc}" + (f" ({where})" if where else "")


def _record_steps(recording: RunRecording, app: Any, run_id: str, after: int, began: float) -> None:
    """Record the node steps of ``run_id`` after step ``after`` (this invocation's)."""
    if app.store.get_run(run_id) is None:
        return
    steps = [s for s in app.store.steps(run_id) if s.step > after and s.node not in _MARKERS]
    recording.graph_steps(steps, began)


def summarize(
    app: Any, run_id: str, url: str, *, seconds: float = 0.0, error: str | None = None
) -> GraphRunSummary:
    """Where run ``run_id`` stands, read back from the checkpoint store."""
    run = app.store.get_run(run_id)
    if run is None:  # the run could not even start (e.g. its input did not fit the state)
        return GraphRunSummary(run_id, app.plan.name, "failed", seconds, 0, {}, url, error=error)
    state = app.get_state(run_id)
    steps = sum(1 for s in app.store.steps(run_id) if s.node not in _MARKERS)
    # "running" after the call returned: it stopped before the runner could record why
    status = cast(GraphRunStatus, run.status if run.status in _EXIT else "failed")
    if status == "failed" and error is None:
        error = str(run.meta.get("error") or "the run failed")
    return GraphRunSummary(
        run_id=run_id,
        pipeline=app.plan.name,
        status=status,
        seconds=seconds,
        steps=steps,
        state=state.state.model_dump(mode="json"),
        checkpoint=url,
        next=list(state.next),
        interrupts=list(state.interrupts),
        error=error,
    )


def _audit_started(run_id: str, checked: CheckedPipeline, app: Any, url: str) -> dict[str, Any]:
    pipeline = checked.loaded.spec
    path = _path_of(checked)
    return {
        "run_id": run_id,
        "actor": actor(),
        "tenant": pipeline.labels.get("tenant", "default"),
        "pipeline": pipeline.name,
        "pipeline_file": os.path.abspath(path) if path else None,
        "pipeline_hash": checked.plan.spec_hash,
        "graph_hash": app.plan.graph_hash,
        "kind": "state_graph",
        "resume": app.store.get_run(run_id) is not None,
        "inputs": [],
        "outputs": [url],
        "budget": None,
    }


def new_graph_run_id() -> str:
    """A sortable, unique run id, spelt as dataflow runs' ids: ``run-20261125-213045-1a2b3c``."""
    return f"run-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def _ray_if_needed(app: Any, address: str | None) -> Iterator[None]:
    """A Ray session only when a node runs as a Ray task; light graphs never start Ray."""
    if not any(node.remote for node in app.plan.nodes.values()):
        yield
        return
    from engine.runtime.cluster import ray_session

    with ray_session(address):
        yield


def ensure_store_folder(url: str) -> None:
    """Create the folder of a local SQLite store (on a fresh machine ``$HEADRACE_HOME`` may not exist)."""
    path = _local_path(url)
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)


def _local_path(url: str) -> str | None:
    if url.startswith("sqlite:///"):
        rest = url[len("sqlite:///") :]
        return rest if rest and rest != ":memory:" else None
    if "://" not in url and url.lower().endswith((".db", ".sqlite", ".sqlite3")):
        return os.path.expanduser(url)
    return None


def _path_of(checked: CheckedPipeline) -> str | None:
    path = checked.loaded.document.path
    return None if path in ("-", "<stdin>") else str(path)
