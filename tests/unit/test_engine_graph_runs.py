"""State-graph runs on an ``Engine`` without Ray (``start_ray=False``): a graph app runs on the engine's
event loop, so neither its status nor a burst of submissions needs a cluster."""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

from pydantic import BaseModel

from engine import END, START, Engine, Graph
from engine.graph.checkpoints import MemoryStore


class S(BaseModel):
    n: int = 0


def _chain(*names: str) -> Graph[S]:
    g = Graph(S)
    for name in names:
        g.add_node(name, lambda s: {"n": s.n + 1})
    g.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        g.add_edge(a, b)
    g.add_edge(names[-1], END)
    return g


def test_an_interrupted_graph_run_ends_interrupted_with_its_interrupts() -> None:
    # the engine reads the pause from the run's last state (its __interrupt__), not from events
    app = _chain("a", "b").compile(checkpoint=MemoryStore(), interrupt_before=["b"])
    with Engine(start_ray=False) as engine:
        paused = engine.submit(app, {"n": 0}, run_id="r1")
        state = paused.result(timeout=30)
        assert paused.status() == "interrupted"
        assert state.n == 1 and [i["node"] for i in state.__interrupt__] == ["b"]
        assert [v.n for v in paused.stream()] == [0, 1, 1]  # start, after a, the paused state
        resumed = engine.submit(app, None, resume="r1")
        assert resumed.result(timeout=30).n == 2 and resumed.status() == "succeeded"


def test_a_burst_of_submissions_wakes_the_loop_once_and_every_run_finishes() -> None:
    # each wake-up of the engine's loop from another thread is a write to its pipe, after which the
    # loop thread takes the GIL from the submitter: a burst is handed over in one
    async def slow(s: S) -> dict[str, int]:
        await asyncio.sleep(0.01)
        return {"n": s.n + 1}

    g = Graph(S)
    g.add_node("a", slow)
    g.add_node("b", slow)
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", END)
    app = g.compile()
    with Engine(start_ray=False) as engine:
        loop = engine._loop
        assert loop is not None
        wakes: list[object] = []
        wake = loop.call_soon_threadsafe

        def counted(callback: Any, *args: Any, **kwargs: Any) -> Any:
            wakes.append(callback)
            return wake(callback, *args, **kwargs)

        held, release = threading.Event(), threading.Event()
        wake(lambda: (held.set(), release.wait(30)))  # the loop is busy while the burst arrives
        assert held.wait(30)
        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        try:
            handles = [engine.submit(app, {"n": i}) for i in range(200)]
        finally:
            release.set()
        assert len(wakes) == 1  # the code before woke it 200 times
        assert [h.result(timeout=60).n for h in handles] == [i + 2 for i in range(200)]
        assert all(h.status() == "succeeded" for h in handles)
