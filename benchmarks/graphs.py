"""State graphs and concurrency against LangGraph and raw Ray, in one run: ``python -m benchmarks graphs``.

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
4. ``engine``: on a warm ``Engine``, submit-to-first-node latency (p50, p99) and trivial 3-node
   pipelines/s, against a trivial ``ray.remote`` task (round-trip latency of ``ray.get(f.remote())``
   one at a time, and tasks/s of a batch); then 1,000 concurrent 3-node pipelines whose nodes
   ``await asyncio.sleep(0.1)``, against LangGraph ``ainvoke`` + ``asyncio.gather``.
"""

from __future__ import annotations

import asyncio
import json
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

ROOT = Path(__file__).resolve().parents[1]
MAX_START_LOAD = 2.0
LOAD_WAIT_S = 60.0


@dataclass(frozen=True)
class Sizes:
    """How much each case does per repeat."""

    invocations: int
    """3-node invocations per repeat (without checkpoints; a third of it with SQLite)."""
    chain_invocations: int
    loop_steps: int
    latency_samples: int
    pipelines: int
    concurrent: int
    ray_tasks: int


QUICK = Sizes(invocations=1500, chain_invocations=60, loop_steps=500, latency_samples=300, pipelines=3000,
              concurrent=1000, ray_tasks=3000)  # fmt: skip
FULL = Sizes(invocations=5000, chain_invocations=200, loop_steps=500, latency_samples=1000, pipelines=10_000,
             concurrent=1000, ray_tasks=10_000)  # fmt: skip
TINY = Sizes(invocations=30, chain_invocations=3, loop_steps=20, latency_samples=20, pipelines=50,
             concurrent=20, ray_tasks=50)  # fmt: skip
"""For the smoke test."""


# --- the graphs, built the same way in both libraries ----------------------------------------------


class _S(BaseModel):
    n: int = 0
    t0: float = 0.0


class _Loop(BaseModel):
    items: Annotated[list[int], operator.add] = []


class _LS(TypedDict):
    n: int


class _LLoop(TypedDict):
    items: Annotated[list[int], operator.add]


def _bump(s: Any) -> dict[str, int]:
    return {"n": (s.n if isinstance(s, _S) else s["n"]) + 1}


async def _sleepy(s: Any) -> dict[str, int]:
    await asyncio.sleep(0.1)
    return _bump(s)


def _names(length: int) -> list[str]:
    return [f"n{i}" for i in range(length)]


def _headrace_chain(length: int, node: Callable[..., Any] = _bump) -> Any:
    from engine import END, START, Graph

    g = Graph(_S)
    names = _names(length)
    for name in names:
        g.add_node(name, node)
    for a, b in zip([START, *names], [*names, END], strict=True):
        g.add_edge(a, b)
    return g


def _langgraph_chain(length: int, node: Callable[..., Any] = _bump, checkpointer: Any = None) -> Any:
    from langgraph.graph import END, START, StateGraph

    g = StateGraph(_LS)
    names = _names(length)
    for name in names:
        g.add_node(name, node)
    for a, b in zip([START, *names], [*names, END], strict=True):
        g.add_edge(a, b)
    return g.compile(checkpointer=checkpointer)


def _spread(values: list[float], digits: int = 1) -> dict[str, Any]:
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

    hr_none = _headrace_chain(3).compile()
    hr_mem = _headrace_chain(3).compile(checkpoint="memory://")
    hr_sql = _headrace_chain(3).compile(checkpoint=f"sqlite:///{work / f'hr-{repeat}.db'}")
    lg_none = _langgraph_chain(3)
    lg_mem = _langgraph_chain(3, checkpointer=InMemorySaver())
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
        lg_sql = _langgraph_chain(3, checkpointer=SqliteSaver(conn))
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
    out: dict[str, Any] = {"unit": "invocations/s", "systems": {k: _spread(v) for k, v in rates.items()}}
    if "langgraph_sqlite" not in rates:
        out["langgraph_sqlite"] = "not measured: langgraph-checkpoint-sqlite is not installed"
    pairs = [("headrace", "langgraph"), ("headrace_memory", "langgraph_memory")]
    pairs += [("headrace_sqlite", "langgraph_sqlite")] if "langgraph_sqlite" in rates else []
    out["ratios"] = {f"{a}/{b}": _ratio(rates[a], rates[b]) for a, b in pairs}
    return out


def measure_chain(sizes: Sizes, repeats: int, length: int = 50) -> dict[str, Any]:
    """Case 2: µs per step of a ``length``-node chain without checkpoints."""
    hr = _headrace_chain(length).compile(recursion_limit=length + 10)
    lg = _langgraph_chain(length)
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
        "systems": {k: _spread(v) for k, v in per_step.items()},
        "ratios": {"langgraph/headrace": _ratio(per_step["langgraph"], per_step["headrace"])},
    }


def _final_n(final: Any) -> int:
    return int(final.n if isinstance(final, _S) else final["n"])


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


# --- case 4: the Engine against raw Ray tasks, and 1,000 concurrent runs ------------------------------


def _noop() -> int:
    return 1


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def measure_engine(sizes: Sizes, repeats: int) -> dict[str, Any]:
    """Case 4 on a warm Engine inside the current Ray session (started by the caller)."""
    import ray

    from engine import Engine

    first: dict[int, float] = {}

    def stamp(s: _S) -> dict[str, int]:
        if s.n == 0:
            first[int(s.t0 * 1e9)] = time.perf_counter()
        return {"n": s.n + 1}

    noop = ray.remote(_noop)  # one CPU each, Ray's default: at most one worker per core
    lat: dict[str, dict[str, list[float]]] = {s: {"p50": [], "p99": []} for s in ("headrace", "ray_tasks")}
    rates: dict[str, list[float]] = {"headrace": [], "ray_tasks": []}
    walls: dict[str, list[float]] = {"headrace": [], "langgraph": []}
    with Engine() as engine:
        latency_app = _headrace_chain(3, stamp).compile()
        trivial = _headrace_chain(3).compile()
        slow = _headrace_chain(3, _sleepy).compile()
        for _ in range(100):  # warm-up of both sides
            engine.submit(latency_app, {"t0": time.perf_counter()}).result()
            ray.get(noop.remote())
        ray.get([noop.remote() for _ in range(sizes.ray_tasks)])  # start the workers a batch needs
        for _ in range(repeats):
            samples = []
            for _ in range(sizes.latency_samples):
                t0 = time.perf_counter()
                engine.submit(latency_app, {"t0": t0}).result()
                samples.append(first.pop(int(t0 * 1e9)) - t0)
            _add_percentiles(lat["headrace"], samples)
            samples = []
            for _ in range(sizes.latency_samples):
                t0 = time.perf_counter()
                ray.get(noop.remote())
                samples.append(time.perf_counter() - t0)
            _add_percentiles(lat["ray_tasks"], samples)

            t = time.perf_counter()
            handles = [engine.submit(trivial, {"n": 0}) for _ in range(sizes.pipelines)]
            assert all(h.result().n == 3 for h in handles)
            rates["headrace"].append(sizes.pipelines / (time.perf_counter() - t))
            t = time.perf_counter()
            assert sum(ray.get([noop.remote() for _ in range(sizes.ray_tasks)])) == sizes.ray_tasks
            rates["ray_tasks"].append(sizes.ray_tasks / (time.perf_counter() - t))

            t = time.perf_counter()
            handles = [engine.submit(slow, {"n": 0}) for _ in range(sizes.concurrent)]
            assert all(h.result().n == 3 for h in handles)
            walls["headrace"].append(time.perf_counter() - t)
            walls["langgraph"].append(_langgraph_gather(sizes.concurrent))
    return {
        "submit_to_first_node_ms": {
            "note": "headrace: engine.submit() to the first node's start; ray_tasks: ray.get(f.remote()) "
            "round trip of a trivial task, one at a time",
            "systems": {s: {k: _spread(v, 3) for k, v in d.items()} for s, d in lat.items()},
            "samples_per_repeat": sizes.latency_samples,
        },
        "throughput_per_s": {
            "note": "headrace: trivial 3-node pipelines submitted at once, until all results are in; "
            "ray_tasks: trivial tasks submitted at once, then ray.get of all",
            "systems": {k: _spread(v) for k, v in rates.items()},
            "counts": {"headrace": sizes.pipelines, "ray_tasks": sizes.ray_tasks},
        },
        "concurrent_sleepy_wall_s": {
            "note": f"{sizes.concurrent} 3-node runs, each node awaits asyncio.sleep(0.1); headrace: "
            "Engine.submit each then wait for every result; langgraph: asyncio.gather of ainvoke",
            "systems": {k: _spread(v, 3) for k, v in walls.items()},
            "ideal_s": 0.3,
            "runs": sizes.concurrent,
        },
    }


def _add_percentiles(into: dict[str, list[float]], seconds: list[float]) -> None:
    seconds.sort()
    into["p50"].append(statistics.median(seconds) * 1e3)
    into["p99"].append(_percentile(seconds, 0.99) * 1e3)


def _langgraph_gather(count: int) -> float:
    app = _langgraph_chain(3, _sleepy)

    async def go() -> float:
        t = time.perf_counter()
        finals = await asyncio.gather(*(app.ainvoke({"n": 0}) for _ in range(count)))
        assert all(f["n"] == 3 for f in finals)
        return time.perf_counter() - t

    return asyncio.run(go())


# --- the family ---------------------------------------------------------------------------------------


def run_cases(sizes: Sizes, repeats: int) -> dict[str, Any]:
    """Every case; Ray is started for case 4 unless a session is already up."""
    from benchmarks.harness import ray_running

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
        t = time.perf_counter()
        with ray_running():
            results["engine"] = measure_engine(sizes, repeats)
        print(f"  engine: {time.perf_counter() - t:.1f} s", flush=True)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 7's cases 3 and 4 with the measured figure and met / not met / not measured."""
    inv = results["invocations"]
    med = {k: v["median"] for k, v in inv["systems"].items()}
    eng = results["engine"]
    p50 = eng["submit_to_first_node_ms"]["systems"]["headrace"]["p50"]["median"]
    rate = eng["throughput_per_s"]["systems"]["headrace"]["median"]
    wall = eng["concurrent_sleepy_wall_s"]["systems"]["headrace"]["median"]
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
    rows += [
        ("50-node chain ≤ 50 µs/step", f"{step:g} µs", step <= 50),
        ("submit-to-first-node p50 ≤ 10 ms", f"{p50:g} ms", p50 <= 10),
        ("≥ 2,000 trivial pipelines/s", f"{rate:,.0f}/s", rate >= 2000),
        ("1,000 concurrent 3×100 ms pipelines ≤ 0.6 s", f"{wall:g} s", wall <= 0.6),
    ]
    status = {True: "met", False: "not met", None: "not measured"}
    return [{"target": t, "measured": m, "status": status[ok]} for t, m, ok in rows]


def wait_for_quiet() -> dict[str, Any]:
    """If the 1-minute load average is above :data:`MAX_START_LOAD`, wait up to a minute for it to fall."""
    readings = [round(os.getloadavg()[0], 2)]
    began = time.monotonic()
    while readings[-1] > MAX_START_LOAD and time.monotonic() - began < LOAD_WAIT_S:
        time.sleep(10)
        readings.append(round(os.getloadavg()[0], 2))
    return {"load_1min": readings, "waited_s": round(time.monotonic() - began), "quiet": readings[-1] <= 2}


def run_family(quick: bool, results_dir: Path) -> dict[str, Any]:
    """Run the family; write ``<date>-graphs[-quick].json``, ``latest-graphs.md`` and ``graphs.png``."""
    from benchmarks.harness import MemorySampler, machine_info, shmem_bytes

    began = time.perf_counter()
    gate = wait_for_quiet()
    machine = machine_info()
    machine["load_gate"] = gate
    sizes, repeats = (QUICK, 3) if quick else (FULL, 5)
    print(f"state graphs and concurrency: {repeats} repeats", flush=True)
    with MemorySampler(shmem_bytes(), interval=0.5) as sampler:
        results = run_cases(sizes, repeats)
    name = "graphs" + ("-quick" if quick else "")
    doc: dict[str, Any] = {
        "family": "state graphs and concurrency",
        "name": name,
        "mode": "quick" if quick else "full",
        "command": "python -m benchmarks graphs" + (" --quick" if quick else ""),
        "machine": machine,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "others_cpu_share": round(sampler.peaks.other_cpu_share, 3),
        "tree_cpu_s": round(sampler.peaks.tree_cpu_s, 1),
        "sizes": asdict(sizes),
        "repeats": repeats,
        "method": __doc__,
        "results": results,
    }
    doc["targets"] = evaluate_targets(results)
    doc["wall_seconds"] = round(time.perf_counter() - began, 1)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{str(machine['date'])[:10]}-{name}.json"
    resolved = path.resolve()
    doc["results_file"] = str(resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    from benchmarks.graphs_report import render_graphs_markdown, render_graphs_plot

    (results_dir / "latest-graphs.md").write_text(render_graphs_markdown(doc))
    plot = render_graphs_plot(doc, results_dir)
    print(f"results: {path} (and {results_dir / 'latest-graphs.md'}); plot: {plot}")
    for t in doc["targets"]:
        print(f"  [{t['status']}] {t['target']}: {t['measured']}")
    print(f"wall time {doc['wall_seconds']:.0f} s")
    return doc
