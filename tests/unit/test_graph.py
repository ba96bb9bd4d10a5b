"""The state-graph API in one process (no Ray): what a user of invoke, stream, resume and fork sees."""

from __future__ import annotations

import asyncio
import itertools
import operator
from collections import Counter
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from engine import END, START, Command, Graph, Send
from engine.graph import (
    GraphRecursionError,
    InvalidGraph,
    InvalidUpdate,
    interrupt,
    once,
)
from engine.graph.checkpoints import MemoryStore, RunNotFound
from engine.spec.models import RetryPolicy


class S(BaseModel):
    n: int = 0
    log: Annotated[list[str], operator.add] = []


class Rich(BaseModel):
    n: Annotated[int, "add"] = 0
    seen: Annotated[list[str], "append"] = []
    meta: Annotated[dict[str, int], "merge"] = {}
    best: Annotated[int, max] = 0
    label: str = ""
    positive: int = Field(0, ge=0)
    error: str = ""


def chain(*names: str) -> Graph[S]:
    """START → names[0] → ... → END; each node adds 1 to n and logs its name."""
    g = Graph(S)
    for name in names:
        g.add_node(name, lambda s, name=name: {"n": s.n + 1, "log": [name]})
    g.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        g.add_edge(a, b)
    return g


# -- state and reducers ---------------------------------------------------------------------------


def test_invoke_returns_the_final_state_with_reducers_applied() -> None:
    final = chain("a", "b", "c").compile().invoke({"n": 10})
    assert isinstance(final, S)
    assert final == S(n=13, log=["a", "b", "c"])


def test_named_and_callable_reducers() -> None:
    g = Graph(Rich)
    g.add_node("one", lambda s: {"n": 2, "seen": "one", "meta": {"a": 1}, "best": 5})
    g.add_node("two", lambda s: {"n": 3, "seen": ["two", "2"], "meta": {"b": 2}, "best": 3, "label": "x"})
    g.add_edge(START, "one").add_edge("one", "two")
    final = g.compile().invoke({"n": 1, "meta": {"z": 0}})
    assert final.n == 6  # add
    assert final.seen == ["one", "two", "2"]  # append: an item or a list
    assert final.meta == {"z": 0, "a": 1, "b": 2}  # merge
    assert final.best == 5  # max(old, new)
    assert final.label == "x"  # replace


def test_an_unknown_key_names_the_node_and_the_key() -> None:
    g = Graph(S)
    g.add_node("writer", lambda s: {"nope": 1})
    g.add_edge(START, "writer")
    with pytest.raises(InvalidUpdate, match=r"node 'writer' returned key 'nope'") as err:
        g.compile().invoke({})
    assert (err.value.node, err.value.key) == ("writer", "nope")


def test_a_value_of_the_wrong_type_or_out_of_bounds_is_refused() -> None:
    g = Graph(Rich)
    g.add_node("neg", lambda s: {"positive": -1})
    g.add_edge(START, "neg")
    with pytest.raises(InvalidUpdate, match=r"'neg' returned positive=-1"):
        g.compile().invoke({})
    g2 = Graph(S)
    g2.add_node("bad", lambda s: {"n": "many"})
    g2.add_edge(START, "bad")
    with pytest.raises(InvalidUpdate, match="field 'n'"):
        g2.compile().invoke({})


def test_a_node_returning_something_else_than_a_dict_is_refused() -> None:
    g = Graph(S)
    g.add_node("odd", lambda s: 42)
    g.add_edge(START, "odd")
    with pytest.raises(
        InvalidUpdate, match="return a dict of state updates, a state model instance, a Command"
    ):
        g.compile().invoke({})


def test_compile_refuses_unknown_nodes_and_a_missing_entry() -> None:
    g = Graph(S)
    g.add_node("a", lambda s: None)
    g.add_edge("a", "ghost")
    with pytest.raises(InvalidGraph, match="no entry"):
        g.compile()
    g.add_edge(START, "a")
    with pytest.raises(InvalidGraph, match="unknown node 'ghost'"):
        g.compile()
    with pytest.raises(InvalidGraph, match="reserved"):
        Graph(S).add_node(END, lambda s: None)
    with pytest.raises(InvalidGraph, match="names reducer 'sum'"):

        class Bad(BaseModel):
            x: Annotated[int, "sum"] = 0

        Graph(Bad)


# -- routing and loops ----------------------------------------------------------------------------


def test_conditional_edges_route_with_a_path_map_and_end() -> None:
    g = Graph(S)
    g.add_node("classify", lambda s: None)
    g.add_node("small", lambda s: {"log": ["small"]})
    g.add_node("big", lambda s: {"log": ["big"]})
    g.add_edge(START, "classify")
    g.add_conditional_edges("classify", lambda s: s.n > 5, {True: "big", False: "small"})
    app = g.compile()
    assert app.invoke({"n": 1}).log == ["small"]
    assert app.invoke({"n": 9}).log == ["big"]


def test_a_loop_stops_at_its_exit() -> None:
    g = Graph(S)
    g.add_node("step", lambda s: {"n": s.n + 1, "log": [str(s.n)]})
    g.add_edge(START, "step")
    g.add_conditional_edges("step", lambda s: "step" if s.n < 5 else END)
    assert g.compile().invoke({}).log == ["0", "1", "2", "3", "4"]


def test_the_recursion_limit_names_the_loop() -> None:
    g = Graph(S)
    g.add_node("setup", lambda s: None)
    g.add_node("draft", lambda s: {"n": s.n + 1})
    g.add_node("review", lambda s: None)
    g.add_edge(START, "setup").add_edge("setup", "draft").add_edge("draft", "review")
    g.add_edge("review", "draft")
    app = g.compile(recursion_limit=20)
    with pytest.raises(GraphRecursionError, match="recursion_limit=20") as err:
        app.invoke({})
    assert sorted(err.value.loop) == ["draft", "review"]
    assert "draft" in str(err.value) and "review" in str(err.value)
    with pytest.raises(GraphRecursionError, match="recursion_limit=7"):
        app.invoke({}, recursion_limit=7)


# -- parallel branches ----------------------------------------------------------------------------


def test_parallel_sync_branches_overlap_in_threads_and_apply_in_a_fixed_order() -> None:
    # supersteps: both branches run in one step, sync ones in threads (the barrier needs both at
    # once, so it would time out if they ran one after the other); their writes apply by node name
    import threading

    barrier = threading.Barrier(2, timeout=5)

    def branch(name: str) -> Any:
        def fn(s: S) -> dict[str, Any]:
            barrier.wait()
            if name == "b1":
                import time

                time.sleep(0.05)  # finishes last, yet its write applies first
            return {"log": [name]}

        return fn

    g = Graph(S)
    g.add_node("fork", lambda s: {"log": ["fork"]})
    g.add_node("b2", branch("b2"))
    g.add_node("b1", branch("b1"))
    g.add_node("after", lambda s: {"log": ["after"]})
    g.add_edge(START, "fork").add_edge("fork", ["b2", "b1"]).add_edge("b1", "after").add_edge("b2", "after")
    assert g.compile().invoke({}).log == ["fork", "b1", "b2", "after"]  # `after` once: one step


def test_a_join_edge_waits_for_every_branch_and_runs_once() -> None:
    g = Graph(S)
    for name in ("a", "b", "c", "d"):
        g.add_node(name, lambda s, name=name: {"log": [name]})
    g.add_edge(START, "a").add_edge("a", ["b", "c"]).add_edge(["b", "c"], "d")
    log = g.compile().invoke({}).log
    assert log[0] == "a" and sorted(log[1:3]) == ["b", "c"] and log[3:] == ["d"]


def test_nodes_see_the_state_when_they_start() -> None:
    seen: dict[str, list[str]] = {}

    async def look(s: S) -> None:
        await asyncio.sleep(0.01)
        seen["look"] = list(s.log)

    g = Graph(S)
    g.add_node("start", lambda s: {"log": ["start"]})
    g.add_node("look", look)
    g.add_node("write", lambda s: {"log": ["write"]})
    g.add_edge(START, "start").add_edge("start", ["look", "write"])
    g.compile().invoke({})
    assert seen["look"] == ["start"]  # not the later write by its sibling


# -- streaming ------------------------------------------------------------------------------------


def test_stream_modes() -> None:
    app = chain("a", "b").compile()
    values = list(app.stream({"n": 0}, mode="values"))
    assert [v.n for v in values] == [0, 1, 2]
    assert all(isinstance(v, S) for v in values)
    assert list(app.stream({"n": 0}, mode="updates")) == [
        {"a": {"n": 1, "log": ["a"]}},
        {"b": {"n": 2, "log": ["b"]}},
    ]
    events = list(app.stream({"n": 0}, mode="events"))
    assert [(e["event"], e.get("node")) for e in events] == [
        ("node_started", "a"),
        ("node_finished", "a"),
        ("node_started", "b"),
        ("node_finished", "b"),
        ("run_finished", None),
    ]
    both = list(app.stream({"n": 0}, mode=["updates", "values"]))
    assert [m for m, _ in both] == ["values", "updates", "values", "updates", "values"]


def test_async_entry_points_and_sync_calls_inside_a_running_loop() -> None:
    app = chain("a", "b").compile()

    async def main() -> tuple[S, list[int], S]:
        final = await app.ainvoke({"n": 1})
        ns = [v.n async for v in app.astream({"n": 1})]
        nested = app.invoke({"n": 5})  # a sync call from inside a loop runs on a helper thread
        return final, ns, nested

    final, ns, nested = asyncio.run(main())
    assert final.n == 3 and ns == [1, 2, 3] and nested.n == 7


# -- Send and Command -----------------------------------------------------------------------------


class MapState(BaseModel):
    items: list[str] = []
    item: str = ""
    results: Annotated[list[str], operator.add] = []


def test_send_fans_out_with_a_payload_per_task() -> None:
    g = Graph(MapState)
    g.add_node("plan", lambda s: {"items": ["x", "y", "z"]})
    g.add_node("work", lambda s: {"results": [s.item.upper()]})
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", lambda s: [Send("work", {"item": i}) for i in s.items])
    final = g.compile().invoke({})
    assert sorted(final.results) == ["X", "Y", "Z"]
    assert final.item == ""  # a payload is the task's input, not a state update


def test_command_updates_and_goes_to() -> None:
    g = Graph(S)
    g.add_node("decide", lambda s: Command(update={"log": ["decide"]}, goto="yes" if s.n else "no"))
    g.add_node("yes", lambda s: {"log": ["yes"]})
    g.add_node("no", lambda s: Command(update={"log": ["no"]}, goto=END))
    g.add_edge(START, "decide")
    app = g.compile()
    assert app.invoke({"n": 1}).log == ["decide", "yes"]
    assert app.invoke({"n": 0}).log == ["decide", "no"]
    g.add_node("wild", lambda s: Command(goto="nowhere"))
    g.add_edge("yes", "wild")
    with pytest.raises(Exception, match="'nowhere', which is not a node"):
        g.compile().invoke({"n": 1})


# -- errors ---------------------------------------------------------------------------------------


def test_retry_then_success() -> None:
    calls = Counter[str]()

    def flaky(s: S) -> dict[str, Any]:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionError("blip")
        return {"log": ["ok"]}

    g = Graph(S)
    g.add_node("flaky", flaky, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0, jitter=False))
    g.add_edge(START, "flaky")
    assert g.compile().invoke({}).log == ["ok"]
    assert calls["flaky"] == 3


def test_a_timeout_goes_to_the_error_edge_with_the_error_in_state_and_meta() -> None:
    async def stuck(s: Rich) -> None:
        await asyncio.sleep(30)

    g = Graph(Rich)
    g.add_node("stuck", stuck, timeout_s=0.05, on_error="fallback", error_key="error")
    g.add_node("after", lambda s: {"label": "not reached"})
    g.add_node("fallback", lambda s: {"label": "fell back"})
    g.add_edge(START, "stuck").add_edge("stuck", "after")
    app = g.compile(checkpoint=MemoryStore())
    final = app.invoke({}, run_id="t1")
    assert final.label == "fell back"
    assert "TimeoutError" in final.error and "timeout_s=0.05" in final.error
    failed = [h for h in app.history("t1") if h.node == "stuck"]
    assert failed[0].meta["error"]["type"] == "TimeoutError"


def test_an_unhandled_error_fails_the_run_naming_the_node_and_keeps_checkpoints() -> None:
    def boom(s: S) -> None:
        raise ValueError("bad input")

    g = chain("a")
    g.add_node("boom", boom)
    g.add_edge("a", "boom")
    store = MemoryStore()
    app = g.compile(checkpoint=store)
    with pytest.raises(ValueError, match=r"bad input") as err:  # the node's own exception
        app.invoke({}, run_id="f1")
    assert (err.value.node, err.value.step) == ("boom", 2)  # type: ignore[attr-defined]
    assert "raised by node 'boom' at step 2 of graph run 'f1'" in err.value.__notes__
    run = store.get_run("f1")
    assert run is not None and run.status == "failed" and run.meta["node"] == "boom"
    assert [h.node for h in app.history("f1")] == ["__input__", "a"]


# -- interrupts -----------------------------------------------------------------------------------


def counting_graph(calls: Counter[str], *names: str) -> Graph[S]:
    g = Graph(S)
    for name in names:

        def fn(s: S, name: str = name) -> dict[str, Any]:
            calls[name] += 1
            return {"log": [name]}

        g.add_node(name, fn)
    g.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        g.add_edge(a, b)
    return g


def test_interrupt_before_and_after_then_resume() -> None:
    calls = Counter[str]()
    app = counting_graph(calls, "a", "b", "c").compile(
        checkpoint=MemoryStore(), interrupt_before=["b"], interrupt_after=["c"]
    )
    assert app.invoke({}, run_id="i1").log == ["a"]
    state = app.get_state("i1")
    assert state.status == "interrupted" and state.next == ("b",)
    assert [(i["node"], i["when"]) for i in state.interrupts] == [("b", "before")]
    assert isinstance(state.interrupts[0]["id"], str) and len(state.interrupts[0]["id"]) == 16
    assert app.resume("i1").log == ["a", "b", "c"]
    assert app.get_state("i1").status == "interrupted"  # after c
    assert app.resume("i1").log == ["a", "b", "c"]
    assert app.get_state("i1").status == "succeeded"
    assert calls == {"a": 1, "b": 1, "c": 1}


def test_interrupt_inside_a_node_resumes_with_a_value() -> None:
    calls = Counter[str]()

    def ask(s: S) -> dict[str, Any]:
        calls["ask"] += 1
        answer = interrupt({"question": "approve?"})
        return {"log": [f"answer={answer}"]}

    g = counting_graph(calls, "prepare")
    g.add_node("ask", ask).add_edge("prepare", "ask")
    app = g.compile(checkpoint=MemoryStore())
    paused = app.invoke({}, run_id="h1")
    assert paused.log == ["prepare"]
    state = app.get_state("h1")
    assert state.interrupts[0]["value"] == {"question": "approve?"} and state.next == ("ask",)
    final = app.resume("h1", value="yes")
    assert final.log == ["prepare", "answer=yes"]
    assert calls == {"prepare": 1, "ask": 2}  # the asking node re-runs from its start; prepare does not


def test_side_effects_in_once_before_an_interrupt_happen_once_even_in_a_new_process(tmp_path: Any) -> None:
    sent: list[str] = []

    def send_email(to: str) -> str:
        sent.append(to)
        return f"message-{len(sent)}"

    def ask(s: S) -> dict[str, Any]:
        receipt = once("notify", send_email, "reviewer@example.com")  # before the pause: must not repeat
        answer = interrupt({"question": "approve?", "receipt": receipt})
        return {"log": [f"{receipt}:{answer}"]}

    def build() -> Any:
        g = Graph(S)
        g.add_node("ask", ask).add_edge(START, "ask").add_edge("ask", END)
        return g.compile(checkpoint=f"sqlite:///{tmp_path}/runs.db")

    build().invoke({}, run_id="o1")
    assert sent == ["reviewer@example.com"]
    final = build().resume("o1", value="yes")  # a fresh app on the same store, as a new process would be
    assert final.log == ["message-1:yes"]
    assert sent == ["reviewer@example.com"]  # the node re-ran from its start, the email went once


def test_interrupt_lets_running_branches_finish() -> None:
    calls = Counter[str]()

    async def side(s: S) -> dict[str, Any]:
        await asyncio.sleep(0.02)
        calls["side"] += 1
        return {"log": ["side"]}

    def ask(s: S) -> dict[str, Any]:
        return {"log": [f"ask={interrupt('?')}"]}

    g = Graph(S)
    g.add_node("start", lambda s: None)
    g.add_node("side", side)
    g.add_node("ask", ask)
    g.add_edge(START, "start").add_edge("start", ["ask", "side"])
    app = g.compile(checkpoint=MemoryStore())
    # supersteps: side's write is kept as a pending write, applied when the step completes
    assert app.invoke({}, run_id="p1").log == []
    assert app.resume("p1", value=1).log == ["ask=1", "side"]  # in node-name order
    assert calls["side"] == 1  # not re-run on resume


# -- checkpoints, resume, history, fork -----------------------------------------------------------


def test_history_rebuilds_each_state_from_deltas() -> None:
    store = MemoryStore()
    app = chain("a", "b", "c").compile(checkpoint=store)
    app.invoke({"n": 0}, run_id="h")
    history = app.history("h")
    assert [(h.step, h.node, h.state.n) for h in history] == [
        (0, "__input__", 0),
        (1, "a", 1),
        (2, "b", 2),
        (3, "c", 3),
    ]
    assert history[2].state.log == ["a", "b"] and history[1].next == ("b",)
    assert [r.delta for r in store.steps("h")][1:] == [
        {"n": 1, "log": ["a"]},
        {"n": 2, "log": ["b"]},
        {"n": 3, "log": ["c"]},
    ]


def test_checkpoints_hold_deltas_so_storage_grows_linearly() -> None:
    g = Graph(S)
    g.add_node("step", lambda s: {"n": s.n + 1, "log": ["x" * 20]})
    g.add_edge(START, "step")
    g.add_conditional_edges("step", lambda s: "step" if s.n < 300 else END)
    store = MemoryStore()
    g.compile(checkpoint=store, recursion_limit=1000).invoke({}, run_id="long")
    steps = store.steps("long")
    assert len(steps) == 301
    assert all(len(r.delta["log"]) == 1 for r in steps[1:])


class Crash(BaseException):
    """A process dying mid-run: not an Exception, so nothing handles it."""


def crashing_graph(calls: Counter[str], crash: dict[str, bool]) -> Graph[S]:
    async def slow(s: S) -> dict[str, Any]:
        calls["slow"] += 1
        await asyncio.sleep(0.05)  # lets the fast branch finish (and checkpoint) first
        if crash["on"]:
            raise Crash
        return {"log": ["slow"]}

    g = counting_graph(calls, "a", "fast", "after_fast")
    g.add_node("slow", slow)
    g.add_node("end", lambda s: {"log": ["end"]})
    g.add_edge("a", "slow").add_edge(["after_fast", "slow"], "end")
    return g


def test_resume_after_a_crash_does_not_rerun_finished_nodes() -> None:
    calls = Counter[str]()
    crash = {"on": True}
    url = "memory://test-graph-crash"
    with pytest.raises(Crash):
        crashing_graph(calls, crash).compile(checkpoint=url).invoke({}, run_id="c1")
    assert calls == {"a": 1, "fast": 1, "slow": 1}  # supersteps: after_fast waits for slow's step
    crash["on"] = False
    fresh = crashing_graph(calls, crash).compile(checkpoint=url)  # a new app on the same store
    assert fresh.get_state("c1").status == "running"
    final = fresh.resume("c1")
    assert final.log[:1] == ["a"] and final.log[-1] == "end"
    assert sorted(final.log) == ["a", "after_fast", "end", "fast", "slow"]
    assert calls == {"a": 1, "fast": 1, "after_fast": 1, "slow": 2}  # fast's pending write was kept


def test_fork_gives_a_new_run_whose_history_diverges() -> None:
    app = chain("a", "b", "c").compile(checkpoint=MemoryStore())
    app.invoke({"n": 0}, run_id="base")
    forked = app.fork("base", step=1, update={"n": 100, "log": ["edit"]})
    final = app.resume(forked)
    assert final == S(n=102, log=["a", "edit", "b", "c"])
    assert app.invoke({"n": 0}, run_id="again").n == 3
    base = [(h.node, h.state.n) for h in app.history("base")]
    mine = [(h.node, h.state.n) for h in app.history(forked)]
    assert base[:2] == mine[:2]
    assert mine[2:] == [("__update__", 100), ("b", 101), ("c", 102)]
    assert base[2:] == [("b", 2), ("c", 3)]
    replay = app.fork("base", step=2)
    assert app.resume(replay).n == 3


def test_checkpoint_operations_need_a_store_and_a_known_run() -> None:
    app = chain("a").compile()
    with pytest.raises(Exception, match="needs checkpoints"):
        app.history("x")
    with pytest.raises(RunNotFound):
        chain("a").compile(checkpoint="memory://").resume("missing")
    stored = chain("a").compile(checkpoint="memory://")
    stored.invoke({}, run_id="dup")
    assert stored.invoke({"n": 5}, run_id="dup") == S(n=6, log=["a", "a"])  # a run id is a thread


def test_stream_a_resumed_run() -> None:
    app = chain("a", "b").compile(checkpoint=MemoryStore(), interrupt_before=["b"])
    app.invoke({}, run_id="s1")
    assert list(app.stream(None, run_id="s1", resume=True, mode="updates")) == [{"b": {"n": 2, "log": ["b"]}}]


def test_a_sync_node_with_a_timeout_runs_in_a_thread_and_times_out() -> None:
    def blocking(s: S) -> None:
        import time

        time.sleep(0.5)

    g = Graph(S)
    g.add_node("blocking", blocking, timeout_s=0.05)
    g.add_edge(START, "blocking")
    with pytest.raises(TimeoutError, match=r"took longer than timeout_s=0\.05"):
        g.compile().invoke({})


def test_a_send_payload_is_checked_against_the_state() -> None:
    g = Graph(MapState)
    g.add_node("plan", lambda s: None)
    g.add_node("work", lambda s: None)
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", lambda s: [Send("work", {"itm": "x"})])
    with pytest.raises(InvalidUpdate, match=r"Send\('work', ...\) from 'plan' carries key 'itm'"):
        g.compile().invoke({})


KILLED_RUN = """
import operator, os, signal, sys
from typing import Annotated
from pydantic import BaseModel
from engine import START, Graph

class S(BaseModel):
    log: Annotated[list[str], operator.add] = []

def node(name):
    def fn(s):
        with open(os.environ["CALLS"], "a") as f:
            f.write(name + "\\n")
        if name == "c" and os.environ.get("KILL"):
            os.kill(os.getpid(), signal.SIGKILL)
        return {"log": [name]}
    return fn

g = Graph(S)
for n in "abcd":
    g.add_node(n, node(n))
g.add_edge(START, "a").add_edge("a", "b").add_edge("b", "c").add_edge("c", "d")
app = g.compile(checkpoint=sys.argv[1])
if sys.argv[2] == "run":
    app.invoke({}, run_id="k1")
else:
    print(",".join(app.resume("k1").log))
"""


def test_a_run_killed_with_sigkill_resumes_in_another_process(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    calls = tmp_path / "calls.txt"
    url = f"sqlite:///{tmp_path}/runs.db"
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root, "CALLS": str(calls)}
    killed = subprocess.run([sys.executable, str(script), url, "run"], env={**env, "KILL": "1"}, check=False)
    assert killed.returncode == -9
    resumed = subprocess.run(
        [sys.executable, str(script), url, "resume"], env=env, capture_output=True, text=True, check=True
    )
    assert resumed.stdout.strip() == "a,b,c,d"
    assert calls.read_text().split() == ["a", "b", "c", "c", "d"]  # only the node killed mid-way re-ran


def test_a_failing_route_fails_the_run_naming_its_node() -> None:
    def route(s: S) -> str:
        raise LookupError("no such label")

    g = chain("a")
    g.add_conditional_edges("a", route)
    store = MemoryStore()
    with pytest.raises(LookupError, match="no such label"):
        g.compile(checkpoint=store).invoke({}, run_id="r")
    run = store.get_run("r")
    assert run is not None and run.status == "failed"


def test_a_cancelled_run_is_marked_and_stays_resumable() -> None:
    async def wait(s: S) -> None:
        await asyncio.sleep(30)

    g = chain("a")
    g.add_node("wait", wait).add_edge("a", "wait")
    store = MemoryStore()
    app = g.compile(checkpoint=store)

    async def main() -> None:
        task = asyncio.ensure_future(app.ainvoke({}, run_id="cx"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    run = store.get_run("cx")
    assert run is not None and run.status == "cancelled"
    assert app.get_state("cx").next == ("wait",)
