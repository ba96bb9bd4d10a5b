"""Run a checked pipeline: compile it to stages, claim the outputs, plan the splits, hand them to the
scheduler, then seal each output with its manifest and return the run's summary."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import secrets
import signal
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import ray

from connectors.outputs import claim_output, clear_dead_letters, resume_output, write_manifest
from connectors.readers import Split, reader_for
from connectors.writers import PartInfo
from engine import metrics, telemetry
from engine.audit import AuditLog, actor
from engine.check import CheckedPipeline
from engine.compile import Compiled, capacity_problems, compile_pipeline, placement_problems
from engine.errors import (
    BudgetExceeded,
    ConfigError,
    DataError,
    Diagnostic,
    HeadraceError,
    InUseError,
    RunError,
)
from engine.logs import get_logger, run_context
from engine.physical import PhysicalStage, Placement
from engine.records.leases import Lease, LeaseHeld
from engine.runtime.cluster import node_resources, ray_session
from engine.runtime.cluster_watch import UnplaceableWatch
from engine.runtime.failures import explain
from engine.runtime.graphs import UNSET, GraphRunSummary, default_url, run_graph
from engine.runtime.llm.services import start_services
from engine.runtime.progress import Progress
from engine.runtime.recording import RunRecording
from engine.runtime.scheduler import Scheduler, StageRun
from engine.runtime.stopping import sigterm_stops_run, stop_signal
from engine.runtime.summary import NodeStats, RunSummary
from engine.runtime.task_slots import llm_task_slots
from engine.runtime.tenants import RemoteTenant
from engine.runtime.worker import SplitResult

_log = get_logger("runtime")


def new_run_id() -> str:
    """A sortable, unique run id: ``run-20261125-213045-1a2b3c``."""
    return f"run-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def run_checked(
    target: CheckedPipeline | Compiled,
    *,
    address: str | None = None,
    run_id: str | None = None,
    resume: str | None = None,
    progress: bool = True,
    cache: bool = True,
    input: Mapping[str, Any] | None = None,
    checkpoint: str | None = None,
    tenant: RemoteTenant | None = None,
    placement: Placement | None = None,
    observe: Callable[[RunSummary], None] | None = None,
    tenant_name: str | None = None,
    tenant_weight: float = 1.0,
    value: Any = UNSET,
) -> RunSummary | GraphRunSummary:
    """Run ``target`` to completion on Ray and return its summary (failures are in the summary).

    A ``CheckedPipeline`` is compiled first (:func:`engine.compile.compile_pipeline`); a pipeline that
    does not compile raises ``ConfigError`` before Ray starts. The runtime itself only executes the
    compiled plan.

    With ``resume=RUN_ID`` the run continues an earlier one of the same pipeline: splits whose parts
    were committed are skipped, so the output ends up with exactly the rows of an uninterrupted run.
    ``cache=False`` neither reads nor writes the LLM response cache.

    A state-graph pipeline (state nodes or ``edges``) runs in-process on ``input`` with checkpoints in
    ``checkpoint`` (a store URL; see :mod:`engine.runtime.graphs`) and returns a ``GraphRunSummary``.

    ``tenant`` adds a tenant's cost quota to the run's account, ``tenant_weight`` is the tenant's share
    of the shared LLM pools against other tenants; ``placement`` sends every Ray task and
    actor of the run into a tenant's CPU placement group (a task that could never fit there is refused
    before the run starts); ``observe`` is handed the live summary of a dataflow run as it starts (the
    engine streams progress from it). ``tenant_name`` is the tenant the run's record names (default: the
    pipeline's ``tenant`` label, else ``default``). ``value``: with ``resume``, the answer to a state
    graph's pending ``interrupt()``.

    Every dataflow run writes its record (:mod:`engine.records`) to the runs store: ``$HEADRACE_CHECKPOINTS``,
    else ``runs.db`` under ``$HEADRACE_HOME``; ``headrace runs list/show/report`` read it.

    When tracing is on (:mod:`engine.telemetry`) the run is one trace under a ``run`` span; when this
    process serves metrics (:mod:`engine.metrics`) the run is reported live and counted by status.
    """
    compiled = (
        target if isinstance(target, Compiled) else compile_pipeline(target, placement=placement, cache=cache)
    )
    if isinstance(target, Compiled) and placement is not None:
        compiled = dataclasses.replace(
            compiled, problems=compiled.problems + tuple(placement_problems(compiled, placement))
        )
    compiled.raise_errors()
    checked = compiled.checked
    started: list[RunSummary] = []

    def watch(summary: RunSummary) -> None:
        started.append(summary)
        if observe is not None:
            observe(summary)

    graph = compiled.kind == "graph"
    if not graph:
        run_id = resume or run_id or new_run_id()
    name = checked.loaded.spec.name
    outcome: RunSummary | GraphRunSummary | None = None
    # the run's policy (a service tenant's) is what the driver's checks judge by: folders and globs
    # expanded when splits are planned, a state graph's code imported, a sub-pipeline compiled
    with (
        compiled.policy.active(),
        run_context(resume or run_id or "", name),
        telemetry.run_span(resume or run_id, name) as span,
    ):
        try:
            if graph:
                outcome = run_graph(
                    checked,
                    input=input,
                    checkpoint=checkpoint,
                    run_id=run_id,
                    resume=resume,
                    value=value,
                    address=address,
                    placement=placement,
                )
            else:
                outcome = _run_dataflow(
                    compiled,
                    address=address,
                    run_id=run_id,
                    resume=resume,
                    progress=progress,
                    cache=cache,
                    input=input,
                    checkpoint=checkpoint,
                    tenant=tenant,
                    tenant_name=tenant_name,
                    tenant_weight=tenant_weight,
                    placement=placement,
                    observe=watch,
                )
        finally:
            if metrics.serving() and (outcome is not None or started):
                if outcome is None:  # refused after it started (e.g. the cluster is too small)
                    started[0].status = "failed"
                metrics.finish(outcome or started[0])
        if span is not None:
            _end_run_span(span, outcome)
        _log_finished(outcome)
        return outcome


def _log_finished(summary: RunSummary | GraphRunSummary) -> None:
    fields: dict[str, Any] = {"status": summary.status, "seconds": round(summary.seconds, 3)}
    if isinstance(summary, RunSummary):
        fields["rows"] = {n: s.rows for n, s in summary.nodes.items()}
        fields["cost_usd"] = summary.total_cost_usd
        fields["dead_letters"] = sorted(summary.dead_letters)
    if summary.status in ("failed", "budget_exceeded"):
        _log.warning("run %s %s: %s", summary.run_id, summary.status, summary.error, extra=fields)
    else:
        _log.info("run %s %s in %.2fs", summary.run_id, summary.status, summary.seconds, extra=fields)


def _end_run_span(span: Any, summary: RunSummary | GraphRunSummary) -> None:
    attributes: dict[str, Any] = {"headrace.run_id": summary.run_id, "headrace.status": summary.status}
    if isinstance(summary, RunSummary):
        attributes["headrace.cost_usd"] = summary.total_cost_usd
        attributes["headrace.tokens"] = sum(s.tokens for s in summary.nodes.values())
        attributes.update({f"headrace.rows.{n}": s.rows for n, s in summary.nodes.items()})
    span.set_attributes(attributes)
    if summary.status == "failed":
        telemetry.set_error(span, summary.error or "the run failed")


def _run_dataflow(
    compiled: Compiled,
    *,
    address: str | None,
    run_id: str | None,
    resume: str | None,
    progress: bool,
    cache: bool,
    input: Mapping[str, Any] | None,
    checkpoint: str | None,
    tenant: RemoteTenant | None,
    tenant_name: str | None,
    tenant_weight: float,
    placement: Placement | None,
    observe: Callable[[RunSummary], None],
) -> RunSummary:
    if input is not None or checkpoint is not None:
        message = "--input and --checkpoint are for state graphs; a dataflow pipeline reads its sources"
        raise ConfigError([Diagnostic(compiled.checked.loaded.document.path, 1, 1, message)])
    run_id = resume or run_id or new_run_id()
    checked = compiled.checked
    plan = checked.plan
    pipeline = checked.loaded.spec
    stages, physical, pools = compiled.stages, list(compiled.physical), list(compiled.pools)
    cache_url = compiled.cache_url if cache else None
    recording = RunRecording(default_url(), run_id)
    outputs = sorted({s.job.output for s in physical})
    try:
        before = recording.own(outputs)
    except LeaseHeld as exc:
        recording.close()
        raise InUseError(_in_use(exc.lease, run_id, resume, checked)) from None
    audit = AuditLog()
    audit.append("run_started", _audit_fields(run_id, checked, physical, resume))
    started = time.perf_counter()
    nodes: dict[str, NodeStats] = {n.id: NodeStats(n.op) for s in stages for n in s.nodes}
    summary = RunSummary(run_id, plan.name, "succeeded", 0.0, nodes)
    observe(summary)
    if metrics.serving():
        metrics.track(summary, {p.node: (p.targets[0].provider, p.targets[0].model) for p in pools})
    tenant_name = tenant_name or pipeline.labels.get("tenant", "default")
    if before is not None and before.status == "died":
        _log.warning("run %s died earlier (its driver stopped renewing its lease); resuming it", run_id)
        recording.emit("run_finished", status="died", error="its driver died (its lease lapsed)")
    recording.started(
        checked,
        kind="dataflow",
        tenant=tenant_name,
        resume_of=resume,
        inputs=sorted({url for s in physical for url in s.inputs}),
        outputs=outputs,
    )
    try:
        with ray_session(address) as cluster, sigterm_stops_run():
            if problems := capacity_problems(compiled, cluster.nodes):
                raise ConfigError(problems)
            _drive(
                checked,
                physical,
                pools,
                summary,
                recording,
                cluster.resources.get("CPU", 1.0),
                run_id=run_id,
                resume=resume,
                progress=progress,
                cache_url=cache_url,
                tenant=tenant,
                tenant_name=tenant_name,
                tenant_weight=tenant_weight,
                placement=placement,
                started=started,
            )
    except HeadraceError as exc:  # refused before any work (e.g. the cluster is too small for a node)
        summary.status, summary.error = "failed", str(exc)
        recording.failed({"code": exc.code, "message": str(exc)}, None)
        raise
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM before the splits were handed out
        _stopped(summary, exc, checked)
    except Exception as exc:  # a bug: the run is failed (never succeeded) and says so
        _internal(summary, exc, recording)
    finally:
        summary.seconds = time.perf_counter() - started
        recording.finished(summary)
        recording.close()
        if recording.problem:
            _log.warning("run %s: %s", run_id, recording.problem)
        audit.append(
            "run_finished",
            {
                "run_id": run_id,
                "actor": actor(),
                "status": summary.status,
                "seconds": round(summary.seconds, 3),
                "cost_usd": summary.total_cost_usd,
                "tokens": sum(s.tokens for s in summary.nodes.values()),
                "rows_written": {s.job.sink_id: summary.nodes[s.job.sink_id].rows for s in physical},
                "outputs": summary.outputs,
                "error": (summary.error or "")[:500] or None,
            },
        )
    return summary


def _drive(
    checked: CheckedPipeline,
    physical: list[PhysicalStage],
    pools: list[Any],
    summary: RunSummary,
    recording: RunRecording,
    cpus: float,
    *,
    run_id: str,
    resume: str | None,
    progress: bool,
    cache_url: str | None,
    tenant: RemoteTenant | None,
    tenant_name: str,
    tenant_weight: float,
    placement: Placement | None,
    started: float,
) -> None:
    """Run the compiled stages on the connected cluster; the outcome goes into ``summary``."""
    pipeline = checked.loaded.spec
    plan = checked.plan
    report = Progress(summary, enabled=progress)
    llm = start_services(pools, pipeline, run_id, cache_url, tenant, tenant_weight, tenant_name)
    physical = [_with_pools(stage, llm.pools, pipeline.params) for stage in physical]
    if trace := telemetry.carrier():
        physical = [_with_trace(stage, trace) for stage in physical]
    deadline = (
        started + pipeline.budget.max_seconds
        if pipeline.budget is not None and pipeline.budget.max_seconds is not None
        else None
    )

    def tick() -> None:
        if deadline is not None and time.perf_counter() > deadline:
            raise BudgetExceeded(
                f"the run passed budget max_seconds {pipeline.budget.max_seconds:g}",  # type: ignore[union-attr]
                scope="run",
            )
        if llm.pools and llm.poll():
            _apply_usage(summary, llm.usage)
            recording.usage(llm.usage)
        report.tick()

    try:
        parts = _execute(
            physical,
            cpus,
            summary,
            report,
            tick,
            recording,
            run_id=run_id,
            spec_hash=plan.spec_hash,
            resume=resume is not None,
            placement=placement,
        )
        for stage in physical:
            _check_error_budget(stage, summary, final=True)
        for stage in physical:
            url = write_manifest(
                stage.job.output, run_id, plan.name, plan.spec_hash, parts[stage.job.sink_id]
            )
            summary.outputs[stage.job.sink_id] = url
    except BudgetExceeded as exc:
        summary.status = "budget_exceeded"
        summary.error = (
            f"{exc}; calls in flight finished and parts committed so far are kept; continue with "
            f"`--resume {run_id}` and a larger budget (answered rows come from the cache)"
        )
        recording.emit("budget", None, refused=str(exc), scope=exc.scope)
    except HeadraceError as exc:
        failure = explain(exc, checked, run_id)
        summary.status, summary.error = "failed", failure.message
        recording.failed(failure.data, failure.node)
    except KeyboardInterrupt as exc:
        _stopped(summary, exc, checked)
    finally:
        if llm.pools:
            with contextlib.suppress(Exception):
                final = llm.close()  # the run's account is closed; its figures go into the record
                _apply_usage(summary, final)
                recording.usage(final)
        summary.seconds = time.perf_counter() - started
        report.close()


def _execute(
    stages: list[PhysicalStage],
    cpus: float,
    summary: RunSummary,
    report: Progress,
    tick: Callable[[], None],
    recording: RunRecording,
    *,
    run_id: str,
    spec_hash: str,
    resume: bool,
    placement: Placement | None,
) -> dict[str, list[PartInfo]]:
    runs: list[StageRun] = []
    for stage in stages:
        job = stage.job
        earlier: list[PartInfo] = []
        if resume:
            complete, earlier = resume_output(job.output, job.sink_id, run_id, spec_hash)
            if complete:
                runs.append(StageRun(stage, [], earlier))
                continue
            if stage.tails:
                # a barrier's state spans the whole stream: such a stage re-runs from the start
                claim_output(job.sink, job.output, job.sink_id, run_id, spec_hash, replace=True)  # type: ignore[arg-type]
                earlier = []
        else:
            claim_output(job.sink, job.output, job.sink_id, run_id, spec_hash)  # type: ignore[arg-type]
            if job.dead_letters:
                clear_dead_letters(job.dead_letters, [*job.on_error, job.sink_id])
        committed = {p.split_index for p in earlier}
        reader = reader_for(job.source)  # type: ignore[arg-type]
        ray_map = functools.partial(_ray_map, placement=placement)
        splits = _plan_splits(reader, job.source, job.source_id, list(stage.inputs), ray_map)
        report.skipped_splits += sum(1 for s in splits if s.index in committed)
        runs.append(StageRun(stage, [s for s in splits if s.index not in committed], earlier))
    report.total_splits = sum(len(r.splits) for r in runs)
    report.total_bytes = sum(s.end - s.start for r in runs for s in r.splits)

    def on_result(run: StageRun, result: SplitResult) -> None:
        for node, count in result.rows.items():
            stats = summary.nodes[node]
            stats.rows += count
            stats.seconds += result.seconds.get(node, 0.0)
            stats.rows_in += result.rows_in.get(node, 0)
            stats.failed += result.failed.get(node, 0)
        if result.bytes_read:
            summary.nodes[run.stage.job.source_id].bytes_read += result.bytes_read
        if result.dead_letter_file:
            summary.dead_letters.append(result.dead_letter_file)
        recording.batch(result, run.stage.job.sink_id if result.part is not None else None)
        _check_error_budget(run.stage, summary, final=False)
        if result.bytes_read:
            report.split_done(result.bytes_read)

    def on_retry(node: str, split: Split, attempt: int, limit: int, delay: float, error: str) -> None:
        recording.retry(node, split.index, attempt, limit, delay, error)

    if placement is not None:
        cpus = min(cpus, placement.cpus)  # the window follows the CPUs the run may actually use
    # tasks that wait on shared LLM pools share one bound per driver process (see task_slots)
    slots = llm_task_slots(cpus) if any(s.job.pools for s in stages) else None
    watch = UnplaceableWatch(node_resources)
    scheduler = Scheduler(summary, max(2, int(cpus * 2)), on_result, on_retry, placement, slots, watch)
    if metrics.serving():
        metrics.track_queue(summary.run_id, scheduler.queue_depth)
    scheduler.run(runs, tick)
    return {r.stage.job.sink_id: r.parts for r in runs}


def _stopped(summary: RunSummary, exc: KeyboardInterrupt, checked: CheckedPipeline) -> None:
    """A run stopped by Ctrl-C, SIGTERM or a cancel: ``cancelled``, exit 128 + the signal."""
    number = stop_signal(exc)
    summary.status = "cancelled"
    summary.exit_status = 128 + number
    why = "stopped by SIGTERM" if number == signal.SIGTERM else "interrupted"
    summary.error = (
        f"{why}; no new work started, parts committed so far are kept; continue with "
        f"`headrace run {checked.loaded.document.path} --resume {summary.run_id}`"
    )


def _internal(summary: RunSummary, exc: Exception, recording: RunRecording) -> None:
    """An unexpected error (a bug in headrace): the run is ``failed``, exit 70, and the record says so."""
    summary.status = "failed"
    summary.exit_status = 70
    summary.error = (
        f"internal error: {type(exc).__name__}: {exc} (this is a bug in headrace; set HEADRACE_DEBUG=1 "
        "for the traceback and please report it)"
    )
    _log.error(
        "run %s: %s",
        summary.run_id,
        summary.error,
        exc_info=exc if os.environ.get("HEADRACE_DEBUG") else None,
    )
    recording.failed({"code": "internal", "message": f"{type(exc).__name__}: {exc}"}, None)


def _in_use(lease: Lease, run_id: str, resume: str | None, checked: CheckedPipeline) -> str:
    holder = lease.describe()
    if lease.key.startswith("run:"):
        return (
            f"run {run_id} is being run now by {holder}: a second driver would redo its splits (and pay "
            "again for LLM rows); wait for it to end, or stop it (Ctrl-C or SIGTERM) and resume then"
        )
    folder = lease.key.removeprefix("output:")
    return (
        f"output folder {folder} is being written now by {holder}: two runs on one folder would replace "
        f"each other's parts; wait for it to end, or give this run another path (--set nodes.NODE.path=...)"
    )


def _plan_splits(reader: Any, source: Any, node: str, urls: list[str], ray_map: Any) -> list[Split]:
    """The source's splits; an input that cannot be opened or listed (an HTTP error status, a missing
    bucket...) is the user's to fix: a ``DataError`` naming node and inputs, not an internal error."""
    try:
        splits: list[Split] = reader.splits(source, node, urls, ray_map)
    except HeadraceError:
        raise
    except Exception as exc:
        raise DataError(
            f"node '{node}': cannot read {', '.join(urls)}: {type(exc).__name__}: {exc}; check that the "
            "input exists and answers (an URL must answer 200)",
            node=node,
            input={"url": urls[0] if len(urls) == 1 else ", ".join(urls)},
        ) from None
    return splits


def _audit_fields(
    run_id: str, checked: CheckedPipeline, stages: list[PhysicalStage], resume: str | None
) -> dict[str, Any]:
    pipeline = checked.loaded.spec
    return {
        "run_id": run_id,
        "actor": actor(),
        "tenant": pipeline.labels.get("tenant", "default"),
        "pipeline": pipeline.name,
        "pipeline_file": os.path.abspath(checked.loaded.document.path),
        "pipeline_hash": checked.plan.spec_hash,
        "resume": resume is not None,
        "inputs": sorted({url for s in stages for url in s.inputs}),
        "outputs": sorted({s.job.output for s in stages}),
        "budget": pipeline.budget.model_dump(exclude_none=True) if pipeline.budget else None,
    }


def _with_pools(stage: PhysicalStage, pools: Mapping[str, Any], params: Mapping[str, Any]) -> PhysicalStage:
    """``stage`` with the clients of the shared LLM pools its tasks and barriers call."""
    if not pools:
        return stage
    job = dataclasses.replace(stage.job, pools=pools)
    tails = tuple(dataclasses.replace(t, pools=pools, params=params) for t in stage.tails)
    return dataclasses.replace(stage, job=job, tails=tails)


def _with_trace(stage: PhysicalStage, trace: dict[str, str]) -> PhysicalStage:
    """``stage`` with the run's trace context, so its tasks' spans join the run's trace."""
    job = dataclasses.replace(stage.job, trace=trace)
    tails = tuple(dataclasses.replace(t, trace=trace) for t in stage.tails)
    return dataclasses.replace(stage, job=job, tails=tails)


def _apply_usage(summary: RunSummary, usage: dict[str, dict[str, Any]]) -> None:
    for node, figures in usage.items():
        stats = summary.nodes.get(node)
        if stats is not None:
            stats.llm = dict(figures)
            stats.tokens = figures["input_tokens"] + figures["output_tokens"]
            stats.cost_usd = figures["cost_usd"]


def _check_error_budget(stage: PhysicalStage, summary: RunSummary, *, final: bool) -> None:
    """Fail the run once a node's failed rows pass its error budget (the ratio is judged at the end)."""
    for node, policy in stage.job.on_error.items():
        stats = summary.nodes[node]
        where = f"; failed rows are in {stage.job.dead_letters}" if stage.job.dead_letters else ""
        if policy.max_failed_rows is not None and stats.failed > policy.max_failed_rows:
            raise RunError(
                f"node '{node}': {stats.failed} rows failed, more than max_failed_rows "
                f"{policy.max_failed_rows}{where}"
            )
        ratio = stats.failed / stats.rows_in if stats.rows_in else 0.0
        if final and policy.max_failed_ratio is not None and ratio > policy.max_failed_ratio:
            raise RunError(
                f"node '{node}': {ratio:.1%} of rows failed, more than max_failed_ratio "
                f"{policy.max_failed_ratio:.1%}{where}"
            )


def _ray_map(
    fn: Callable[..., Any], args: list[tuple[Any, ...]], placement: Placement | None = None
) -> list[Any]:
    """Planning work (e.g. quote scans of byte ranges) as parallel Ray tasks, results in order."""
    if len(args) <= 1:
        return [fn(*a) for a in args]
    if placement is None:
        remote = ray.remote(fn).options(num_cpus=1)
    else:
        remote = ray.remote(fn).options(**placement.apply({"num_cpus": min(1.0, placement.max_task_cpus)}))
    try:
        results: list[Any] = ray.get([remote.remote(*a) for a in args])
        return results
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, Exception) else exc
        raise DataError(f"planning splits failed: {cause}") from None
