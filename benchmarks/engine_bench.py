"""Engine overhead on a warm engine: submit-to-first-node latency, trivial-pipeline throughput, and
1,000 concurrent pipelines whose nodes await 100 ms. ``python -m benchmarks.engine_bench [--json]``.

A quick measurement for developers; the benchmark suite proper lives in ``benchmarks/``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

from pydantic import BaseModel

from engine import END, START, Engine, Graph


class S(BaseModel):
    n: int = 0
    t0: float = 0.0


def chain(node: object) -> Graph:
    g = Graph(S)
    for name in ("a", "b", "c"):
        g.add_node(name, node)  # type: ignore[arg-type]
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    g.add_edge("c", END)
    return g


def main() -> dict[str, float]:
    first: dict[int, float] = {}

    def stamp(s: S) -> dict[str, int]:
        if s.n == 0:
            first[int(s.t0 * 1e9)] = time.perf_counter()
        return {"n": s.n + 1}

    async def sleepy(s: S) -> dict[str, int]:
        await asyncio.sleep(0.1)
        return {"n": s.n + 1}

    out: dict[str, float] = {}
    with Engine() as engine:
        latency_app = chain(stamp).compile()
        for _ in range(200):  # warm-up
            engine.submit(latency_app, {"t0": time.perf_counter()}).result()
        lat = []
        for _ in range(1000):
            t0 = time.perf_counter()
            engine.submit(latency_app, {"t0": t0}).result()
            lat.append(first[int(t0 * 1e9)] - t0)
        lat.sort()
        out["submit_to_first_node_p50_ms"] = statistics.median(lat) * 1e3
        out["submit_to_first_node_p99_ms"] = lat[int(len(lat) * 0.99)] * 1e3

        trivial = chain(lambda s: {"n": s.n + 1}).compile()
        n = 10_000
        t = time.perf_counter()
        handles = [engine.submit(trivial, {"n": 0}) for _ in range(n)]
        assert all(h.result().n == 3 for h in handles)
        out["trivial_3node_per_s"] = n / (time.perf_counter() - t)

        slow = chain(sleepy).compile()
        t = time.perf_counter()
        handles = [engine.submit(slow, {"n": 0}) for _ in range(1000)]
        assert all(h.result().n == 3 for h in handles)
        out["concurrent_1000_x_3x100ms_wall_s"] = time.perf_counter() - t
    return out


if __name__ == "__main__":
    figures = main()
    if "--json" in sys.argv:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:40s} {value:10.3f}")
