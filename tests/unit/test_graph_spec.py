"""State graphs written as pipeline files: Graph.from_spec / graph.to_spec, in one process (no Ray)."""

from __future__ import annotations

import asyncio
import operator
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from engine import END, START, Graph
from engine.graph import GraphError, GraphRecursionError, InvalidGraph, InvalidUpdate
from engine.graph.spec import graph_from_spec, graph_to_spec, recursion_limit_of
from engine.spec.loader import load_pipeline, pipeline_model
from engine.spec.models import Pipeline

ROOT = Path(__file__).resolve().parents[2]
HERE = "tests.unit.test_graph_spec"

# -- node functions, importable by path (module-level) --------------------------------------------


def count(state: Any, by: int = 1) -> dict[str, Any]:
    return {"n": state.n + by, "log": f"n={state.n + by}"}


def tally(state: Any) -> dict[str, Any]:
    return {"total": state.n, "seen": {f"k{state.n}": state.n}}


async def slow_count(state: Any, by: int = 1) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"n": state.n + by}


def left(state: Any) -> dict[str, Any]:
    return {"log": ["left"]}


def right(state: Any) -> dict[str, Any]:
    return {"log": ["right"]}


def load(text: str) -> Pipeline:
    return load_pipeline("graph.yaml", content=text).spec


LOOP = f"""\
version: 1
name: counter
description: counts to a target
params: {{target: 3}}
max_steps: 20
state:
  fields:
    n: {{type: integer, default: 0}}
    log: {{type: array, default: [], reducer: append}}
    total: {{type: number, default: 0, reducer: add}}
    seen: {{type: object, default: {{}}, reducer: merge}}
    label: {{type: string, description: set by nobody}}
nodes:
  count: {{op: call, fn: "{HERE}:count", kwargs: {{by: 1}}}}
  tally: {{op: call, fn: "{HERE}:tally"}}
edges:
  - {{from: START, to: count}}
  - {{from: count, to: tally}}
  - from: tally
    branches:
      - {{when: "n >= params.target", to: END}}
      - {{to: count}}
"""


# -- from_spec --------------------------------------------------------------------------------------


def test_a_yaml_loop_runs_with_the_reducers_its_fields_name() -> None:
    app = graph_from_spec(load(LOOP)).compile()
    final = app.invoke({})
    assert final.n == 3
    assert final.log == ["n=1", "n=2", "n=3"]  # append
    assert final.total == 1 + 2 + 3  # add
    assert final.seen == {"k1": 1, "k2": 2, "k3": 3}  # merge
    assert final.label is None  # a field without a default starts as null


def test_defaults_are_not_shared_between_runs() -> None:
    app = graph_from_spec(load(LOOP)).compile()
    app.invoke({})
    assert app.invoke({"n": 1}).log == ["n=2", "n=3"]


def test_the_state_is_typed_as_its_fields_say() -> None:
    app = graph_from_spec(load(LOOP)).compile()
    assert app.invoke({"n": "1"}).n == 3  # JSON-ish input is validated into the declared type
    with pytest.raises(InvalidUpdate, match="does not fit state"):
        app.invoke({"n": "many"})
    with pytest.raises(InvalidUpdate, match="does not fit state"):
        app.invoke({"nope": 1})  # unknown keys are refused, not dropped


def test_conditions_read_params_and_the_state() -> None:
    raised = load(LOOP.replace("{target: 3}", "{target: 5}"))
    assert graph_from_spec(raised).compile().invoke({}).n == 5
    via_state = load(LOOP.replace("n >= params.target", "state.n >= 2"))
    assert graph_from_spec(via_state).compile().invoke({}).n == 2


def test_kwargs_reach_the_function_and_async_functions_are_awaited() -> None:
    text = LOOP.replace("kwargs: {by: 1}", "kwargs: {by: 2}").replace(f"{HERE}:count", f"{HERE}:slow_count")
    final = graph_from_spec(load(text)).compile().invoke({})
    assert final.n == 4 and final.log == []  # 2, 4: slow_count logs nothing


def test_a_list_target_fans_out() -> None:
    text = f"""\
version: 1
name: fan
state: {{fields: {{log: {{type: array, default: [], reducer: add}}}}}}
nodes:
  a: {{op: call, fn: "{HERE}:left"}}
  b: {{op: call, fn: "{HERE}:right"}}
edges:
  - {{from: START, to: [a, b]}}
"""
    assert sorted(graph_from_spec(load(text)).compile().invoke({}).log) == ["left", "right"]


def label_left(state: Any) -> dict[str, Any]:
    return {"label": "left", "log": ["left"]}


def label_right(state: Any) -> dict[str, Any]:
    return {"label": "right", "log": ["right"]}


SUPERSTEPS = f"""\
version: 1
name: supersteps
state:
  fields:
    n: {{type: integer, default: 0}}
    log: {{type: array, default: [], reducer: append}}
    label: {{type: string, default: ""}}
nodes:
  a: {{op: call, fn: "{HERE}:A_FN"}}
  b: {{op: call, fn: "{HERE}:B_FN"}}
  d: {{op: call, fn: "{HERE}:count"}}
edges:
  - {{from: START, to: [b, a]}}
  - {{from: a, to: d}}
  - {{from: b, to: d}}
"""


class Counted(BaseModel):
    n: int = 0


def test_a_yaml_graph_runs_in_supersteps_with_the_same_checkpoints() -> None:
    # a and b run in one step (applied by name, whatever the order listed); d, reached from both, once
    from engine.graph.checkpoints import MemoryStore

    text = SUPERSTEPS.replace("A_FN", "left").replace("B_FN", "right")
    store = MemoryStore()
    final = graph_from_spec(load(text)).compile(checkpoint=store).invoke({}, run_id="y")
    assert final.log == ["left", "right", "n=1"]
    steps = [s for s in store.steps("y") if s.node != "__write__"]  # pending writes left out
    assert [s.node for s in steps] == ["__input__", "a", "b", "d"]
    assert steps[1].meta["superstep"] == steps[2].meta["superstep"] == steps[1].step  # one step
    assert "superstep" not in steps[3].meta
    assert steps[2].next == ("d",)
    # two parallel writes to a field without a reducer are refused, naming the key and the nodes
    clash = SUPERSTEPS.replace("A_FN", "label_left").replace("B_FN", "label_right")
    with pytest.raises(InvalidUpdate, match=r"At key 'label'.*'a' and 'b'"):
        graph_from_spec(load(clash)).compile().invoke({})


def test_max_steps_is_the_recursion_limit() -> None:
    endless = load(LOOP.replace("n >= params.target", "n < 0").replace("max_steps: 20", "max_steps: 7"))
    assert recursion_limit_of(endless) == 7
    app = graph_from_spec(endless).compile(recursion_limit=recursion_limit_of(endless))
    with pytest.raises(GraphRecursionError, match="recursion_limit=7") as info:
        app.invoke({})
    assert set(info.value.loop) == {"count", "tally"}


def test_no_branch_holding_fails_the_run_naming_the_edge() -> None:
    text = LOOP.replace("      - {to: count}\n", "")
    with pytest.raises(GraphError) as info:
        graph_from_spec(load(text)).compile().invoke({})
    assert "no branch of edge 2 (from 'tally') holds" in str(info.value)
    assert "add a last branch without `when`" in str(info.value)


def test_a_function_that_cannot_be_imported_is_named() -> None:
    with pytest.raises(InvalidGraph, match=r"node 'count': cannot import module 'no_such_mod'"):
        graph_from_spec(load(LOOP.replace(f"{HERE}:count", "no_such_mod:count")))
    with pytest.raises(InvalidGraph, match=r"node 'count': module '[\w.]+' has no 'nope'"):
        graph_from_spec(load(LOOP.replace(f"{HERE}:count", f"{HERE}:nope")))


def test_a_default_of_the_wrong_type_is_refused_when_the_graph_is_built() -> None:
    with pytest.raises(InvalidGraph, match="state field 'n': default 'zero' is not of type integer"):
        graph_from_spec(
            load(LOOP.replace("n: {type: integer, default: 0}", "n: {type: integer, default: zero}"))
        )


def test_a_changed_condition_or_kwarg_is_a_different_graph() -> None:
    # resume refuses a run started by another graph: the hash must see conditions and kwargs
    base = graph_from_spec(load(LOOP)).plan().graph_hash
    assert graph_from_spec(load(LOOP)).plan().graph_hash == base
    assert graph_from_spec(load(LOOP.replace("n >= params", "n > params"))).plan().graph_hash != base
    assert graph_from_spec(load(LOOP.replace("by: 1", "by: 2"))).plan().graph_hash != base


def test_graph_from_spec_is_also_a_classmethod_of_graph() -> None:
    g = Graph.from_spec(load(LOOP))
    assert g.to_spec() == load(LOOP)


# -- to_spec ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [ROOT / "configs" / "examples" / "review_loop.yaml", None],
    ids=["review_loop", "counter"],
)
def test_to_spec_of_from_spec_is_the_same_pipeline(path: Path | None) -> None:
    p = load_pipeline(str(path)).spec if path else load(LOOP)
    assert graph_to_spec(graph_from_spec(p)) == p


def test_the_template_round_trips_once_its_functions_exist() -> None:
    text = (ROOT / "configs" / "templates" / "state-graph.yaml").read_text(encoding="utf-8")
    p = load(
        text.replace("my_project.steps:write_draft", f"{HERE}:count").replace(
            "my_project.steps:review_draft", f"{HERE}:tally"
        )
    )
    assert graph_to_spec(graph_from_spec(p)) == p


class S(BaseModel):
    n: int = 0
    log: Annotated[list[str], "append"] = []
    total: Annotated[float, operator.add] = 0
    seen: Annotated[dict[str, Any], "merge"] = {}
    label: str | None = None


def python_graph() -> Graph[S]:
    g = Graph(S, name="py-counter")
    g.add_node("count", count)
    g.add_node("tally", tally, retry=None)
    g.add_edge(START, "count")
    g.add_edge("count", "tally")
    g.add_edge("tally", END)
    return g


def test_a_python_graph_of_module_functions_is_written_and_read_back() -> None:
    g = python_graph()
    p = g.to_spec(name="written")
    assert p.name == "written"
    assert {n: s.fn for n, s in p.nodes.items()} == {"count": f"{HERE}:count", "tally": f"{HERE}:tally"}
    fields = p.state.fields if p.state else {}
    assert {k: (f.type, f.reducer) for k, f in fields.items()} == {
        "n": ("integer", "replace"),
        "log": ("array", "append"),
        "total": ("number", "add"),
        "seen": ("object", "merge"),
        "label": ("string", "replace"),
    }
    want = g.compile().invoke({"n": 4})
    got = Graph.from_spec(p).compile().invoke({"n": 4})
    assert got.model_dump() == want.model_dump()
    assert graph_to_spec(graph_from_spec(p)) == p


def test_to_spec_refuses_what_the_format_cannot_hold_naming_it() -> None:
    g = python_graph()
    g.add_conditional_edges("count", lambda s: END)
    with pytest.raises(InvalidGraph, match=r"conditional edge from 'count' uses the Python function"):
        g.to_spec()

    lam = Graph(S)
    lam.add_node("anon", lambda s: {})
    lam.add_edge(START, "anon")
    with pytest.raises(InvalidGraph, match=r"node 'anon': function .*<lambda> cannot .*not a lambda"):
        lam.to_spec()

    class Custom(BaseModel):
        best: Annotated[int, max] = 0

    mx = Graph(Custom)
    mx.add_node("count", count)
    mx.add_edge(START, "count")
    with pytest.raises(InvalidGraph, match="state field 'best' of Custom has reducer 'max'"):
        mx.to_spec()

    joined = python_graph()
    joined.add_edge(["count", "tally"], END)
    with pytest.raises(InvalidGraph, match="join edge"):
        joined.to_spec()


def test_from_spec_refuses_dataflow_nodes() -> None:
    data = load(LOOP).model_dump(by_alias=True, exclude_unset=True)
    data["nodes"]["src"] = {"op": "read_csv", "path": "x.csv"}
    mixed = pipeline_model().model_validate(data)
    with pytest.raises(InvalidGraph, match="node 'src' is a source node"):
        graph_from_spec(mixed)


def test_a_spec_born_graph_changed_in_python_is_written_with_its_changes() -> None:
    p = load(LOOP)
    g = graph_from_spec(p)
    g.add_node("extra", left)
    g.add_edge("count", "extra")
    q = g.to_spec()
    assert q.description == p.description and q.params == p.params and q.max_steps == 20
    assert q.nodes["extra"].fn == f"{HERE}:left"
    edges = [e.model_dump(by_alias=True, exclude_none=True) for e in q.edges]
    assert {"from": "count", "to": ["tally", "extra"]} in edges
    assert graph_to_spec(graph_from_spec(q)) == q
    final = graph_from_spec(q).compile(recursion_limit=recursion_limit_of(q)).invoke({})
    assert final.n == 3 and final.log.count("left") == 3
