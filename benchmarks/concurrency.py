"""The "concurrency" family: the Engine against raw Ray tasks, and many concurrent runs against LangGraph.

One case, ``engine``, in one Ray session (headrace next to its baseline, same run; median of the
repeats, min and max kept): on a warm ``Engine``, submit-to-first-node latency (p50, p99) and trivial
3-node pipelines/s, against a trivial ``ray.remote`` task (round-trip latency of ``ray.get(f.remote())``
one at a time, and tasks/s of a batch); then 1,000 concurrent 3-node pipelines whose nodes
``await asyncio.sleep(0.1)``, against LangGraph ``ainvoke`` + ``asyncio.gather``. The graphs are built
as in the state-graphs family (``benchmarks.graphs``).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.graphs import (
    ChainState,
    headrace_chain,
    judged,
    langgraph_chain,
    measure_family,
    sleepy_node,
    spread,
    write_family,
)
from benchmarks.harness import Mode, RunOptions


@dataclass(frozen=True)
class Sizes:
    """How much the case does per repeat."""

    latency_samples: int
    """Submissions timed one at a time, for each of headrace and the Ray task."""
    pipelines: int
    """Trivial 3-node pipelines submitted at once."""
    concurrent: int
    """3-node runs awaiting 100 ms per node, submitted at once."""
    ray_tasks: int
    """Trivial Ray tasks submitted at once."""


QUICK = Sizes(latency_samples=300, pipelines=3000, concurrent=1000, ray_tasks=3000)
FULL = Sizes(latency_samples=1000, pipelines=10_000, concurrent=1000, ray_tasks=10_000)
TINY = Sizes(latency_samples=20, pipelines=50, concurrent=20, ray_tasks=50)
"""For the smoke test."""

SCALES: dict[Mode, tuple[Sizes, int]] = {"full": (FULL, 5), "quick": (QUICK, 3), "tiny": (TINY, 1)}
"""The sizes and repeats of each mode."""


def _noop() -> int:
    return 1


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def measure_engine(sizes: Sizes, repeats: int) -> dict[str, Any]:
    """Every figure of the family on one warm Engine inside the current Ray session (started by the
    caller): latency and pipelines/s against a trivial Ray task, then the concurrent sleepy runs."""
    import ray

    from engine import Engine

    first: dict[int, float] = {}

    def stamp(s: ChainState) -> dict[str, int]:
        if s.n == 0:
            first[int(s.t0 * 1e9)] = time.perf_counter()
        return {"n": s.n + 1}

    noop = ray.remote(_noop)  # one CPU each, Ray's default: at most one worker per core
    lat: dict[str, dict[str, list[float]]] = {s: {"p50": [], "p99": []} for s in ("headrace", "ray_tasks")}
    rates: dict[str, list[float]] = {"headrace": [], "ray_tasks": []}
    walls: dict[str, list[float]] = {"headrace": [], "langgraph": []}
    with Engine() as engine:
        latency_app = headrace_chain(3, stamp).compile()
        trivial = headrace_chain(3).compile()
        slow = headrace_chain(3, sleepy_node).compile()
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
            "systems": {s: {k: spread(v, 3) for k, v in d.items()} for s, d in lat.items()},
            "samples_per_repeat": sizes.latency_samples,
        },
        "throughput_per_s": {
            "note": "headrace: trivial 3-node pipelines submitted at once, until all results are in; "
            "ray_tasks: trivial tasks submitted at once, then ray.get of all",
            "systems": {k: spread(v) for k, v in rates.items()},
            "counts": {"headrace": sizes.pipelines, "ray_tasks": sizes.ray_tasks},
        },
        "concurrent_sleepy_wall_s": {
            "note": f"{sizes.concurrent} 3-node runs, each node awaits asyncio.sleep(0.1); headrace: "
            "Engine.submit each then wait for every result; langgraph: asyncio.gather of ainvoke",
            "systems": {k: spread(v, 3) for k, v in walls.items()},
            "ideal_s": 0.3,
            "runs": sizes.concurrent,
        },
    }


def _add_percentiles(into: dict[str, list[float]], seconds: list[float]) -> None:
    seconds.sort()
    into["p50"].append(statistics.median(seconds) * 1e3)
    into["p99"].append(_percentile(seconds, 0.99) * 1e3)


def _langgraph_gather(count: int) -> float:
    app = langgraph_chain(3, sleepy_node)

    async def go() -> float:
        t = time.perf_counter()
        finals = await asyncio.gather(*(app.ainvoke({"n": 0}) for _ in range(count)))
        assert all(f["n"] == 3 for f in finals)
        return time.perf_counter() - t

    return asyncio.run(go())


# --- the family ---------------------------------------------------------------------------------------


def run_cases(sizes: Sizes, repeats: int) -> dict[str, Any]:
    """The ``engine`` case; Ray is started for it unless a session is already up."""
    from benchmarks.harness import ray_running

    t = time.perf_counter()
    with ray_running():
        results = {"engine": measure_engine(sizes, repeats)}
    print(f"  engine: {time.perf_counter() - t:.1f} s", flush=True)
    return results


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 7's concurrency case with the measured figure and met / not met."""
    eng = results["engine"]
    p50 = eng["submit_to_first_node_ms"]["systems"]["headrace"]["p50"]["median"]
    rate = eng["throughput_per_s"]["systems"]["headrace"]["median"]
    wall = eng["concurrent_sleepy_wall_s"]["systems"]["headrace"]["median"]
    runs = eng["concurrent_sleepy_wall_s"]["runs"]
    return judged(
        [
            ("submit-to-first-node p50 ≤ 10 ms", f"{p50:g} ms", p50 <= 10),
            ("≥ 2,000 trivial pipelines/s", f"{rate:,.0f}/s", rate >= 2000),
            (f"{runs:,} concurrent 3×100 ms pipelines ≤ 0.6 s", f"{wall:g} s", wall <= 0.6),
        ]
    )


def run_family(options: RunOptions) -> dict[str, Any]:
    """Run the family in the options' mode; write ``<date>-concurrency[-mode].json``,
    ``latest-concurrency.md`` and ``concurrency.png``; returns the results document."""
    from benchmarks.graphs_report import render_concurrency_markdown, render_concurrency_plot

    began = time.perf_counter()
    sizes, repeats = SCALES[options.mode]
    print(f"concurrency: {repeats} repeats", flush=True)
    doc = measure_family(
        options, "concurrency", "concurrency", __doc__ or "", lambda: run_cases(sizes, repeats)
    )
    doc |= {"sizes": asdict(sizes), "repeats": repeats, "targets": evaluate_targets(doc["results"])}
    doc["wall_seconds"] = round(time.perf_counter() - began, 1)
    write_family(
        doc,
        options.results_dir,
        "latest-concurrency.md",
        render_concurrency_markdown,
        render_concurrency_plot,
    )
    return doc
