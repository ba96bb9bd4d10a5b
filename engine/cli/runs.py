"""``headrace runs``: the checkpointed runs of state graphs — list, show, history, resume, replay, fork —
and ``report``, any run's record (dataflow or graph) as an HTML page.

The store is ``--store URL``, else ``$HEADRACE_CHECKPOINTS``, else the default SQLite file under
``$HEADRACE_HOME`` (where ``headrace run`` writes). ``list``, ``show`` and ``history`` read the store
alone; ``resume``, ``replay``, ``fork`` (and ``history --state``) need the pipeline file to rebuild
the graph, and refuse one that differs from the graph the run was started with.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from engine.cli.common import friendly, set_option
from engine.cli.run_records import (
    header_json,
    moment,
    prune_records,
    records_at,
    render,
    seconds_of,
    utc,
)
from engine.logs import redact_data

_STATUSES = ["running", "interrupted", "succeeded", "failed", "budget_exceeded", "cancelled", "died"]

_store_option = click.option(
    "--store",
    metavar="URL",
    help="The checkpoint store (sqlite:///runs.db, a folder, s3://...); default: "
    "$HEADRACE_CHECKPOINTS, else runs.db under $HEADRACE_HOME.",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def parse_json_option(text: str, option: str) -> Any:
    """The JSON value of a command-line option: inline JSON, or ``@path`` to read it from a file."""
    where = option
    if text.startswith("@"):
        where = f"{option} file {text[1:]}"
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {text[1:]}: {exc.strerror}", param_hint=option) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"{where} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", param_hint=option
        ) from None


@click.group()
def runs() -> None:
    """List, inspect, resume, replay and fork the runs of state graphs; report any run as an HTML page."""


@runs.command("list")
@_store_option
@click.option("--status", type=click.Choice(_STATUSES), help="Only runs with this status.")
@click.option("--pipeline", "--graph", "pipeline", metavar="NAME", help="Only runs of this pipeline.")
@click.option("--tenant", metavar="NAME", help="Only runs of this tenant.")
@click.option(
    "--since", metavar="WHEN", help="Only runs started since WHEN: a duration ago (7d, 12h) or a date."
)
@click.option("--until", metavar="WHEN", help="Only runs started before WHEN (a duration ago or a date).")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most N runs.")
@_json_option
@friendly
def list_runs(
    store: str | None,
    status: str | None,
    pipeline: str | None,
    tenant: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Every run in the store (dataflow and state graph), newest first."""
    filters: dict[str, Any] = {
        "status": status,
        "pipeline": pipeline,
        "tenant": tenant,
        "since": moment(since, "--since"),
        "until": moment(until, "--until"),
    }
    found = redact_data(_listing(store, filters, limit))  # records hold none; older ones might
    if as_json:
        click.echo(json.dumps(found))
        return
    if not found:
        filtered = any(v is not None for v in filters.values())
        click.echo("no runs" + (" match" if filtered else " in this store"))
        return
    width = max(len(r["run_id"]) for r in found)
    pwidth = max([len(r["pipeline"]) for r in found] + [8])
    click.echo(
        f"{'RUN ID':<{width}}  {'PIPELINE':<{pwidth}}  {'KIND':<8}  {'TENANT':<10}  {'STATUS':<15}  "
        f"{'STARTED (UTC)':<19}  {'SECONDS':>8}  {'COST $':>8}  PARENT"
    )
    for r in found:
        parent = f"{r['parent']['run_id']}@{r['parent']['step']}" if r.get("parent") else "-"
        took = f"{r['finished_at'] - r['started_at']:.2f}" if r.get("finished_at") else "-"
        click.echo(
            f"{r['run_id']:<{width}}  {r['pipeline']:<{pwidth}}  {r['kind']:<8}  {r['tenant']:<10}  "
            f"{r['status']:<15}  {utc(r['started_at'])}  {took:>8}  {r['cost_usd']:>8.4f}  {parent}"
        )


def _listing(store: str | None, filters: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Records' headers merged with the checkpoint store's graph runs (status and parent from there)."""
    records = records_at(store)
    try:
        rows = {h.run_id: header_json(h) for h in records.list_runs(**filters, limit=limit)}
    finally:
        records.close()
    if filters["tenant"] is None or filters["tenant"] == "default":
        with _open(store) as st:
            graph_runs = st.list_runs(status=filters["status"], graph=filters["pipeline"], limit=limit)
        for run in graph_runs:
            since, until = filters["since"], filters["until"]
            if (since is not None and run.created_at < since) or (
                until is not None and run.created_at >= until
            ):
                continue
            row = rows.setdefault(run.run_id, _graph_row(run))
            row.update(status=run.status, parent=_run_json(run)["parent"])
    ordered = sorted(rows.values(), key=lambda r: (r["started_at"], r["run_id"]), reverse=True)
    return ordered[:limit]


def _graph_row(run: Any) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "pipeline": run.graph,
        "graph": run.graph,
        "tenant": "default",
        "kind": "graph",
        "status": run.status,
        "started_at": run.created_at,
        "created_at": utc(run.created_at, iso=True),
        "updated_at": run.created_at,
        "finished_at": None,
        "cost_usd": 0.0,
        "error": None,
    }


@runs.command()
@_store_option
@click.option("--older-than", metavar="DURATION", help="Delete runs created longer ago than this (7d, 12h).")
@click.option("--keep-last", type=click.IntRange(min=0), help="Keep this many of the newest matching runs.")
@click.option(
    "--status", type=click.Choice(_STATUSES), help="Only runs with this status (default: all but running)."
)
@click.option("--pipeline", "--graph", "pipeline", metavar="NAME", help="Only runs of this pipeline.")
@friendly
def prune(
    store: str | None,
    older_than: str | None,
    keep_last: int | None,
    status: str | None,
    pipeline: str | None,
) -> None:
    """Retention: delete old runs, their records and checkpoints (never a run another was forked from)."""
    if older_than is None and keep_last is None:
        raise click.UsageError("give --older-than, --keep-last or both")
    age = seconds_of(older_than) if older_than is not None else None
    deleted = 0
    graph_runs: set[str] = set()
    if status != "budget_exceeded":  # a status only dataflow runs have
        with _open(store) as st:
            deleted = st.prune(older_than_s=age, keep_last=keep_last, status=status, graph=pipeline)
            graph_runs = {r.run_id for r in st.list_runs(limit=1 << 30)}
    records = records_at(store)
    try:
        gone = prune_records(
            records, older_than_s=age, keep_last=keep_last, status=status, pipeline=pipeline, keep=graph_runs
        )
    finally:
        records.close()
    deleted += sum(1 for h in gone if h.kind != "graph")  # graph runs were counted by the checkpoints
    click.echo(f"deleted {deleted} run{'s' if deleted != 1 else ''}")


@runs.command()
@click.argument("run_id")
@_store_option
@_json_option
@friendly
def show(run_id: str, store: str | None, as_json: bool) -> None:
    """A run's outcome and per-node table (rows, seconds, tokens, cost, retries, dead letters, errors
    with their place in the pipeline file and the input); for a state graph also its last step and the
    nodes that run next."""
    from engine.graph.checkpoints import RunNotFound
    from engine.records import RunView

    records = records_at(store)
    try:
        header = records.header(run_id)
        view = RunView.of(records.events(run_id)) if header is not None else None
    finally:
        records.close()
    if view is not None and header is not None and header.status == "died":
        view.status = "died"  # its driver's lease lapsed with the run unfinished
    with _open(store) as st:
        run = st.get_run(run_id)
        last = st.last_step(run_id) if run is not None else None
    if view is None and run is None:
        raise RunNotFound(run_id)
    if view is not None and run is not None:
        view.status = run.status  # the checkpoint store decides a graph run's status (interrupted...)
    if as_json:
        out: dict[str, Any] = {}
        if run is not None:
            out.update(_run_json(run), last_step=None if last is None else _step_json(last))
        if view is not None:
            out.setdefault("run_id", view.run_id)
            out.setdefault("status", view.status)
            out["record"] = view.as_dict()
        click.echo(json.dumps(out))
        return
    click.echo(render(view) if view is not None else f"run {run.run_id}: {run.status}")
    if run is None:
        return
    click.echo(f"  graph: {run.graph} (hash {run.graph_hash})")
    click.echo(f"  created: {utc(run.created_at)} UTC")
    if run.parent:
        click.echo(f"  forked from: {run.parent[0]} at step {run.parent[1]}")
    for key, value in run.meta.items():
        click.echo(f"  {key}: {json.dumps(value, ensure_ascii=False)}")
    if last is not None:
        keys = ", ".join(last.delta) or "-"
        click.echo(f"  last step: {last.step} {last.node} at {utc(last.created_at)} (updated: {keys})")
        for info in last.meta.get("interrupts", []):
            value = json.dumps(info.get("value"))
            click.echo(f"  waiting {info.get('when', 'at')} node {info.get('node')!r}: {value}")
        click.echo(f"  next: {', '.join(last.next) or '- (nothing: the run is at its end)'}")


@runs.command()
@click.argument("run_id")
@click.argument("path", required=False, type=click.Path(dir_okay=False, allow_dash=True))
@set_option
@_store_option
@click.option(
    "--state", "with_state", is_flag=True, help="Print the full state after each step (needs PATH)."
)
@_json_option
@friendly
def history(
    run_id: str,
    path: str | None,
    overrides: tuple[str, ...],
    store: str | None,
    with_state: bool,
    as_json: bool,
) -> None:
    """Every step of a run (its fork parents' included): step, node, time and the keys it updated.

    With --state (and the pipeline file PATH, whose reducers fold the updates) the state after each step.
    """
    if with_state and path is None:
        raise click.UsageError("--state needs the pipeline file: headrace runs history RUN_ID PATH --state")
    states: list[Any] | None = None
    with _open(store) as st:
        _need_run(st, run_id)
        # pending writes (__write__) are folded in when their step commits: history() skips them too
        steps = [s for s in st.steps(run_id) if s.node != "__write__"]
        if with_state and path is not None:
            app = _compiled(path, overrides, st)
            _check_same_graph(app, st, run_id, path)
            states = [v.state.model_dump(mode="json") for v in app.history(run_id)]
    if as_json:
        rows = []
        for i, rec in enumerate(steps):
            row = {**_step_json(rec), "keys": list(rec.delta)}
            if states is not None:
                row["state"] = states[i]
            rows.append(row)
        click.echo(json.dumps(rows))
        return
    for i, rec in enumerate(steps):
        own = "" if rec.run_id == run_id else f"  (from {rec.run_id})"
        keys = ", ".join(rec.delta) or "-"
        click.echo(f"{rec.step:>5}  {utc(rec.created_at)}  {rec.node:<20} {keys}{own}")
        if states is not None:
            click.echo("       " + json.dumps(states[i], ensure_ascii=False))


@runs.command()
@click.argument("run_id")
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
@set_option
@_store_option
@click.option("--value", metavar="JSON|@FILE", help="The answer to the run's pending interrupt().")
@_json_option
@friendly
def resume(
    run_id: str, path: str, overrides: tuple[str, ...], store: str | None, value: str | None, as_json: bool
) -> None:
    """Continue a run from its last checkpoint (after a crash, a failure or an interrupt).

    Nodes that finished are not run again; nodes in flight when the run stopped run from their start.
    """
    from engine.runtime.graphs import UNSET, resume_run

    answer = UNSET if value is None else parse_json_option(value, "--value")
    _continue(path, overrides, store, run_id, as_json, lambda app: resume_run(app, run_id, answer))


@runs.command()
@click.argument("run_id")
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--step", "step", type=click.IntRange(min=0), required=True, help="The step to replay from.")
@set_option
@_store_option
@_json_option
@friendly
def replay(
    run_id: str, path: str, step: int, overrides: tuple[str, ...], store: str | None, as_json: bool
) -> None:
    """Run again from step K: a new run (a fork with no edit) that shares the history up to K."""
    _fork_and_go(run_id, path, step, None, overrides, store, as_json, go=True)


@runs.command()
@click.argument("run_id")
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--step", "step", type=click.IntRange(min=0), required=True, help="The step to fork from.")
@click.option("--update", metavar="JSON|@FILE", help="State fields to set at the fork (through reducers).")
@click.option("--resume", "go", is_flag=True, help="Continue the new run at once.")
@set_option
@_store_option
@_json_option
@friendly
def fork(
    run_id: str,
    path: str,
    step: int,
    update: str | None,
    go: bool,
    overrides: tuple[str, ...],
    store: str | None,
    as_json: bool,
) -> None:
    """Start a new run from step K of RUN_ID with an edited state; prints the new run id.

    The update goes through the fields' reducers (an `append` field gets the items appended). Continue
    the new run with --resume, or later with `headrace runs resume NEW_ID PATH`.
    """
    edit = None if update is None else parse_json_option(update, "--update")
    if edit is not None and not isinstance(edit, dict):
        raise click.BadParameter("give the update as a JSON object of state fields", param_hint="--update")
    _fork_and_go(run_id, path, step, edit, overrides, store, as_json, go=go)


@runs.command()
@click.argument("run_id")
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(dir_okay=False, writable=True),
    default="report.html",
    show_default=True,
    help="The HTML file to write.",
)
@_store_option
@friendly
def report(run_id: str, output: str, store: str | None) -> None:
    """Write a run's record as one self-contained HTML page: its facts, DAG, timeline of batches (or
    graph steps), rows and cost over time, per-node table and errors. Prints the path written.
    """
    from engine.records import RecordsError, RunView
    from engine.records.report import render_report
    from engine.runtime.graphs import store_url

    url = store_url(store)
    try:
        records = records_at(store)
        try:
            header = records.header(run_id)
            found = header is not None
            events = records.events(run_id) if found else []
        finally:
            records.close()
    except RecordsError as exc:
        click.echo(f"error: cannot read run {run_id} from {url}: {exc}", err=True)
        sys.exit(1)
    if not found:
        click.echo(f"error: no run {run_id} in {url}; `headrace runs list` shows the runs there", err=True)
        sys.exit(1)
    view = RunView.of(events)
    if header is not None and header.status == "died":
        view.status = "died"  # its driver's lease lapsed with the run unfinished
    if view.kind == "graph":  # as in `runs show`: the checkpoint store decides (interrupted...)
        with _open(store) as st:
            run = st.get_run(run_id)
        if run is not None:
            view.status = run.status
    path = Path(output)
    try:
        path.write_text(render_report(view), encoding="utf-8")
    except OSError as exc:
        click.echo(f"error: cannot write {output}: {exc.strerror}", err=True)
        sys.exit(1)
    click.echo(str(path))


# -- helpers ----------------------------------------------------------------------------------------


def _fork_and_go(
    run_id: str,
    path: str,
    step: int,
    edit: dict[str, Any] | None,
    overrides: tuple[str, ...],
    store: str | None,
    as_json: bool,
    *,
    go: bool,
) -> None:
    checked = _checked(path, overrides)
    url, app = _app(checked, store)
    try:
        _need_run(app.store, run_id)
        _check_same_graph(app, app.store, run_id, path)
        new_id = app.fork(run_id, step=step, update=edit)
        if go:  # the summary names the new run
            _report(_drive(app, new_id, lambda: app.resume(new_id), checked, url), as_json)
        elif as_json:
            click.echo(json.dumps({"run_id": new_id, "parent": {"run_id": run_id, "step": step}}))
        else:
            click.echo(new_id)
    finally:
        app.close()


def _continue(
    path: str,
    overrides: tuple[str, ...],
    store: str | None,
    run_id: str,
    as_json: bool,
    start: Callable[[Any], Any],
) -> None:
    checked = _checked(path, overrides)
    url, app = _app(checked, store)
    try:
        _need_run(app.store, run_id)
        _check_same_graph(app, app.store, run_id, path)
        _report(_drive(app, run_id, lambda: start(app), checked, url), as_json)
    finally:
        app.close()


def _report(summary: Any, as_json: bool) -> None:
    click.echo(json.dumps(summary.as_dict()) if as_json else summary.render())
    sys.exit(summary.exit_code)


def _drive(app: Any, run_id: str, start: Callable[[], Any], checked: Any, url: str) -> Any:
    from engine.runtime.graphs import drive

    return drive(app, run_id, start, checked, url)


def _checked(path: str, overrides: tuple[str, ...]) -> Any:
    from engine.check import check_file

    content = sys.stdin.buffer.read() if path == "-" else None
    checked = check_file(path, content=content, overrides=overrides)
    for warning in checked.warnings:
        click.echo(warning.format(), err=True)
    return checked


def _app(checked: Any, store: str | None) -> tuple[str, Any]:
    from engine.runtime.graphs import compile_checked, is_state_graph, store_url

    if not is_state_graph(checked.loaded.spec):
        raise click.UsageError(f"{checked.loaded.document.path} is a dataflow pipeline, not a state graph")
    url = store_url(store)
    return url, compile_checked(checked, url)


def _compiled(path: str, overrides: tuple[str, ...], store: Any) -> Any:
    from engine.graph.spec import graph_from_spec

    checked = _checked(path, overrides)
    return graph_from_spec(checked.loaded.spec, base_dir=checked.base_dir()).compile(checkpoint=store)


def _check_same_graph(app: Any, store: Any, run_id: str, path: str) -> None:
    from engine.graph.errors import InvalidGraph

    run = store.get_run(run_id)
    if run.graph_hash != app.plan.graph_hash:
        raise InvalidGraph(
            f"run {run_id!r} was started by a different graph ({run.graph!r}, hash {run.graph_hash}) than "
            f"{path} now describes (hash {app.plan.graph_hash}): its nodes, edges, conditions or state "
            "changed; use the pipeline file (and --set values) the run was started with"
        )


def _need_run(store: Any, run_id: str) -> Any:
    from engine.graph.checkpoints import RunNotFound

    run = store.get_run(run_id)
    if run is None:
        raise RunNotFound(run_id)
    return run


class _open:
    """The checkpoint store named by ``--store`` (or the default), closed on exit."""

    def __init__(self, url: str | None) -> None:
        from engine.graph.checkpoints import open_store
        from engine.runtime.graphs import ensure_store_folder, store_url

        full = store_url(url)
        ensure_store_folder(full)
        self.store = open_store(full)

    def __enter__(self) -> Any:
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()


def _run_json(run: Any) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "graph": run.graph,
        "graph_hash": run.graph_hash,
        "status": run.status,
        "created_at": utc(run.created_at, iso=True),
        "parent": None if run.parent is None else {"run_id": run.parent[0], "step": run.parent[1]},
        "meta": dict(run.meta),
    }


def _step_json(rec: Any) -> dict[str, Any]:
    return {
        "run_id": rec.run_id,
        "step": rec.step,
        "node": rec.node,
        "created_at": utc(rec.created_at, iso=True),
        "delta": dict(rec.delta),
        "next": list(rec.next),
        "meta": dict(rec.meta),
    }
