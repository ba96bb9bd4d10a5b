"""The index of the benchmark results: per family, the results file, its date and machine, and every
target next to what was measured, met or not (``latest-summary.md`` in the results folder).

A session of ``python -m benchmarks run`` records the results file of each family it ran in
``latest-summary.json`` (family -> file name in the same folder) and renders the markdown from the files
recorded there. A session run with ``--only`` so replaces the rows of the families it ran and keeps the
others' last results, each row saying which run it came from.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUMMARY_MD = "latest-summary.md"
SUMMARY_JSON = "latest-summary.json"
_STATUSES = ("met", "not met", "not measured")


@dataclass(frozen=True)
class SessionRecord:
    """What one session did: its command, when, how long, and each family's outcome."""

    command: str
    date: str
    """ISO date and time (UTC) at the start of the session."""
    wall_seconds: float
    ran: Mapping[str, Mapping[str, Any]]
    """Family name -> the results document it wrote in this session."""
    failed: Mapping[str, str]
    """Family name -> why its run failed in this session."""


@dataclass(frozen=True)
class Entry:
    """One family's row of the index."""

    name: str
    report: str
    """The family's markdown report, in the results folder."""
    file: str | None
    """Its results file, in the results folder (None: no session has written one)."""
    doc: Mapping[str, Any] | None
    """The results document (None: no file, or the file is missing)."""
    this_session: bool
    error: str | None = None
    """Why this session's run of the family failed."""


def write_summary(results_dir: Path, session: SessionRecord, reports: Mapping[str, str]) -> Path:
    """Record the files of the families ``session`` ran in ``latest-summary.json`` and render
    ``latest-summary.md`` from every recorded file; ``reports`` (family -> its markdown report) gives the
    families in index order. Returns the markdown's path."""
    pointers_path = results_dir / SUMMARY_JSON
    pointers: dict[str, str] = {}
    if pointers_path.exists():
        pointers = dict(json.loads(pointers_path.read_text()).get("families", {}))
    for name, ran in session.ran.items():
        pointers[name] = Path(str(ran["results_file"])).name
    results_dir.mkdir(parents=True, exist_ok=True)
    pointers_path.write_text(json.dumps({"families": pointers}, indent=2) + "\n")
    entries = []
    for name, report in reports.items():
        file = pointers.get(name)
        doc: Mapping[str, Any] | None = session.ran.get(name)
        if doc is None and file is not None and (results_dir / file).exists():
            doc = json.loads((results_dir / file).read_text())
        entries.append(Entry(name, report, file, doc, name in session.ran, session.failed.get(name)))
    path = results_dir / SUMMARY_MD
    path.write_text(render_summary(entries, session))
    return path


def render_summary(entries: Sequence[Entry], session: SessionRecord) -> str:
    """The index as markdown: one row per family, then each family's targets."""
    ran = ", ".join(f"`{n}`" for n in session.ran) or "no family"
    lines = [
        "# Benchmarks: the latest results of each family",
        "",
        f"Written by `{session.command}` on {session.date[:10]} (wall time {session.wall_seconds:.0f} s), "
        f"which ran {ran}"
        + (f" and failed to run {', '.join(f'`{n}`' for n in session.failed)}" if session.failed else "")
        + ". Every figure below comes from the results file named with its family, in this folder; a "
        "family this session did not run is shown from the last results file a session wrote for it. "
        "Each family measures its baselines in its own run, and every ratio divides figures of one run.",
        "",
        "| family | results file | report | mode | date | machine | targets |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        if e.doc is None:
            why = f"failed in this session: {e.error}" if e.error else _no_file(e)
            lines.append(f"| `{e.name}` | {why} | | | | | |")
            continue
        m = e.doc["machine"]
        lines.append(
            f"| {e.doc['family']} (`{e.name}`) | `{e.doc['results_file']}` | [{e.report}]({e.report}) | "
            f"{e.doc['mode']} | {m['date'][:10]} | {_machine(m)} | {_tally(e.doc['targets'])} |"
        )
    for e in entries:
        if e.doc is not None:
            lines += ["", *_family_section(e)]
    lines.append("")
    return "\n".join(lines)


def _family_section(e: Entry) -> list[str]:
    doc = e.doc
    assert doc is not None
    m = doc["machine"]
    when = "this session" if e.this_session else "an earlier session"
    lines = [f"## {doc['family']} (`{e.name}`)", ""]
    if e.error:
        lines += [f"**This session's run failed** ({e.error}); shown: the last results file.", ""]
    load = m.get("load_average_at_start")
    lines += [
        f"`{doc['command']}` on {m['date']} ({when}, {doc['mode']} mode, wall time "
        f"{doc.get('wall_seconds', 0):.0f} s); results file `{doc['results_file']}`; "
        f"report [{e.report}]({e.report}).",
        "",
        f"Machine: {_machine(m)}, {m.get('os', '?')}, host {m.get('hostname', '?')}"
        + (f"; load average at start {', '.join(str(x) for x in load)}" if load else "")
        + ".",
        "",
    ]
    if not doc["targets"]:
        return [*lines, "No target applies to the cases of this run."]
    lines += ["| target | source | measured | status |", "| --- | --- | --- | --- |"]
    for t in doc["targets"]:
        lines.append(f"| {t['target']} | {t.get('source', '')} | {t['measured']} | **{t['status']}** |")
    return lines


def _machine(m: Mapping[str, Any]) -> str:
    return f"{m['cores']} cores ({m['cpu_model']}), {m['memory_gb']:g} GB RAM"


def _tally(targets: Sequence[Mapping[str, Any]]) -> str:
    counts = Counter(str(t["status"]) for t in targets)
    return ", ".join(f"{counts[s]} {s}" for s in _STATUSES if counts[s]) or "none in this run"


def _no_file(e: Entry) -> str:
    if e.file is None:
        return "not run yet"
    return f"results file `{e.file}` is missing"
