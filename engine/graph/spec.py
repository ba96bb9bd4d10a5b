"""A state graph and its pipeline-file form, both ways: :func:`graph_from_spec` and :func:`graph_to_spec`.

From a pipeline (``Graph.from_spec(pipeline)``):

- ``state.fields`` becomes a pydantic model (``extra="forbid"``): ``string``, ``integer``, ``number``,
  ``boolean``, ``array``, ``object`` or ``any``, each field's ``default`` (a field whose default is
  ``null`` also accepts ``null``), and its ``reducer`` as a named reducer (``replace``, ``append``,
  ``add``, ``merge``).
- each ``call`` node imports ``fn`` (``package.module:function``) and runs ``fn(state, **kwargs)`` with
  the state as that model; a node's ``retry`` (or ``defaults.retry``) applies; a node with ``resources``
  runs as a Ray task (``defaults.resources`` are not inherited by state nodes: most nodes are light and
  should run inline).
- ``{from: a, to: b}`` is a static edge (``to: [b, c]`` fans out); ``branches`` is a conditional edge
  that takes the first branch whose ``when`` holds (a branch without ``when`` always holds). Conditions
  are sandboxed expressions (:func:`engine.spec.expressions.condition`) over the state's fields, the
  state as ``state`` and the pipeline's ``params``. When no branch holds the run fails with a message
  naming the edge: add a last branch without ``when`` (e.g. ``{to: END}``).
- ``max_steps`` is the compiled graph's ``recursion_limit`` (:func:`recursion_limit_of`).

Back to a pipeline (``graph.to_spec(name=...)``): nodes must be module-level functions (``module:qualname``
that imports back to the same object) or ``call`` nodes read from a spec, conditional edges must come
from a spec (a Python route cannot be written as YAML), and state fields must have JSON types. The
pipeline fields a graph does not hold (description, labels, params, defaults...) come from the pipeline
the graph was read from, if any. ``graph_to_spec(graph_from_spec(p)) == p``.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from pydantic_core import PydanticUndefined

from engine.graph.builder import Graph, NodeDef, Route
from engine.graph.errors import GraphError, InvalidGraph
from engine.graph.state import REDUCERS
from engine.policy import PolicyViolation, import_object
from engine.spec.expressions import condition
from engine.spec.models import (
    END,
    START,
    Branch,
    Edge,
    Pipeline,
    Resources,
    RetryPolicy,
    StateField,
    StateSchema,
)
from engine.spec.registry import behaviour

__all__ = ["DEFAULT_RECURSION_LIMIT", "graph_from_spec", "graph_to_spec", "recursion_limit_of"]

DEFAULT_RECURSION_LIMIT = 100
"""The recursion limit of a pipeline without ``max_steps`` (its graph has no loop)."""

_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "array": list[Any],
    "object": dict[str, Any],
    "any": Any,
}
_CALL = "__headrace_call__"  # on a node function read from a spec: (import path, kwargs)
_BRANCHES = "__headrace_branches__"  # on a route read from a spec: the edge's branches
_SPEC = "__headrace_spec__"  # on a node function an op's `graph` behaviour made: the node as written
_sources: weakref.WeakKeyDictionary[Graph[Any], Pipeline] = weakref.WeakKeyDictionary()


# -- pipeline → graph -----------------------------------------------------------------------------


def graph_from_spec(pipeline: Pipeline, *, base_dir: str | None = None) -> Graph[Any]:
    """The state graph a pipeline's ``state``, state nodes and ``edges`` describe.

    ``base_dir`` is the folder of the pipeline's file, which relative paths (a ``pipeline`` node's) are
    relative to (default: the working directory). Raises :class:`InvalidGraph` naming the node or edge
    at fault: a dataflow node in the pipeline, a ``fn`` that cannot be imported, an edge to an unknown
    node.
    """
    state = state_model(pipeline.name, pipeline.state or StateSchema())
    graph: Graph[Any] = Graph(state, name=pipeline.name)
    for name, node in pipeline.nodes.items():
        if node.kind != "state":
            raise InvalidGraph(
                f"node {name!r} is a {node.kind} node (op {node.op}); a state graph holds state nodes only"
            )
        make = behaviour(node.op, "graph")
        fn_path = getattr(node, "fn", None)
        if make is None and not isinstance(fn_path, str):
            raise InvalidGraph(f"node {name!r}: op {node.op!r} cannot run in a state graph; use op: call")
        on_error = node.on_error
        if on_error is not None and on_error.mode != "fail":
            raise InvalidGraph(
                f"node {name!r}: on_error mode {on_error.mode!r} applies to rows of dataflow nodes; "
                "a state node that fails ends the run (use retry, or catch the error in the function)"
            )
        if make is not None:
            function = make(name, node, base_dir)
            setattr(function, _SPEC, node.model_dump(mode="json", by_alias=True, exclude_unset=True))
        else:
            function = _call_node(name, str(fn_path), dict(getattr(node, "kwargs", {}) or {}))
        graph.add_node(
            name,
            function,
            resources=node.resources,
            retry=node.retry or pipeline.defaults.retry,
        )
    params = dict(pipeline.params)
    for i, edge in enumerate(pipeline.edges):
        if edge.branches is not None:
            targets = [b.to for b in edge.branches]
            graph.add_conditional_edges(
                edge.from_, _branch_route(i, edge.from_, edge.branches, params), [*targets, END]
            )
        else:
            graph.add_edge(edge.from_, edge.targets())
    _sources[graph] = pipeline
    return graph


def recursion_limit_of(pipeline: Pipeline) -> int:
    """The recursion limit a pipeline's graph compiles with: ``max_steps``, else the default."""
    return pipeline.max_steps or DEFAULT_RECURSION_LIMIT


def state_model(pipeline_name: str, schema: StateSchema) -> type[BaseModel]:
    """A pydantic model of ``schema``: one field per state field, with its type, default and reducer."""
    fields: dict[str, Any] = {}
    for name, spec in schema.fields.items():
        annotation: Any = _TYPES[spec.type]
        if spec.default is None and spec.type != "any":
            annotation = annotation | None
        try:
            default = TypeAdapter(annotation).validate_python(spec.default)
        except ValidationError as exc:
            raise InvalidGraph(
                f"state field {name!r}: default {spec.default!r} is not of type {spec.type} "
                f"({exc.errors()[0]['msg']})"
            ) from None
        fields[name] = (Annotated[annotation, spec.reducer], Field(default, description=spec.description))
    title = "".join(p.capitalize() for p in re.split(r"[^A-Za-z0-9]+", pipeline_name) if p) or "Graph"
    model: type[BaseModel] = create_model(f"{title}State", __config__=ConfigDict(extra="forbid"), **fields)
    return model


def _call_node(name: str, path: str, kwargs: dict[str, Any]) -> Callable[[Any], Any]:
    fn = _import(path, f"node {name!r}")
    if not callable(fn):
        raise InvalidGraph(f"node {name!r}: {path} is a {type(fn).__name__}, not a function")
    node: Callable[[Any], Any]
    if inspect.iscoroutinefunction(fn):

        async def node(state: Any) -> Any:
            return await fn(state, **kwargs)
    else:

        def node(state: Any) -> Any:
            return fn(state, **kwargs)

    # the graph hash is made of these names: a changed `fn` or `kwargs` is a different graph
    node.__module__ = getattr(fn, "__module__", None) or path.partition(":")[0]
    qualname = getattr(fn, "__qualname__", path.partition(":")[2])
    node.__qualname__ = f"{qualname}(**{json.dumps(kwargs, sort_keys=True)})" if kwargs else qualname
    setattr(node, _CALL, (path, kwargs))
    return node


def _import(path: str, who: str) -> Any:
    module_name = path.partition(":")[0]
    try:
        return import_object(path)
    except PolicyViolation as exc:
        raise InvalidGraph(f"{who}: {exc}") from None
    except ImportError as exc:
        raise InvalidGraph(
            f"{who}: cannot import module {module_name!r} of fn {path!r} ({exc}); "
            "check the name and that its folder is on PYTHONPATH"
        ) from None
    except AttributeError as exc:
        raise InvalidGraph(f"{who}: {exc} (fn {path!r})") from None


def _branch_route(
    index: int, source: str, branches: Sequence[Branch], params: Mapping[str, Any]
) -> Callable[[Any], str]:
    tests = [(None if b.when is None else condition(b.when), b.to) for b in branches]
    where = f"edge {index} (from {source!r})"

    def route(state: Any) -> str:
        names = {**state.__dict__, "state": state.__dict__, "params": params}
        for test, to in tests:
            try:
                if test is None or test(names):
                    return to
            except Exception as exc:
                raise GraphError(f"{where}: condition failed: {type(exc).__name__}: {exc}") from None
        conditions = "; ".join(repr(b.when) for b in branches)
        raise GraphError(
            f"no branch of {where} holds (conditions: {conditions}); add a last branch without "
            "`when`, e.g. {to: END}, for the other cases"
        )

    text = json.dumps([b.model_dump(exclude_none=True) for b in branches], sort_keys=True)
    route.__module__ = __name__
    route.__qualname__ = f"branches{text}"
    setattr(route, _BRANCHES, list(branches))
    return route


# -- graph → pipeline -----------------------------------------------------------------------------


def graph_to_spec(graph: Graph[Any], *, name: str | None = None, max_steps: int | None = None) -> Pipeline:
    """The pipeline that describes ``graph``; ``name`` and ``max_steps`` override the source's.

    Raises :class:`InvalidGraph` naming the node, edge or field that cannot be written in the format.
    """
    from engine.spec.loader import pipeline_model

    source = _sources.get(graph)
    data: dict[str, Any] = (
        source.model_dump(mode="json", by_alias=True, exclude_unset=True) if source is not None else {}
    )
    data.update(
        version=1,
        name=name or (source.name if source is not None else graph.name),
        state={"fields": _state_fields(graph)},
        nodes={n: _node_spec(node, source) for n, node in graph._nodes.items()},
    )
    edges = _edges(graph)
    if source is not None and _edge_shape(source.edges) == _edge_shape(edges):
        edges = list(source.edges)  # the same graph: keep the author's grouping and order
    data["edges"] = [e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in edges]
    steps = max_steps if max_steps is not None else (source.max_steps if source is not None else None)
    if steps is not None:
        data["max_steps"] = steps
    return pipeline_model().model_validate(data)


def _state_fields(graph: Graph[Any]) -> dict[str, Any]:
    model = graph.schema.model
    out: dict[str, Any] = {}
    for fname, spec in graph.schema.fields.items():
        info = model.model_fields[fname]
        where = f"state field {fname!r} of {model.__name__}"
        reducer = next((k for k, v in REDUCERS.items() if v is spec.reducer and v is not None), None)
        if spec.reducer is not None and reducer is None:
            raise InvalidGraph(
                f"{where} has reducer {getattr(spec.reducer, '__qualname__', spec.reducer)!r}, which the "
                f"pipeline format cannot name; use one of {', '.join(REDUCERS)}"
            )
        kind, optional = _json_type(info.annotation)
        if kind is None:
            raise InvalidGraph(
                f"{where} has type {info.annotation!r}; the pipeline format knows "
                f"{', '.join(_TYPES)}: use one of those (or convert in the node)"
            )
        if info.default is not PydanticUndefined:
            default = info.default
        elif info.default_factory is not None:
            default = info.default_factory()
        else:
            raise InvalidGraph(f"{where} has no default; give it one (a pipeline's state starts from them)")
        try:
            default = TypeAdapter(Any).dump_python(default, mode="json")
            json.dumps(default)
        except (TypeError, ValueError):
            raise InvalidGraph(f"{where}: default {default!r} is not JSON") from None
        if default is not None and optional and kind != "any":
            kind = "any"  # `int | None = 5`: the format's null-accepting types need a null default
        field = StateField(
            type=kind,
            default=default,
            reducer=reducer or "replace",
            description=info.description,
        )
        out[fname] = field.model_dump(mode="json", exclude_defaults=True)
    return out


def _json_type(annotation: Any) -> tuple[str | None, bool]:
    """The format's type name of an annotation (None when it has none), and whether it allows None."""
    optional = False
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        if len(args) != 1:
            return None, optional
        annotation = args[0]
        origin = get_origin(annotation)
    if origin is Annotated:
        annotation = get_args(annotation)[0]
        origin = get_origin(annotation)
    if annotation is Any:
        return "any", optional
    base = origin or annotation
    for kind, py in (("string", str), ("boolean", bool), ("integer", int), ("number", float)):
        if base is py:
            return kind, optional
    if base in (list, tuple):
        return "array", optional
    if base is dict:
        return "object", optional
    return None, optional


def _node_spec(node: NodeDef, source: Pipeline | None) -> dict[str, Any]:
    written = getattr(node.fn, _SPEC, None)
    if written is not None:  # a `pipeline` node (or a plugin op's): written back as it was read
        return dict(written)
    call = getattr(node.fn, _CALL, None)
    if call is not None:
        path, kwargs = call
    else:
        path, kwargs = _import_path(node.name, node.fn), {}
    if node.timeout_s is not None or node.on_error is not None or node.error_key is not None:
        raise InvalidGraph(
            f"node {node.name!r} sets timeout_s, on_error or error_key, which the pipeline format "
            "cannot hold yet; drop them to write the graph as a pipeline"
        )
    out: dict[str, Any] = {"op": "call", "fn": path}
    was = source.nodes.get(node.name) if source is not None else None
    if was is not None and getattr(was, "fn", None) == path and getattr(was, "kwargs", None) == kwargs:
        out = was.model_dump(mode="json", by_alias=True, exclude_unset=True)  # its description too
    out.pop("kwargs", None)
    if kwargs:
        out["kwargs"] = kwargs
    # write resources and retry only where reading `out` back would not give the node's own
    resources = node.resources or (Resources() if node.heavy else None)
    if resources != (None if out.get("resources") is None else Resources.model_validate(out["resources"])):
        out["resources"] = resources.model_dump(mode="json", exclude_defaults=True) if resources else None
    inherited = source.defaults.retry if source is not None else None
    written = RetryPolicy.model_validate(out["retry"]) if out.get("retry") is not None else None
    if node.retry != (written or inherited):
        out["retry"] = node.retry.model_dump(mode="json", exclude_defaults=True) if node.retry else None
    return {k: v for k, v in out.items() if v is not None}


def _import_path(node: str, fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    problem = f"node {node!r}: function {module}.{qualname} cannot be written as an import path"
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise InvalidGraph(
            f"{problem}; a pipeline names functions as `module:function`, so use a function defined at "
            "the top level of an importable module (not a lambda, a nested function or __main__)"
        )
    path = f"{module}:{qualname}"
    try:
        found = _import(path, f"node {node!r}")
    except InvalidGraph:
        found = None
    if found is not fn:
        raise InvalidGraph(f"{problem}; {path} does not import back to the same function")
    return path


def _edges(graph: Graph[Any]) -> list[Edge]:
    out: list[Edge] = []
    sources = list(dict.fromkeys([START, *graph._nodes, *graph._edges, *graph._routes]))
    for src in sources:
        targets = list(dict.fromkeys(graph._edges.get(src, [])))
        if targets:
            out.append(Edge.model_validate({"from": src, "to": targets[0] if len(targets) == 1 else targets}))
        for route in graph._routes.get(src, []):
            out.append(Edge.model_validate({"from": src, "branches": _route_branches(src, route)}))
    if graph._joins:
        join_sources, target = graph._joins[0]
        raise InvalidGraph(
            f"join edge {list(join_sources)} → {target!r}: the pipeline format has no joins yet; "
            "write the graph in Python"
        )
    return out


def _route_branches(source: str, route: Route) -> list[Branch]:
    branches = getattr(route.fn, _BRANCHES, None)
    if branches is None:
        raise InvalidGraph(
            f"the conditional edge from {source!r} uses the Python function "
            f"{getattr(route.fn, '__qualname__', route.fn)!r}, which cannot be written as YAML; write "
            "its conditions as branches ({when: EXPR, to: NODE}) in a pipeline and load it with "
            "Graph.from_spec"
        )
    return list(branches)


def _edge_shape(edges: Sequence[Edge]) -> tuple[dict[str, list[str]], dict[str, list[Any]]]:
    """What a list of edges builds: static targets and branch lists per source."""
    static: dict[str, list[str]] = {}
    routes: dict[str, list[Any]] = {}
    for e in edges:
        if e.branches is not None:
            routes.setdefault(e.from_, []).append(e.branches)
        else:
            static.setdefault(e.from_, []).extend(e.targets())
    return {k: list(dict.fromkeys(v)) for k, v in static.items()}, routes
