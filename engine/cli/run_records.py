"""What ``headrace runs list/show/prune`` read from run records (every run, dataflow or state graph).

State-graph runs are also in the checkpoint store, which stays the authority on their status (an
``interrupted`` run is resumed there); a graph run that has no record (one started through the Python
API) is listed from the checkpoint store alone.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from typing import Any

import click

from engine.records import RecordStore, RunHeader, RunView, open_records

_STALE_S = 120.0  # a running run that wrote nothing for this long has probably lost its driver
_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def records_at(url: str | None) -> RecordStore:
    """The record store of the runs store ``url`` (``--store``; default as for checkpoints)."""
    from engine.runtime.graphs import ensure_store_folder, store_url

    full = store_url(url)
    ensure_store_folder(full)
    return open_records(full)


def seconds_of(text: str) -> float:
    """``90s``, ``15m``, ``12h``, ``7d``, ``2w`` (or a plain number of seconds)."""
    text = text.strip().lower()
    try:
        return float(text[:-1]) * _DURATION[text[-1]] if text and text[-1] in _DURATION else float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration like 7d, 12h or 90s") from None


def moment(text: str | None, option: str) -> float | None:
    """A point in time from ``--since``/``--until``: a duration ago (``7d``) or an ISO date (UTC)."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        try:
            return time.time() - seconds_of(text)
        except click.BadParameter:
            raise click.BadParameter(
                f"{text!r} is neither a duration (7d, 12h) nor a date (2026-11-25, 2026-11-25T10:00)",
                param_hint=option,
            ) from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def prune_records(
    records: RecordStore,
    *,
    older_than_s: float | None,
    keep_last: int | None,
    status: str | None,
    pipeline: str | None,
    keep: set[str],
) -> list[RunHeader]:
    """Delete the records ``runs prune`` selects (as the checkpoint store selects runs: matching
    ``status`` — default every status but running — and ``pipeline``, older than ``older_than_s``,
    past the ``keep_last`` newest), except runs in ``keep``; returns the deleted headers."""
    found = records.list_runs(status=status, pipeline=pipeline, limit=1 << 30)
    if status is None:
        found = [h for h in found if h.status != "running"]
    doomed = found[keep_last:] if keep_last is not None else found
    if older_than_s is not None:
        doomed = [h for h in doomed if h.started_at < time.time() - older_than_s]
    doomed = [h for h in doomed if h.run_id not in keep]
    records.delete([h.run_id for h in doomed])
    return doomed


def header_json(header: Any) -> dict[str, Any]:
    """A record header as ``runs list --json`` prints it."""
    data = header.as_dict()
    data["graph"] = header.pipeline  # the name the checkpoint listing has always used
    data["created_at"] = utc(header.started_at, iso=True)
    return data


def status_of(view: RunView, now: float | None = None) -> str:
    """The run's status, with a warning when a ``running`` run has gone quiet."""
    if view.status != "running":
        return view.status
    quiet = (now or time.time()) - view.last_event_at
    if quiet < _STALE_S:
        return "running"
    return f"running? (no event for {quiet / 60:.0f} min: its driver may have died)"


def render(view: RunView) -> str:
    """``headrace runs show`` for a run with a record: outcome, per-node table, errors, files."""
    lines = [f"run {view.run_id}: {status_of(view)}"]
    lines.append(f"  pipeline: {view.pipeline} ({view.kind}; tenant {view.tenant})")
    if view.pipeline_file:
        lines.append(f"  file: {view.pipeline_file}")
    finished = f"; finished {utc(view.finished_at)} UTC" if view.finished_at else ""
    took = f" in {view.seconds:.2f}s" if view.seconds is not None else ""
    attempts = f"; {view.attempts} attempts (resumed)" if view.attempts > 1 else ""
    lines.append(f"  started {utc(view.started_at)} UTC{finished}{took}{attempts}")
    lines.extend(_table(view))
    if view.cost_usd:
        lines.append(f"  total cost: ${view.cost_usd:.4f}")
    if view.retries:
        lines.append(f"  retried splits: {view.retries}")
    for error in view.errors:
        lines.extend(_error_lines(error))
    for path in view.dead_letters:
        lines.append(f"  dead letters: {path}")
    for node, url in view.outputs.items():
        lines.append(f"  output {node}: {url}")
    if view.error and not view.errors:
        lines.append(f"  error: {view.error}")
    return "\n".join(lines)


def _table(view: RunView) -> list[str]:
    if not view.nodes:
        return []
    width = max(len(n) for n in [*view.nodes, "node"])
    head = (
        f"  {'node':<{width}}  {'op':<14} {'line':>5} {'rows in':>11} {'rows out':>11} {'failed':>7} "
        f"{'seconds':>8} {'rows/s':>10} {'tokens':>9} {'cost $':>9} {'retries':>7} {'dead':>6}"
    )
    lines = [head]
    for name, n in view.nodes.items():
        rate = f"{n.rows_per_s:,.0f}" if n.rows_per_s is not None else "-"
        # a node written in an included or inlined file says which: fragment.yaml:12
        line = f"{os.path.basename(n.file)}:{n.line}" if n.file and n.line else (n.line or "-")
        lines.append(
            f"  {name:<{width}}  {n.op:<14} {line:>5} {n.rows_in:>11,} {n.rows:>11,} {n.failed:>7,} "
            f"{n.seconds:>8.2f} {rate:>10} {n.tokens:>9,} {n.cost_usd:>9.4f} {n.retries:>7} "
            f"{n.dead_letter_rows:>6,}"
        )
    return lines


def _error_lines(error: dict[str, Any]) -> list[str]:
    where = error.get("location") or {}
    place = f"{where['file']}:{where['line']}:{where['col']}: " if where.get("file") else ""
    node = f"node '{error['node']}' " if error.get("node") else ""
    lines = [f"  error: {place}{node}[{error.get('code', 'error')}] {error.get('message', '')}"]
    data_at = error.get("input") or {}
    if data_at:
        lines.append("    input: " + ", ".join(f"{k} {v}" for k, v in data_at.items()))
    if error.get("hint"):
        lines.append(f"    next: {error['hint']}")
    return lines


def utc(ts: float | None, *, iso: bool = False) -> str:
    """A unix time as UTC text."""
    if ts is None:
        return "-"
    when = datetime.fromtimestamp(ts, timezone.utc)
    return when.isoformat(timespec="milliseconds") if iso else f"{when:%Y-%m-%d %H:%M:%S}"
