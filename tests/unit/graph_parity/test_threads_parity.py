"""LangGraph's own tests of threads, interrupts, time travel, retries and subgraphs, translated to
headrace's API with upstream's inputs and expected values (see test_pregel_parity.py for the rules).

Upstream's ``graph.invoke(x, {"configurable": {"thread_id": t}})`` is ``app.invoke(x, run_id=t)``;
``Command(resume=v, update=u, goto=g)`` is ``app.resume(t, value=v, update=u, goto=g)``;
``invoke(None, thread)`` is ``invoke(None, run_id=t)``; interrupts are dicts with ``id``/``value``.
"""

from __future__ import annotations

import asyncio
import operator
from collections import Counter
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from engine import END, START, Graph, Send
from engine.graph import GraphError, RetryPolicy, default_retry_on, interrupt
from engine.graph.checkpoints import MemoryStore
from engine.graph.retry import should_retry


class Key(BaseModel):
    my_key: Annotated[str, operator.add] = ""


def test_interrupt_multiple() -> None:
    """test_pregel.py::test_interrupt_multiple (resume_style null and map)"""
    for style in ("null", "map"):

        def node(s: Key) -> dict[str, Any]:
            answer = interrupt({"value": 1})
            answer2 = interrupt({"value": 2})
            return {"my_key": answer + " " + answer2}

        g = Graph(Key)
        g.add_node("node", node).add_edge(START, "node")
        app = g.compile(checkpoint=MemoryStore())
        first = list(app.stream({"my_key": "DE"}, run_id="1", mode="updates"))
        assert [[i["value"] for i in c["__interrupt__"]] for c in first] == [[{"value": 1}]]
        iid = first[0]["__interrupt__"][0]["id"]
        value: Any = "answer 1" if style == "null" else {iid: "answer 1"}
        second = list(app.stream(None, run_id="1", resume=True, value=value, mode="updates"))
        assert [[i["value"] for i in c["__interrupt__"]] for c in second] == [[{"value": 2}]]
        # upstream passes update={"my_key": " foofoo "} with the first resume
        iid2 = second[0]["__interrupt__"][0]["id"]
        assert iid2 != iid
        app.update_state("1", {"my_key": " foofoo "})
        value = "answer 2" if style == "null" else {iid2: "answer 2"}
        values = list(app.stream(None, run_id="1", resume=True, value=value, mode="values"))
        assert [v.my_key for v in values] == ["DE foofoo ", "DE foofoo answer 1 answer 2"]


def test_interrupt_loop() -> None:
    """test_pregel.py::test_interrupt_loop"""

    class State(BaseModel):
        age: int = 0
        other: str = ""

    def ask_age(s: State) -> dict[str, Any]:
        question = "How old are you?"
        value = None
        for _ in range(10):
            value = interrupt(question)
            if not value.isdigit() or int(value) < 18:
                question, value = "invalid response", None
            else:
                break
        return {"age": int(value)}

    g = Graph(State)
    g.add_node("node", ask_age).add_edge(START, "node")
    app = g.compile(checkpoint=MemoryStore())

    def asked(chunks: list[Any]) -> list[Any]:
        return [i["value"] for c in chunks for i in c.get("__interrupt__", [])]

    assert asked(list(app.stream({"other": ""}, run_id="1", mode="updates"))) == ["How old are you?"]
    assert asked(list(app.stream(None, run_id="1", resume=True, value="13", mode="updates"))) == [
        "invalid response"
    ]
    assert asked(list(app.stream(None, run_id="1", resume=True, value="15", mode="updates"))) == [
        "invalid response"
    ]
    assert list(app.stream(None, run_id="1", resume=True, value="19", mode="updates")) == [
        {"node": {"age": 19}}
    ]


class Texts(BaseModel):
    text_1: str = ""
    text_2: str = ""


def parallel_humans() -> Any:
    def human_node_1(s: Texts) -> dict[str, Any]:
        return {"text_1": interrupt({"text_to_revise": s.text_1})}

    def human_node_2(s: Texts) -> dict[str, Any]:
        return {"text_2": interrupt({"text_to_revise": s.text_2})}

    g = Graph(Texts)
    g.add_node("human_node_1", human_node_1).add_node("human_node_2", human_node_2)
    g.add_edge(START, "human_node_1").add_edge(START, "human_node_2")
    return g.compile(checkpoint=MemoryStore())


def test_null_resume_disallowed_with_multiple_interrupts() -> None:
    """test_pregel.py::test_null_resume_disallowed_with_multiple_interrupts"""
    app = parallel_humans()
    paused = app.invoke({"text_1": "original text 1", "text_2": "original text 2"}, run_id="t")
    pending = app.get_state("t").interrupts
    assert [i["id"] for i in paused.__interrupt__] == [i["id"] for i in pending]  # also in invoke's result
    resume_map = {i["id"]: f"resume for prompt: {i['value']['text_to_revise']}" for i in pending}
    with pytest.raises(GraphError, match="one value cannot answer them all"):
        app.resume("t", value="singular resume")
    assert app.resume("t", value=resume_map).model_dump() == {
        "text_1": "resume for prompt: original text 1",
        "text_2": "resume for prompt: original text 2",
    }


def test_interrupt_ids_are_distinct_and_stable() -> None:
    """test_time_travel.py::test_replay_interrupt_stable_across_replays (ids are stable per task)"""
    app = parallel_humans()
    app.invoke({"text_1": "a", "text_2": "b"}, run_id="t")
    ids = [i["id"] for i in app.get_state("t").interrupts]
    assert len(set(ids)) == 2
    first = next(i["id"] for i in app.get_state("t").interrupts if i["node"] == "human_node_1")
    paused = app.resume("t", value={first: "one"})  # answer one: the other is asked again
    assert [i["id"] for i in paused.__interrupt__] == [i for i in ids if i != first]
    assert paused.model_dump() == {"text_1": "a", "text_2": "b"}  # nothing applied mid-step


class Robot(BaseModel):
    robot_input: str = ""
    human_input: str = ""


def test_interrupt_stream_mode_values() -> None:
    """test_pregel.py::test_interrupt_stream_mode_values"""
    g = Graph(Robot)
    g.add_node("robot_input_node", lambda s: {"robot_input": "beep boop i am a robot"})
    g.add_node("human_input_node", lambda s: {"human_input": interrupt("interrupt")})
    g.add_edge(START, "robot_input_node").add_edge("robot_input_node", "human_input_node")
    app = g.compile(checkpoint=MemoryStore())
    result = list(app.stream(Robot(), run_id="r", mode=["updates", "values"]))
    modes = [m for m, _ in result]
    assert modes == ["values", "updates", "values", "updates", "values"]  # headrace also yields the input
    assert result[1] == ("updates", {"robot_input_node": {"robot_input": "beep boop i am a robot"}})
    assert [i["value"] for i in result[3][1]["__interrupt__"]] == ["interrupt"]
    last = result[4][1]
    assert last.model_dump() == {"robot_input": "beep boop i am a robot", "human_input": ""}
    assert [i["value"] for i in last.__interrupt__] == ["interrupt"]
    resumed = list(
        app.stream(None, run_id="r", resume=True, value="i am a human", mode=["updates", "values"])
    )
    assert resumed == [
        ("values", Robot(robot_input="beep boop i am a robot")),
        ("updates", {"human_input_node": {"human_input": "i am a human"}}),
        ("values", Robot(robot_input="beep boop i am a robot", human_input="i am a human")),
    ]


def test_interrupt_in_events_mode() -> None:
    """interrupts appear in every stream mode (headrace's events mode)"""
    app = parallel_humans()
    events = list(app.stream({}, run_id="e", mode="events"))
    assert events[-1]["event"] == "interrupted" and len(events[-1]["interrupts"]) == 2


class Steps(BaseModel):
    steps: Annotated[list[str], operator.add] = []
    attempt: int = 0


def test_multiple_interrupt_state_persistence() -> None:
    """test_pregel.py::test_multiple_interrupt_state_persistence"""

    def node(s: Steps) -> dict[str, Any]:
        return {"steps": [interrupt("First interrupt"), interrupt("Second interrupt")]}

    g = Graph(Steps)
    g.add_node("node", node).add_edge(START, "node")
    app = g.compile(checkpoint=MemoryStore())
    app.invoke({"steps": []}, run_id="1")
    assert app.get_state("1").state.steps == []
    app.resume("1", value="step1")
    assert app.get_state("1").state.steps == []
    assert app.resume("1", value="step2").steps == ["step1", "step2"]
    assert app.get_state("1").state.steps == ["step1", "step2"]


def test_checkpoint_recovery() -> None:
    """test_pregel.py::test_checkpoint_recovery: a failed run continued with new input"""

    def failing_node(s: Steps) -> dict[str, Any]:
        if s.attempt == 1:
            raise RuntimeError("Simulated failure")
        return {"steps": ["node1"]}

    g = Graph(Steps)
    g.add_node("node1", failing_node).add_node("node2", lambda s: {"steps": ["node2"]})
    g.add_edge(START, "node1").add_edge("node1", "node2")
    store = MemoryStore()
    app = g.compile(checkpoint=store)
    with pytest.raises(RuntimeError, match="Simulated failure"):  # the node's own exception
        app.invoke({"steps": ["start"], "attempt": 1}, run_id="1")
    state = app.get_state("1")
    assert state.state.model_dump() == {"steps": ["start"], "attempt": 1}
    assert state.next == ("node1",)
    run = store.get_run("1")
    assert run is not None and "RuntimeError: Simulated failure" in run.meta["error"]
    result = app.invoke({"steps": [], "attempt": 2}, run_id="1")
    assert result.model_dump() == {"steps": ["start", "node1", "node2"], "attempt": 2}


class Foo(BaseModel):
    foo: Annotated[str, operator.add] = ""


def two_nodes(interrupt_before: list[str]) -> Any:
    g = Graph(Foo)
    g.add_node("node1", lambda s: {"foo": "|node-1"}).add_node("node2", lambda s: {"foo": "|node-2"})
    g.add_edge(START, "node1").add_edge("node1", "node2")
    return g.compile(checkpoint=MemoryStore(), interrupt_before=interrupt_before)


def test_command_with_static_breakpoints() -> None:
    """test_pregel.py::test_command_with_static_breakpoints: a value resumes a static breakpoint"""
    app = two_nodes(["node1"])
    app.invoke({"foo": "abc"}, run_id="t")
    assert app.resume("t", value="node1").foo == "abc|node-1|node-2"


def test_command_goto_with_static_breakpoints() -> None:
    """test_pregel.py::test_command_goto_with_static_breakpoints"""
    app = two_nodes(["node1"])
    app.invoke({"foo": "abc"}, run_id="t")
    assert app.resume("t", goto=["node2"]).foo == "abc|node-1|node-2|node-2"


def test_interruption_without_state_updates() -> None:
    """test_interruption.py::test_interruption_without_state_updates (interrupt_after='*')"""

    class State(BaseModel):
        input: str = ""

    g = Graph(State)
    for name in ("step_1", "step_2", "step_3"):
        g.add_node(name, lambda s: None)
    g.add_edge(START, "step_1").add_edge("step_1", "step_2").add_edge("step_2", "step_3").add_edge(
        "step_3", END
    )
    app = g.compile(checkpoint=MemoryStore(), interrupt_after="*")
    app.invoke({"input": "hello world"}, run_id="1")
    assert app.get_state("1").next == ("step_2",)
    app.invoke(None, run_id="1")
    assert app.get_state("1").next == ("step_3",)
    app.invoke(None, run_id="1")
    assert app.get_state("1").next == ()


def test_interrupt_before_star() -> None:
    """interrupt_before='*' (LangGraph's compile(interrupt_before="*"))"""
    app = two_nodes("*")  # type: ignore[arg-type]
    app.invoke({"foo": "x"}, run_id="t")
    assert app.get_state("t").next == ("node1",)
    app.resume("t")
    assert app.get_state("t").next == ("node2",)
    assert app.resume("t").foo == "x|node-1|node-2"


def node_counter(calls: Counter[str]) -> Any:
    class State(BaseModel):
        value: Annotated[int, operator.add] = 0

    def node(name: str) -> Any:
        def fn(s: State) -> dict[str, Any]:
            calls[name] += 1
            return {"value": 1}

        return fn

    g = Graph(State)
    for name in ("node_a", "node_b", "node_c"):
        g.add_node(name, node(name))
    return g


def test_replay_reruns_nodes_after_checkpoint() -> None:
    """test_time_travel.py::test_replay_reruns_nodes_after_checkpoint (replay = a fork with no update)"""
    calls: Counter[str] = Counter()
    g = node_counter(calls)
    g.add_edge(START, "node_a").add_edge("node_a", "node_b").add_edge("node_b", "node_c")
    app = g.compile(checkpoint=MemoryStore())
    assert app.invoke({}, run_id="1").value == 3
    after_a = next(h.step for h in app.history("1") if h.node == "node_a")
    replay = app.fork("1", step=after_a)
    assert app.resume(replay).value == 3
    assert calls == {"node_a": 1, "node_b": 2, "node_c": 2}


def test_fork_reruns_with_modified_state() -> None:
    """test_time_travel.py::test_fork_reruns_with_modified_state"""
    calls: Counter[str] = Counter()
    g = node_counter(calls)
    g.add_edge(START, "node_a").add_edge("node_a", "node_b")
    app = g.compile(checkpoint=MemoryStore())
    app.invoke({}, run_id="1")
    after_a = next(h.step for h in app.history("1") if h.node == "node_a")
    fork = app.fork("1", step=after_a, update={"value": 10})
    assert app.resume(fork).value == 12  # 1 (node_a) + 10 (edit, through the reducer) + 1 (node_b)
    assert app.get_state("1").state.value == 2  # the original thread is unchanged


def test_update_state_as_node_on_the_same_run() -> None:
    """test_pregel.py::test_update_as_input: update_state(as_node=...) continues the same thread"""
    calls: Counter[str] = Counter()
    g = node_counter(calls)
    g.add_edge(START, "node_a").add_edge("node_a", "node_b")
    app = g.compile(checkpoint=MemoryStore())
    app.invoke({}, run_id="1")
    step = app.update_state("1", {"value": 5}, as_node="node_a")
    state = app.get_state("1")
    assert state.step == step and state.next == ("node_b",) and state.state.value == 7
    assert app.invoke(None, run_id="1").value == 8
    assert [h.node for h in app.history("1")][-2:] == ["__update__", "node_b"]
    assert calls == {"node_a": 1, "node_b": 2}


def test_invoke_on_a_finished_thread_continues_it() -> None:
    """LangGraph: invoking a thread again with new input runs the graph on the saved state"""

    class State(BaseModel):
        n: Annotated[int, operator.add] = 0

    g = Graph(State)
    g.add_node("a", lambda s: {"n": 1}).add_edge(START, "a")
    app = g.compile(checkpoint=MemoryStore())
    assert app.invoke({"n": 1}, run_id="1").n == 2  # upstream values, checked with LangGraph 1.x
    assert app.invoke({"n": 10}, run_id="1").n == 13


def test_should_retry_on_single_exception() -> None:
    """test_retry.py::test_should_retry_on_single_exception"""
    policy = RetryPolicy(retry_on=ValueError)
    assert should_retry(policy, ValueError("test error")) is True
    assert should_retry(policy, TypeError("test error")) is False
    assert should_retry(policy, Exception("test error")) is False


def test_should_retry_on_sequence_of_exceptions() -> None:
    """test_retry.py::test_should_retry_on_sequence_of_exceptions"""
    policy = RetryPolicy(retry_on=(ValueError, KeyError))
    assert should_retry(policy, ValueError("x")) and should_retry(policy, KeyError("x"))
    assert not should_retry(policy, TypeError("x")) and not should_retry(policy, Exception("x"))


def test_should_retry_on_subclass_of_exception() -> None:
    """test_retry.py::test_should_retry_on_subclass_of_exception"""

    class CustomError(ValueError):
        pass

    assert should_retry(RetryPolicy(retry_on=ValueError), CustomError("test error")) is True


def test_should_retry_on_callable() -> None:
    """test_retry.py::test_should_retry_on_callable"""
    policy = RetryPolicy(retry_on=lambda exc: isinstance(exc, ValueError) and "retry" in str(exc))
    assert should_retry(policy, ValueError("please retry this")) is True
    assert should_retry(policy, ValueError("other error")) is False
    assert should_retry(policy, TypeError("please retry this")) is False


def test_should_retry_on_invalid_type() -> None:
    """test_retry.py::test_should_retry_on_invalid_type"""
    with pytest.raises(TypeError, match="retry_on must be an Exception class"):
        should_retry(RetryPolicy(retry_on=123), ValueError("test error"))


def test_should_retry_on_empty_sequence() -> None:
    """test_retry.py::test_should_retry_on_empty_sequence"""
    assert should_retry(RetryPolicy(retry_on=()), ValueError("test error")) is False


def test_should_retry_default_retry_on() -> None:
    """test_retry.py::test_should_retry_default_retry_on (HTTP errors as objects with a status)"""
    policy = RetryPolicy()
    assert should_retry(policy, ConnectionError("connection refused")) is True
    for exc in (
        ValueError("invalid value"),
        TypeError("invalid type"),
        ArithmeticError("division by zero"),
        ImportError("module not found"),
        LookupError("key not found"),
        NameError("name not defined"),
        SyntaxError("invalid syntax"),
        RuntimeError("runtime error"),
        ReferenceError("weak reference"),
        StopIteration(),
        StopAsyncIteration(),
        OSError("file not found"),
    ):
        assert should_retry(policy, exc) is False, exc

    class HTTPStatusError(Exception):  # httpx's and requests' shape: the status on .response
        def __init__(self, status: int) -> None:
            super().__init__(f"status {status}")
            self.response = type("Response", (), {"status_code": status})()

    assert should_retry(policy, HTTPStatusError(503)) is True
    assert should_retry(policy, HTTPStatusError(404)) is False
    assert default_retry_on(HTTPStatusError(502)) is True


def flaky_graph(calls: Counter[str], exc: Exception, policy: RetryPolicy, fail_times: int) -> Any:
    class State(BaseModel):
        foo: str = ""

    def failing_node(s: State) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] <= fail_times:
            raise exc
        return {"foo": "success"}

    g = Graph(State)
    g.add_node("failing_node", failing_node, retry=policy)
    g.add_node("other_node", lambda s: {"foo": s.foo + "|other_node"})
    g.add_edge(START, "failing_node").add_edge("failing_node", "other_node")
    return g.compile()


def test_graph_with_single_retry_policy() -> None:
    """test_retry.py::test_graph_with_single_retry_policy"""
    calls: Counter[str] = Counter()
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, jitter=False, retry_on=ValueError)
    app = flaky_graph(calls, ValueError("Intentional failure"), policy, fail_times=2)
    assert app.invoke({"foo": ""}).foo == "success|other_node"
    assert calls["n"] == 3


def test_graph_with_max_attempts_exceeded() -> None:
    """test_retry.py::test_graph_with_max_attempts_exceeded"""
    calls: Counter[str] = Counter()
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, jitter=False, retry_on=ValueError)
    app = flaky_graph(calls, ValueError("Always fails"), policy, fail_times=10)
    with pytest.raises(ValueError, match="Always fails") as err:
        app.invoke({"foo": ""})
    assert calls["n"] == 2 and err.value.node == "failing_node"  # type: ignore[attr-defined]


def test_default_policy_does_not_retry_a_value_error() -> None:
    """test_retry.py (default retry_on in a graph): a ValueError is not retried, a 5xx-like one is"""
    calls: Counter[str] = Counter()
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0, jitter=False)
    with pytest.raises(ValueError):
        flaky_graph(calls, ValueError("bad data"), policy, fail_times=1).invoke({})
    assert calls["n"] == 1
    calls.clear()
    assert (
        flaky_graph(calls, ConnectionError("reset"), policy, fail_times=2).invoke({}).foo
        == "success|other_node"
    )
    assert calls["n"] == 3


class Baz(BaseModel):
    baz: str = ""


def test_interrupt_subgraph() -> None:
    """test_pregel.py::test_interrupt_subgraph"""
    child = Graph(Baz)
    child.add_node("bar", lambda s: {"baz": interrupt("Please provide baz value:")}).add_edge(START, "bar")
    g = Graph(Baz)
    g.add_node("foo", lambda s: {"baz": "foo"}).add_node("bar", child.compile())
    g.add_edge(START, "foo").add_edge("foo", "bar")
    store = MemoryStore()
    app = g.compile(checkpoint=store)
    paused = app.invoke({"baz": ""}, run_id="1")
    assert paused.baz == "foo" and [i["value"] for i in paused.__interrupt__] == ["Please provide baz value:"]
    ns = paused.__interrupt__[0]["ns"]
    assert ns.startswith("1:bar:") and store.get_run(ns) is not None  # namespaced under the parent
    assert app.resume("1", value="bar").baz == "bar"
    assert app.get_state(ns).status == "succeeded"


def test_nested_graph() -> None:
    """test_pregel.py::test_nested_graph"""

    class InnerState(BaseModel):
        my_key: str = ""
        my_other_key: str = ""

    inner = Graph(InnerState)
    inner.add_node("up", lambda s: {"my_key": s.my_key + " there", "my_other_key": s.my_key})
    inner.add_edge(START, "up").add_edge("up", END)

    class State(BaseModel):
        my_key: str = ""

    g = Graph(State)
    g.add_node("inner", inner.compile()).add_node("side", lambda s: {"my_key": s.my_key + " and back again"})
    g.add_edge(START, "inner").add_edge("inner", "side").add_edge("side", END)
    app = g.compile()
    assert app.invoke({"my_key": "my value"}).my_key == "my value there and back again"
    assert list(app.stream({"my_key": "my value"}, mode="updates")) == [
        {"inner": {"my_key": "my value there"}},
        {"side": {"my_key": "my value there and back again"}},
    ]
    assert [v.my_key for v in app.stream({"my_key": "my value"}, mode="values")] == [
        "my value",
        "my value there",
        "my value there and back again",
    ]


def test_subgraph_shared_list_is_written_back_whole() -> None:
    """LangGraph writes a subgraph's whole output back (checked against LangGraph 1.x)"""

    class P(BaseModel):
        log: Annotated[list[str], operator.add] = []
        x: int = 0

    class C(BaseModel):
        log: Annotated[list[str], operator.add] = []
        y: int = 0

    child = Graph(C)
    child.add_node("c1", lambda s: {"log": ["c1"], "y": 1}).add_edge(START, "c1")
    g = Graph(P)
    g.add_node("p1", lambda s: {"log": ["p1"]}).add_node("sub", child.compile())
    g.add_edge(START, "p1").add_edge("p1", "sub")
    assert g.compile().invoke({"log": ["in"], "x": 0}).log == ["in", "p1", "in", "p1", "c1"]


def test_parallel_interrupts_in_subgraphs() -> None:
    """test_pregel.py::test_parallel_interrupts (two Send'ed subgraph runs, each asking once)"""

    class ChildState(BaseModel):
        prompt: str = ""
        human_input: str | None = None
        human_inputs: Annotated[list[str], operator.add] = []

    child = Graph(ChildState)
    child.add_node("get_human_input", lambda s: {"human_inputs": [interrupt(s.prompt)]})
    child.add_edge(START, "get_human_input").add_edge("get_human_input", END)

    class ParentState(BaseModel):
        prompts: list[str] = []
        # a Send payload is a state field here (upstream's parent has no `prompt`): each child writes
        # it back, so it takes a reducer
        prompt: Annotated[str, lambda old, new: new] = ""
        human_inputs: Annotated[list[str], operator.add] = []

    g = Graph(ParentState)
    g.add_node("child_graph", child.compile())
    g.add_node("cleanup", lambda s: None)
    g.add_conditional_edges(START, lambda s: [Send("child_graph", {"prompt": p}) for p in s.prompts])
    g.add_edge("child_graph", "cleanup").add_edge("cleanup", END)
    app = g.compile(checkpoint=MemoryStore())
    paused = app.invoke({"prompts": ["a", "b"]}, run_id="t")
    asked = {i["value"]: i["id"] for i in paused.__interrupt__}
    assert sorted(asked) == ["a", "b"]
    final = app.resume("t", value={asked["a"]: "answer a", asked["b"]: "answer b"})
    assert sorted(final.human_inputs) == ["answer a", "answer b"]


def test_async_nodes_of_a_step_run_concurrently() -> None:
    """test_pregel_async.py (parallel async branches): both awaits overlap in one step"""
    started: list[str] = []

    class State(BaseModel):
        out: Annotated[list[str], operator.add] = []

    both = asyncio.Event()

    async def node(name: str, s: State) -> dict[str, Any]:
        started.append(name)
        if len(started) == 2:
            both.set()
        await asyncio.wait_for(both.wait(), timeout=5)  # hangs if the other one is not running
        return {"out": [name]}

    g = Graph(State)
    g.add_node("a", lambda s: node("a", s)).add_node("b", lambda s: node("b", s))
    g.add_edge(START, "a").add_edge(START, "b")
    assert g.compile().invoke({}).out == ["a", "b"]
