"""``headrace runs report``: a run record as one self-contained HTML page.

The page holds the run's facts, its DAG, a timeline of batches (or graph steps), rows and cost over
time, the per-node table and the errors, with its styles and SVG inline and nothing fetched: a
Content-Security-Policy forbids every load, so the file opens the same offline, in a mail attachment
or from an artefact store. Every string from the record (node names, messages, paths) is escaped by
the template's autoescaping or by :func:`engine.records.svg.el`.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from engine.records.dag import DagNode, dag_svg
from engine.records.svg import Bar, TimelineRow, line_chart, timeline
from engine.records.view import NodeView, RunView

__all__ = ["render_report"]

_ENV = Environment(
    loader=PackageLoader("engine.records", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_report(view: RunView, *, generated_at: float | None = None) -> str:
    """The HTML page of a run (see the module docstring); ``generated_at`` defaults to now."""
    end = _end(view)
    context = {
        "view": view,
        "title": f"{view.pipeline or 'run'} · {view.run_id}",
        "status_class": "status-" + view.status.replace("_", "-"),
        "facts": _facts(view, end),
        "error": _run_error(view.error),
        "dag": dag_svg(_dag_nodes(view), view.edges) if view.nodes else None,
        "timeline": _timeline(view, end),
        "timeline_bar": "batch" if view.batches else "graph step" if view.steps else "node",
        "rows_chart": _rows_chart(view, end),
        "cost_chart": _cost_chart(view, end),
        "nodes": [_node_row(n, view.kind) for n in view.nodes.values() if n.node],
        "errors": [_error_row(view, e) for e in view.errors],
        "generated": _utc(time.time() if generated_at is None else generated_at),
    }
    return _ENV.get_template("report.html.j2").render(context)


# -- the header --------------------------------------------------------------------------------------


def _facts(view: RunView, end: float) -> list[tuple[str, Any]]:
    """The header's label/value pairs; values are text, or lists of text shown one per line."""
    duration = view.seconds if view.finished_at is not None and view.seconds else end - view.started_at
    written = view.rows_written
    tokens = sum(n.tokens for n in view.nodes.values())
    facts: list[tuple[str, Any]] = [
        ("run id", view.run_id),
        ("pipeline", view.pipeline or "-"),
        ("pipeline file", view.pipeline_file or "-"),
        ("kind", view.kind),
        ("tenant", view.tenant),
        ("started", _utc(view.started_at)),
        (
            "finished",
            _utc(view.finished_at) if view.finished_at else f"- (last event {_utc(view.last_event_at)})",
        ),
        ("duration", _duration(duration)),
        ("attempts", f"{view.attempts} ({_plural(view.attempts - 1, 'resume')})"),
    ]
    if written is not None:
        facts.append(("rows written", _int(written)))
    else:
        facts.append(("graph steps", _int(len(view.steps))))
    facts += [
        ("cost", f"{_usd(view.cost_usd)} ({_int(tokens)} tokens)"),
        ("retries", _int(view.retries)),
        ("dead letters", view.dead_letters or "-"),
        ("outputs", [f"{node}: {path}" for node, path in view.outputs.items()] or "-"),
    ]
    return facts


def _run_error(error: Any) -> str | None:
    if error is None or error == "":
        return None
    if isinstance(error, dict):
        return str(error.get("message") or json.dumps(error, ensure_ascii=False))
    return str(error)


# -- the pictures ------------------------------------------------------------------------------------


def _dag_nodes(view: RunView) -> list[DagNode]:
    out = []
    for n in view.nodes.values():
        if not n.node:
            continue
        state = "error" if n.errors else "dead_letter" if n.dead_letter_rows else "ok"
        detail = _plural(n.rows, "execution") if view.kind == "graph" else f"{_int(n.rows)} rows out"
        tip = [n.node, f"op {n.op or '-'}", detail]
        if n.failed:
            tip.append(f"{_int(n.failed)} failed rows")
        if n.dead_letter_rows:
            tip.append(f"{_int(n.dead_letter_rows)} dead-letter rows")
        tip += [f"error: {e.get('code', '')} {e.get('message', '')}".rstrip() for e in n.errors]
        out.append(DagNode(n.node, n.op or "-", detail, state, "\n".join(tip)))
    return out


def _timeline(view: RunView, end: float) -> Markup | None:
    rows: dict[str, TimelineRow] = {}
    several = view.attempts > 1
    if view.batches:
        for b in view.batches:
            label = " → ".join(b.nodes) or "(no nodes)"
            tip = [f"{label}", f"split {b.split}"]
            if b.input:
                where = f"input {b.input}"
                if b.start is not None and b.end is not None:
                    where += f" bytes {_int(b.start)}–{_int(b.end)}"
                tip.append(where)
            tip += [f"{_int(b.rows)} rows", f"{b.ended - b.began:.2f} s"]
            if several:
                tip.append(f"attempt {b.attempt}")
            css = f"bar attempt-{min(b.attempt, 4)}"
            rows.setdefault(label, TimelineRow(label)).bars.append(Bar(b.began, b.ended, "\n".join(tip), css))
    elif view.steps:
        for s in view.steps:
            tip = [s.node, f"step {s.step}", f"{s.seconds:.3f} s"]
            if several:
                tip.append(f"attempt {s.attempt}")
            css = f"bar attempt-{min(s.attempt, 4)}"
            rows.setdefault(s.node, TimelineRow(s.node)).bars.append(
                Bar(s.began, s.ended, "\n".join(tip), css)
            )
    else:  # a record without batches: each node from its first work to its totals
        for n in view.nodes.values():
            if n.started_at is not None and n.finished_at is not None:
                work = f"{n.node}\n{_int(n.rows)} rows\n{n.seconds:.2f} s of work"
                rows[n.node] = TimelineRow(n.node, [Bar(n.started_at, n.finished_at, work)])
    if not rows:
        return None
    return timeline(list(rows.values()), view.started_at, end)


def _rows_chart(view: RunView, end: float) -> Markup | None:
    if not view.rows_over_time:
        return None
    points = [(t, float(v)) for t, v in view.rows_over_time]
    return line_chart(points, view.started_at, end, title="Rows written by sinks", y_label="rows", css="rows")


def _cost_chart(view: RunView, end: float) -> Markup | None:
    if not view.cost_over_time or not any(v > 0 for _, v in view.cost_over_time):
        return None
    return line_chart(
        view.cost_over_time,
        view.started_at,
        end,
        title="LLM cost",
        y_label="USD",
        money=True,
        css="cost",
    )


# -- the tables --------------------------------------------------------------------------------------


def _node_row(n: NodeView, kind: str) -> dict[str, Any]:
    rate = n.rows_per_s if kind != "graph" else None  # a graph node's "rows" count its executions
    return {
        "node": n.node,
        "op": n.op or "-",
        "rows_in": _int(n.rows_in),
        "rows": _int(n.rows),
        "failed": _int(n.failed),
        "seconds": f"{n.seconds:.2f}",
        "rate": "-" if rate is None else _int(round(rate)),
        "tokens": _int(n.tokens),
        "cost": _usd(n.cost_usd),
        "retries": _int(n.retries),
        "dead": _int(n.dead_letter_rows),
        "css": "error" if n.errors else "dead-letter" if n.dead_letter_rows else "",
    }


def _error_row(view: RunView, e: dict[str, Any]) -> dict[str, Any]:
    at = float(e.get("at") or 0.0)
    node = e.get("node") or ""
    return {
        "time": f"{_utc(at, seconds_only=True)} (+{_duration(at - view.started_at)})",
        "node": node or "-",
        "code": str(e.get("code") or "-"),
        "message": str(e.get("message") or ""),
        "location": _location(view, node, e.get("location")),
        "input": _input(e.get("input")),
        "hint": str(e.get("hint") or ""),
    }


def _location(view: RunView, node: str, location: Any) -> str:
    """``file:line:col`` of the error, else of its node in the pipeline file."""
    if isinstance(location, dict) and location.get("file"):
        parts = [str(location["file"]), *(str(location[k]) for k in ("line", "col") if location.get(k))]
        return ":".join(parts)
    if isinstance(location, str) and location:
        return location
    known = view.nodes.get(node)
    if known is not None and known.line and (known.file or view.pipeline_file):
        return f"{known.file or view.pipeline_file}:{known.line}:{known.col}"
    return "-"


def _input(found: Any) -> str:
    """``url · split N · bytes A–B · row R`` of the input an error came from."""
    if isinstance(found, str):
        return found
    if not isinstance(found, dict):
        return "-"
    parts = []
    if found.get("url"):
        parts.append(str(found["url"]))
    if found.get("split") is not None:
        parts.append(f"split {found['split']}")
    if found.get("start") is not None and found.get("end") is not None:
        parts.append(f"bytes {_int(found['start'])}–{_int(found['end'])}")
    if found.get("row") is not None:
        parts.append(f"row {found['row']}")
    return " · ".join(parts) or "-"


# -- formatting --------------------------------------------------------------------------------------


def _end(view: RunView) -> float:
    """Where the pictures' time axes end: the finish, else the last event."""
    latest = [view.finished_at or 0.0, view.last_event_at]
    latest += [b.ended for b in view.batches] + [s.ended for s in view.steps]
    return max(latest)


def _utc(ts: float, *, seconds_only: bool = False) -> str:
    when = datetime.fromtimestamp(ts, timezone.utc)
    return f"{when:%H:%M:%S}" if seconds_only else f"{when:%Y-%m-%d %H:%M:%S} UTC"


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds:.3f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def _int(value: Any) -> str:
    return f"{int(value):,}"


def _usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.4f}"


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}" + ("" if count == 1 else "s")
