"""One benchmark session: the families, what ``--only`` selects, and running them one after another.

``python -m benchmarks run`` runs every family of :data:`FAMILIES` in order, each with its own
same-run baselines and its own results files, then writes the index of all families
(``benchmarks.summary``). The first family checks that the machine is quiet itself (its load-average
gate); before each later one the session checks instead that processes outside it take at most 20% of
the CPU, since the load average still counts the family that just ran.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.harness import RunOptions
from benchmarks.streaming import CASES as STREAMING_CASES
from benchmarks.summary import SessionRecord, write_summary

FamilyRun = Callable[[RunOptions, tuple[str, ...]], dict[str, Any]]
"""Runs a family (the selected cases; empty: all), writes its results files, returns its document."""


@dataclass(frozen=True)
class Family:
    """A benchmark family as a session runs it."""

    name: str
    """Its ``--only`` name."""
    title: str
    report: str
    """The markdown report it writes in the results folder."""
    cases: tuple[str, ...]
    """Names ``--only`` also accepts, each selecting one case of this family."""
    run: FamilyRun


def _streaming(options: RunOptions, cases: tuple[str, ...]) -> dict[str, Any]:
    from benchmarks.streaming import run_family

    return run_family(options, cases)


def _llm(options: RunOptions, cases: tuple[str, ...]) -> dict[str, Any]:
    from benchmarks.llm import run_family

    return run_family(options)


def _graphs(options: RunOptions, cases: tuple[str, ...]) -> dict[str, Any]:
    from benchmarks.graphs import run_family

    return run_family(options)


def _concurrency(options: RunOptions, cases: tuple[str, ...]) -> dict[str, Any]:
    from benchmarks.concurrency import run_family

    return run_family(options)


def _many(options: RunOptions, cases: tuple[str, ...]) -> dict[str, Any]:
    from benchmarks.many import run_family

    return run_family(options, cases)


def _many_cases() -> tuple[str, ...]:
    from benchmarks.many import CASES

    return tuple(CASES)


def _estimate(options: RunOptions, cases: tuple[str, ...]) -> dict[str, Any]:
    from benchmarks.estimate import run_family

    return run_family(options)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("streaming", "streaming transform", "latest.md", tuple(STREAMING_CASES), _streaming),
        Family("llm", "LLM steps", "latest-llm.md", (), _llm),
        Family("graphs", "state graphs vs LangGraph", "latest-graphs.md", (), _graphs),
        Family(
            "concurrency",
            "the Engine vs raw Ray tasks and LangGraph",
            "latest-concurrency.md",
            (),
            _concurrency,
        ),
        Family("many", "many small pipelines at once", "latest-many.md", _many_cases(), _many),
        Family("estimate", "`headrace estimate` against the bill", "latest-estimate.md", (), _estimate),
    )
}
"""Every family, in the order a session runs them (the order of issue 7)."""

ONLY_NAMES: tuple[str, ...] = (*FAMILIES, *(c for f in FAMILIES.values() for c in f.cases))
"""What ``--only`` accepts: a family's name or one of its cases."""


def select(only: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Family name -> the cases to run (empty: all), in session order, for the ``--only`` names given
    (none: every family, every case). A family's name wins over cases of it also given."""
    if not only:
        return {name: () for name in FAMILIES}
    chosen: dict[str, set[str] | None] = {}
    for name in only:
        if name in FAMILIES:
            chosen[name] = None
            continue
        family = next((f for f in FAMILIES.values() if name in f.cases), None)
        if family is None:
            raise ValueError(f"no benchmark family or case {name!r}; known: {', '.join(ONLY_NAMES)}")
        cases = chosen.setdefault(family.name, set())
        if cases is not None:
            cases.add(name)
    selection: dict[str, tuple[str, ...]] = {}
    for name, family in FAMILIES.items():
        if name in chosen:
            picked = chosen[name]
            selection[name] = () if picked is None else tuple(c for c in family.cases if c in picked)
    return selection


@dataclass(frozen=True)
class SessionResult:
    """What a session wrote."""

    docs: dict[str, dict[str, Any]]
    """Family name -> its results document."""
    failed: dict[str, str]
    """Family name -> why it failed (the other families still ran)."""
    summary: Path
    wall_seconds: float


def run_session(options: RunOptions, only: Sequence[str] = ()) -> SessionResult:
    """Run the families ``only`` selects (none: all) one after another, then write the index.

    A family that raises is reported and the session goes on with the next one, so a late failure
    does not lose the results already measured.
    """
    selection = select(only)
    began = time.perf_counter()
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    docs: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for i, (name, cases) in enumerate(selection.items()):
        family = FAMILIES[name]
        print(f"\n=== {family.title} (`{name}`) ===", flush=True)
        try:
            gate = _gate(options, first=i == 0)
            docs[name] = family.run(replace(options, gate=gate), cases)
        except Exception as exc:  # the other families' results still count
            traceback.print_exc()
            failed[name] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: FAILED ({failed[name]})", flush=True)
    wall = round(time.perf_counter() - began, 1)
    record = SessionRecord(options.command, date, wall, docs, failed)
    summary = write_summary(options.results_dir, record, {n: f.report for n, f in FAMILIES.items()})
    print(f"\nindex: {summary}; session wall time {wall:.0f} s", flush=True)
    for name, error in failed.items():
        print(f"  {name} FAILED: {error}", flush=True)
    return SessionResult(docs, failed, summary, wall)


def _gate(options: RunOptions, first: bool) -> dict[str, Any] | None:
    """The quiet-machine check before a family, or None when the family makes its own (the first)."""
    if options.mode == "tiny":
        return {"skipped": "tiny run: no quiet-machine check"}
    if first:
        return None
    from benchmarks.llm import wait_for_others

    return {"after_earlier_family": True, **wait_for_others()}
