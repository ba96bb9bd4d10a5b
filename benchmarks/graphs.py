"""The "state graphs" family: identical graphs in headrace and LangGraph, in one process, in one run.

Cases (headrace next to its baseline, same process, same run; median of the repeats, min and max kept):

1. ``invocations``: a 3-node chain invoked one run after another (``app.invoke`` / LangGraph
   ``graph.invoke``), without checkpoints, with in-memory checkpoints (``memory://`` / ``InMemorySaver``)
   and with SQLite checkpoints (``sqlite:///`` / ``SqliteSaver`` when ``langgraph-checkpoint-sqlite``
   is installed). Every run is a new run id / thread id, so no run reads another's checkpoints.
2. ``chain_50``: µs per step of a 50-node chain without checkpoints (wall per invocation / 50).
3. ``checkpoint_bytes``: a one-node loop run for 500 steps, each appending one int to a list. headrace:
   the SQLite file after the store is closed (plus any ``-wal`` file left). LangGraph: its SQLite file
   when the saver is installed, else the bytes of the serialised values ``InMemorySaver`` keeps
   (checkpoints, metadata, channel blobs, pending writes; the serde's output, keys and Python
   overhead not counted).

The Engine against raw Ray tasks and 1,000 concurrent runs are the "concurrency" family
(``benchmarks.concurrency``), which builds its graphs with the functions here.
"""

from __future__ import annotations

import asyncio
import operator
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel
from typing_extensions import TypedDict

from benchmarks.harness import Mode, RunOptions

MAX_START_LOAD = 2.0
LOAD_WAIT_S = 60.0


@dataclass(frozen=True)
class Sizes:
    """How much each case does per repeat."""

    invocations: int
    """3-node invocations per repeat (without checkpoints; a third of it with SQLite)."""
    chain_invocations: int
    loop_steps: int


QUICK = Sizes(invocations=1500, chain_invocations=60, loop_steps=500)
FULL = Sizes(invocations=5000, chain_invocations=200, loop_steps=500)
TINY = Sizes(invocations=30, chain_invocations=3, loop_steps=20)
"""For the smoke test."""

SCALES: dict[Mode, tuple[Sizes, int]] = {"full": (FULL, 5), "quick": (QUICK, 3), "tiny": (TINY, 1)}
"""The sizes and repeats of each mode."""


# --- the graphs, built the same way in both libraries ----------------------------------------------


class ChainState(BaseModel):
    n: int = 0
    t0: float = 0.0


class _Loop(BaseModel):
    items: Annotated[list[int], operator.add] = []


class _LS(TypedDict):
    n: int


class _LLoop(TypedDict):
    items: Annotated[list[int], operator.add]


def _bump(s: Any) -> dict[str, int]:
    return {"n": (s.n if isinstance(s, ChainState) else s["n"]) + 1}


async def sleepy_node(s: Any) -> dict[str, int]:
    await asyncio.sleep(0.1)
    return _bump(s)


def _names(length: int) -> list[str]:
    return [f"n{i}" for i in range(length)]


def headrace_chain(length: int, node: Callable[..., Any] = _bump) -> Any:
    from engine import END, START, Graph

    g = Graph(ChainState)
    names = _names(length)
    for name in names:
        g.add_node(name, node)
    for a, b in zip([START, *names], [*names, END], strict=True):
        g.add_edge(a, b)
    return g


def langgraph_chain(length: int, node: Callable[..., Any] = _bump, checkpointer: Any = None) -> Any:
    from langgraph.graph import END, START, StateGraph

    g = StateGraph(_LS)
    names = _names(length)
    for name in names:
        g.add_node(name, node)
    for a, b in zip([START, *names], [*names, END], strict=True):
        g.add_edge(a, b)
    return g.compile(checkpointer=checkpointer)


def spread(values: list[float], digits: int = 1) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "values": [round(v, digits) for v in values],
    }


def _sqlite_saver_available() -> bool:
    try:
        import langgraph.checkpoint.sqlite  # noqa: F401
    except ImportError:
        return False
    return True


# --- case 1 and 2: invocations/s and per-step overhead ----------------------------------------------


def _rate(invoke: Callable[[int], Any], count: int) -> float:
    assert _final_n(invoke(-1)) == 3  # warm-up: first-call imports and caches
    t = time.perf_counter()
    for i in range(count):
        invoke(i)
    return count / (time.perf_counter() - t)


def _invocation_systems(
    work: Path, repeat: int
) -> dict[str, tuple[Callable[[int], Any], Callable[[], None]]]:
    """``name -> (invoke(i), close())`` for each system of case 1, fresh for each repeat."""
    from langgraph.checkpoint.memory import InMemorySaver

    hr_none = headrace_chain(3).compile()
    hr_mem = headrace_chain(3).compile(checkpoint="memory://")
    hr_sql = headrace_chain(3).compile(checkpoint=f"sqlite:///{work / f'hr-{repeat}.db'}")
    lg_none = langgraph_chain(3)
    lg_mem = langgraph_chain(3, checkpointer=InMemorySaver())
    tag = f"r{repeat}-"
    systems: dict[str, tuple[Callable[[int], Any], Callable[[], None]]] = {
        "headrace": (lambda i: hr_none.invoke({"n": 0}), hr_none.close),
        "langgraph": (lambda i: lg_none.invoke({"n": 0}), lambda: None),
        "headrace_memory": (lambda i: hr_mem.invoke({"n": 0}, run_id=f"{tag}{i}"), hr_mem.close),
        "langgraph_memory": (
            lambda i: lg_mem.invoke({"n": 0}, {"configurable": {"thread_id": f"{tag}{i}"}}),
            lambda: None,
        ),
        "headrace_sqlite": (lambda i: hr_sql.invoke({"n": 0}, run_id=f"{tag}{i}"), hr_sql.close),
    }
    if _sqlite_saver_available():
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(work / f"lg-{repeat}.db", check_same_thread=False)
        lg_sql = langgraph_chain(3, checkpointer=SqliteSaver(conn))
        systems["langgraph_sqlite"] = (
            lambda i: lg_sql.invoke({"n": 0}, {"configurable": {"thread_id": f"{tag}{i}"}}),
            conn.close,
        )
    return systems


def measure_invocations(sizes: Sizes, repeats: int, work: Path) -> dict[str, Any]:
    """Case 1: invocations/s of a 3-node chain, each system interleaved within every repeat."""
    rates: dict[str, list[float]] = {}
    for repeat in range(repeats):
        for name, (invoke, close) in _invocation_systems(work, repeat).items():
            count = sizes.invocations if "sqlite" not in name else max(1, sizes.invocations // 3)
            try:
                rates.setdefault(name, []).append(_rate(invoke, count))
            finally:
                close()
    out: dict[str, Any] = {"unit": "invocations/s", "systems": {k: spread(v) for k, v in rates.items()}}
    if "langgraph_sqlite" not in rates:
        out["langgraph_sqlite"] = "not measured: langgraph-checkpoint-sqlite is not installed"
    pairs = [("headrace", "langgraph"), ("headrace_memory", "langgraph_memory")]
    pairs += [("headrace_sqlite", "langgraph_sqlite")] if "langgraph_sqlite" in rates else []
    out["ratios"] = {f"{a}/{b}": _ratio(rates[a], rates[b]) for a, b in pairs}
    return out


def measure_chain(sizes: Sizes, repeats: int, length: int = 50) -> dict[str, Any]:
    """Case 2: µs per step of a ``length``-node chain without checkpoints."""
    hr = headrace_chain(length).compile(recursion_limit=length + 10)
    lg = langgraph_chain(length)
    config = {"recursion_limit": length + 10}
    per_step: dict[str, list[float]] = {"headrace": [], "langgraph": []}
    try:
        for _ in range(repeats):
            for name, invoke in (
                ("headrace", lambda: hr.invoke({"n": 0})),
                ("langgraph", lambda: lg.invoke({"n": 0}, config)),
            ):
                assert _final_n(invoke()) == length
                t = time.perf_counter()
                for _ in range(sizes.chain_invocations):
                    invoke()
                wall = time.perf_counter() - t
                per_step[name].append(wall / (sizes.chain_invocations * length) * 1e6)
    finally:
        hr.close()
    return {
        "unit": "µs/step",
        "nodes": length,
        "systems": {k: spread(v) for k, v in per_step.items()},
        "ratios": {"langgraph/headrace": _ratio(per_step["langgraph"], per_step["headrace"])},
    }


def _final_n(final: Any) -> int:
    return int(final.n if isinstance(final, ChainState) else final["n"])


def _ratio(a: list[float], b: list[float]) -> float:
    return round(statistics.median(a) / statistics.median(b), 2)


# --- case 3: checkpoint bytes ----------------------------------------------------------------------


def _loop_node(s: Any) -> dict[str, list[int]]:
    items = s.items if isinstance(s, _Loop) else s["items"]
    return {"items": [len(items)]}


def _serialised_bytes(value: Any) -> int:
    """Bytes of every ``bytes`` value inside ``value`` (the serde's output), containers walked."""
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, dict):
        return sum(_serialised_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_serialised_bytes(v) for v in value)
    return 0


def measure_checkpoint_bytes(sizes: Sizes, work: Path) -> dict[str, Any]:
    """Case 3: checkpoint bytes after a ``loop_steps``-step loop appending one item per step."""
    from langgraph.graph import END, START, StateGraph

    from engine import END as H_END
    from engine import START as H_START
    from engine import Graph

    steps = sizes.loop_steps
    path = work / "loop-headrace.db"
    g = Graph(_Loop)
    g.add_node("step", _loop_node)
    g.add_edge(H_START, "step")
    g.add_conditional_edges("step", lambda s: "step" if len(s.items) < steps else H_END)
    app = g.compile(checkpoint=f"sqlite:///{path}", recursion_limit=steps + 10)
    try:
        assert len(app.invoke({"items": []}, run_id="loop").items) == steps
    finally:
        app.close()
    files = [p for p in work.iterdir() if p.name.startswith(path.name)]
    headrace = {"bytes": sum(p.stat().st_size for p in files), "files": sorted(p.name for p in files)}

    lg: Any = StateGraph(_LLoop)
    lg.add_node("step", _loop_node)
    lg.add_edge(START, "step")
    lg.add_conditional_edges("step", lambda s: "step" if len(s["items"]) < steps else END)
    config: dict[str, Any] = {"configurable": {"thread_id": "loop"}, "recursion_limit": steps + 10}
    if _sqlite_saver_available():
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        lg_path = work / "loop-langgraph.db"
        conn = sqlite3.connect(lg_path, check_same_thread=False)
        assert len(lg.compile(checkpointer=SqliteSaver(conn)).invoke({"items": []}, config)["items"]) == steps
        conn.close()
        lg_files = [p for p in work.iterdir() if p.name.startswith(lg_path.name)]
        langgraph: dict[str, Any] = {"bytes": sum(p.stat().st_size for p in lg_files)}
        langgraph["how"] = "SqliteSaver file bytes"
    else:
        from langgraph.checkpoint.memory import InMemorySaver

        saver = InMemorySaver()
        assert len(lg.compile(checkpointer=saver).invoke({"items": []}, config)["items"]) == steps
        langgraph = {
            "bytes": sum(_serialised_bytes(x) for x in (saver.storage, saver.writes, saver.blobs)),
            "how": "InMemorySaver: bytes of the serialised checkpoints, metadata, channel blobs and "
            "pending writes it holds (langgraph-checkpoint-sqlite is not installed)",
            "checkpoints": sum(len(ns) for t in saver.storage.values() for ns in t.values()),
        }
    return {
        "unit": "bytes",
        "steps": steps,
        "systems": {"headrace": headrace, "langgraph": langgraph},
        "ratios": {"langgraph/headrace": round(langgraph["bytes"] / headrace["bytes"], 2)},
    }


# --- the family ---------------------------------------------------------------------------------------


def run_cases(sizes: Sizes, repeats: int) -> dict[str, Any]:
    """Every case, in this process (no Ray)."""
    work = Path(tempfile.mkdtemp(prefix="headrace-graphs-"))
    try:
        results: dict[str, Any] = {}
        for name, fn in (
            ("invocations", lambda: measure_invocations(sizes, repeats, work)),
            ("chain_50", lambda: measure_chain(sizes, repeats)),
            ("checkpoint_bytes", lambda: measure_checkpoint_bytes(sizes, work)),
        ):
            t = time.perf_counter()
            results[name] = fn()
            print(f"  {name}: {time.perf_counter() - t:.1f} s", flush=True)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 7's state-graph case with the measured figure and met / not met / not measured."""
    inv = results["invocations"]
    med = {k: v["median"] for k, v in inv["systems"].items()}
    step = results["chain_50"]["systems"]["headrace"]["median"]
    rows: list[tuple[str, str, bool | None]] = [
        ("3-node invocations/s ≥ 2× LangGraph (no checkpoints)", f"{inv['ratios']['headrace/langgraph']}×",
         inv["ratios"]["headrace/langgraph"] >= 2),
        ("with memory checkpoints ≥ 2× LangGraph InMemorySaver",
         f"{inv['ratios']['headrace_memory/langgraph_memory']}×",
         inv["ratios"]["headrace_memory/langgraph_memory"] >= 2),
        ("with SQLite checkpoints ≥ 1,000 invocations/s", f"{med['headrace_sqlite']:,.0f}/s",
         med["headrace_sqlite"] >= 1000),
    ]  # fmt: skip
    if "headrace_sqlite/langgraph_sqlite" in inv["ratios"]:
        x = inv["ratios"]["headrace_sqlite/langgraph_sqlite"]
        rows.append(("with SQLite checkpoints ≥ 2× LangGraph SqliteSaver", f"{x}×", x >= 2))
    else:
        rows.append(("with SQLite checkpoints ≥ 2× LangGraph SqliteSaver", "-", None))
    rows.append(("50-node chain ≤ 50 µs/step", f"{step:g} µs", step <= 50))
    return judged(rows)


def judged(rows: list[tuple[str, str, bool | None]]) -> list[dict[str, Any]]:
    """``(target, measured, met)`` rows as results-file targets (``met`` None: not measured)."""
    status = {True: "met", False: "not met", None: "not measured"}
    return [{"target": t, "source": "issue", "measured": m, "status": status[ok]} for t, m, ok in rows]


def wait_for_quiet() -> dict[str, Any]:
    """If the 1-minute load average is above :data:`MAX_START_LOAD`, wait up to a minute for it to fall."""
    readings = [round(os.getloadavg()[0], 2)]
    began = time.monotonic()
    while readings[-1] > MAX_START_LOAD and time.monotonic() - began < LOAD_WAIT_S:
        time.sleep(10)
        readings.append(round(os.getloadavg()[0], 2))
    return {"load_1min": readings, "waited_s": round(time.monotonic() - began), "quiet": readings[-1] <= 2}


def measure_family(
    options: RunOptions, family: str, name: str, method: str, measure: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """The results document of a family measured in this process (this one or ``concurrency``): the
    machine and its quiet-machine check, the CPU other processes took while ``measure`` ran, and its
    results. ``targets`` and ``wall_seconds`` are the caller's to add."""
    from benchmarks.harness import MemorySampler, machine_info, shmem_bytes

    gate = options.gate if options.gate is not None else wait_for_quiet()
    machine = machine_info()
    machine["load_gate"] = gate
    with MemorySampler(shmem_bytes(), interval=0.5) as sampler:
        results = measure()
    return {
        "family": family,
        "name": name + ("" if options.mode == "full" else f"-{options.mode}"),
        "mode": options.mode,
        "command": options.command,
        "machine": machine,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "others_cpu_share": round(sampler.peaks.other_cpu_share, 3),
        "tree_cpu_s": round(sampler.peaks.tree_cpu_s, 1),
        "method": method,
        "results": results,
    }


def write_family(
    doc: dict[str, Any],
    results_dir: Path,
    report: str,
    render_markdown: Callable[[dict[str, Any]], str],
    render_plot: Callable[[dict[str, Any], Path], Path],
) -> None:
    """Write the document's ``<date>-<name>.json``, its markdown as ``report`` and its plot, and print
    the targets."""
    from benchmarks.harness import print_targets, write_json

    path = write_json(doc, doc["name"], results_dir)
    (results_dir / report).write_text(render_markdown(doc))
    plot = render_plot(doc, results_dir)
    print(f"results: {path} (and {results_dir / report}); plot: {plot}")
    print_targets(doc)


def run_family(options: RunOptions) -> dict[str, Any]:
    """Run the family in the options' mode; write ``<date>-graphs[-mode].json``, ``latest-graphs.md``
    and ``graphs.png``; returns the results document."""
    from benchmarks.graphs_report import render_graphs_markdown, render_graphs_plot

    began = time.perf_counter()
    sizes, repeats = SCALES[options.mode]
    print(f"state graphs: {repeats} repeats", flush=True)
    doc = measure_family(options, "state graphs", "graphs", __doc__ or "", lambda: run_cases(sizes, repeats))
    doc |= {"sizes": asdict(sizes), "repeats": repeats, "targets": evaluate_targets(doc["results"])}
    doc["wall_seconds"] = round(time.perf_counter() - began, 1)
    write_family(doc, options.results_dir, "latest-graphs.md", render_graphs_markdown, render_graphs_plot)
    return doc
