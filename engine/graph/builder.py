"""Building a state graph: :class:`Graph` (nodes, edges, routes) compiled into a :class:`GraphPlan`.

The builder only collects and checks; :meth:`Graph.compile` freezes the result into an immutable
:class:`GraphPlan` (successor tables, reducers and node options precomputed, so the runner's hot loop
does lookups only) and wraps it in a :class:`~engine.graph.app.CompiledGraph`.

Edges:

- ``add_edge("a", "b")``, ``add_edge("a", ["b", "c"])``: when ``a`` finishes, ``b`` (and ``c``, in
  parallel) are scheduled. Each arrival schedules the target once, unless a run of it is already
  pending (scheduled, not started): pending runs are deduplicated.
- ``add_edge(["b", "c"], "d")``: a join; ``d`` is scheduled once both ``b`` and ``c`` have finished
  (since ``d`` last fired), as LangGraph's waiting edges.
- ``add_conditional_edges("a", route, path_map=None)``: ``route(state)`` (sync or async, on the state
  after ``a``'s update) returns a node name, ``END``, a list of them, or :class:`Send` objects.
- A node may return :class:`Command` to add its own destinations to its static edges.
"""

from __future__ import annotations

import hashlib
import inspect
import typing
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic

from pydantic import BaseModel

from engine.graph.errors import InvalidGraph
from engine.graph.state import S, StateSchema
from engine.spec.models import END, START, Pipeline, Resources, RetryPolicy

if TYPE_CHECKING:
    from engine.graph.app import CompiledGraph

RESERVED = frozenset({START, END, "__input__", "__update__", "__interrupt__", "__checkpoint__"})


@dataclass(frozen=True)
class Send:
    """Run ``node`` once with the state merged with ``arg`` (keys are state fields, set as given).

    Returned by a conditional route for dynamic fan-out: one ``Send`` per item runs that many
    parallel executions of ``node``, each seeing its own payload.
    """

    node: str
    arg: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """A node's return value carrying an update and where to go next (in addition to static edges).

    ``update`` is a mapping, a state model instance, or a list of ``(key, value)`` pairs (a key may
    repeat: a field with a reducer receives each value). A node may also return a list of Commands.
    """

    update: Mapping[str, Any] | BaseModel | Sequence[tuple[str, Any]] | None = None
    goto: str | Send | Sequence[str | Send] = ()


@dataclass(frozen=True)
class NodeDef:
    """One node as compiled: its function and how it is run."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    resources: Resources | None = None
    heavy: bool = False
    retry: RetryPolicy | None = None
    timeout_s: float | None = None
    on_error: str | None = None
    error_key: str | None = None
    subgraph: Any = None
    """A compiled graph run as this node (``engine.graph.subgraphs``)."""
    view: type[BaseModel] | None = None
    """The node's input schema when it is not the state (it then sees only those fields)."""

    @property
    def remote(self) -> bool:
        """Whether the node runs as a Ray task rather than inline in the runner's event loop."""
        return self.subgraph is None and (self.heavy or self.resources is not None)


@dataclass(frozen=True)
class Route:
    """A conditional way out of a node: a sync function of the state, and an optional path map."""

    fn: Callable[..., Any]
    path_map: Mapping[Hashable, str] | None


@dataclass(frozen=True)
class GraphPlan(Generic[S]):
    """The immutable, precomputed form of a graph that the runner executes."""

    name: str
    schema: StateSchema[S]
    nodes: Mapping[str, NodeDef]
    edges: Mapping[str, tuple[str, ...]]
    """Static successors of each node (and of START); END is dropped."""
    routes: Mapping[str, tuple[Route, ...]]
    joins: tuple[tuple[frozenset[str], str], ...]
    joins_of: Mapping[str, tuple[int, ...]]
    """For each node, the joins it takes part in (indices into ``joins``)."""
    graph_hash: str
    has_subgraphs: bool = False
    input: type[BaseModel] | None = None
    """The input schema: a run's input keeps only its fields."""
    output: type[BaseModel] | None = None
    """The output schema: what ``invoke`` returns (else the state model)."""


class Graph(Generic[S]):
    """A state graph under construction: ``Graph(State)``, then nodes and edges, then ``compile()``."""

    def __init__(
        self,
        state: type[S],
        *,
        input_schema: type[BaseModel] | None = None,
        output_schema: type[BaseModel] | None = None,
        name: str | None = None,
    ) -> None:
        """``input_schema``/``output_schema``: what a run takes and what ``invoke`` returns, when not
        the whole state; their fields (and those of a node's own input schema, a *private* state)
        are channels of the graph alongside the state's."""
        self.schema: StateSchema[S] = StateSchema(state)
        self.state = state
        self.input_schema = input_schema
        self.output_schema = output_schema
        self.name = name or state.__name__
        self._nodes: dict[str, NodeDef] = {}
        self._edges: dict[str, list[str]] = {}
        self._joins: list[tuple[tuple[str, ...], str]] = []
        self._routes: dict[str, list[Route]] = {}

    def add_node(
        self,
        name: str,
        fn: Callable[..., Any] | CompiledGraph[Any],
        *,
        resources: Resources | Mapping[str, Any] | None = None,
        heavy: bool = False,
        retry: RetryPolicy | None = None,
        timeout_s: float | None = None,
        on_error: str | None = None,
        error_key: str | None = None,
        input_schema: type[BaseModel] | None = None,
    ) -> Graph[S]:
        """Add ``fn(state) -> dict | Command | None`` (sync or async) as node ``name``.

        ``fn`` may also be a compiled graph (a *subgraph*): it runs on the fields it shares with this
        graph's state, its checkpoints are namespaced under the parent run's, and its interrupts pause
        the parent (see ``engine.graph.subgraphs``).

        ``input_schema`` (or a pydantic model other than the state as the annotation of ``fn``'s
        first parameter) gives the node that view of the channels: a private state, as LangGraph's.
        ``resources``/``heavy`` run it as a Ray task; ``retry`` retries it on exceptions;
        ``timeout_s`` bounds each attempt; ``on_error`` names a node that runs when it still fails,
        with the error text written to state field ``error_key`` if given (and always in step meta).
        """
        if not isinstance(name, str) or not name or name in RESERVED or name.startswith("__"):
            raise InvalidGraph(f"node name {name!r} is reserved or empty; choose another name")
        if name in self._nodes:
            raise InvalidGraph(f"node {name!r} is added twice; node names must be unique")
        from engine.graph.app import CompiledGraph

        subgraph = fn if isinstance(fn, CompiledGraph) else None
        if subgraph is None and not callable(fn):
            raise InvalidGraph(f"node {name!r}: {fn!r} is not callable")
        if error_key is not None and error_key not in self.schema.fields:
            raise InvalidGraph(
                f"node {name!r}: error_key {error_key!r} is not a field of {self.schema.model.__name__}"
            )
        if timeout_s is not None and timeout_s <= 0:
            raise InvalidGraph(f"node {name!r}: timeout_s must be positive, got {timeout_s}")
        res = Resources.model_validate(resources) if isinstance(resources, Mapping) else resources
        self._nodes[name] = NodeDef(
            name=name,
            fn=fn,  # type: ignore[arg-type]  # a subgraph's is never called: subgraphs.py runs it
            is_async=inspect.iscoroutinefunction(fn),
            resources=res,
            subgraph=subgraph,
            view=input_schema or (None if isinstance(fn, CompiledGraph) else _input_model(fn, self.state)),
            heavy=heavy,
            retry=retry,
            timeout_s=timeout_s,
            on_error=on_error,
            error_key=error_key,
        )
        return self

    def add_edge(self, source: str | Sequence[str], target: str | Sequence[str]) -> Graph[S]:
        """``source`` → ``target`` (a list of targets fans out; a list of sources is a join)."""
        targets = [target] if isinstance(target, str) else list(target)
        if isinstance(source, str):
            if source == END:
                raise InvalidGraph("an edge cannot leave END")
            self._edges.setdefault(source, []).extend(targets)
            return self
        sources = tuple(source)
        if not sources or START in sources or END in sources:
            raise InvalidGraph(f"a join needs node names as sources, got {list(sources)}")
        for t in targets:
            self._joins.append((sources, t))
        return self

    def add_conditional_edges(
        self,
        source: str,
        route: Callable[..., Any],
        path_map: Mapping[Hashable, str] | Sequence[str] | None = None,
    ) -> Graph[S]:
        """After ``source``, go where ``route(state)`` says (names, END, lists or ``Send``s).

        ``path_map`` maps the route's return values to node names (a list maps each name to itself).
        """
        if source == END:
            raise InvalidGraph("a conditional edge cannot leave END")
        if inspect.iscoroutinefunction(route):
            raise InvalidGraph(
                f"conditional edge from {source!r}: routes must be sync functions of the state"
            )
        mapping: Mapping[Hashable, str] | None = (
            {p: p for p in path_map} if isinstance(path_map, Sequence) else path_map
        )
        self._routes.setdefault(source, []).append(Route(route, mapping))
        return self

    def set_entry_point(self, node: str) -> Graph[S]:
        """Same as ``add_edge(START, node)``."""
        return self.add_edge(START, node)

    @classmethod
    def from_spec(cls, pipeline: Pipeline) -> Graph[Any]:
        """The graph a pipeline file's state, nodes and edges describe (see ``engine.graph.spec``)."""
        from engine.graph.spec import graph_from_spec

        return graph_from_spec(pipeline)

    def to_spec(self, *, name: str | None = None, max_steps: int | None = None) -> Pipeline:
        """This graph as a pipeline (see ``engine.graph.spec``); inverse of :meth:`from_spec`."""
        from engine.graph.spec import graph_to_spec

        return graph_to_spec(self, name=name, max_steps=max_steps)

    # -- compile --------------------------------------------------------------------------------

    def plan(self) -> GraphPlan[S]:
        """Check the graph and freeze it into a :class:`GraphPlan`."""
        known = set(self._nodes)

        def check(where: str, target: str) -> None:
            if target != END and target not in known:
                raise InvalidGraph(f"{where} leads to unknown node {target!r}; add it with add_node first")

        if START not in self._edges and START not in self._routes:
            raise InvalidGraph("the graph has no entry: add_edge(START, 'first_node')")
        for src, targets in self._edges.items():
            if src != START and src not in known:
                raise InvalidGraph(f"an edge leaves unknown node {src!r}")
            for t in targets:
                check(f"edge {src!r} → {t!r}", t)
        for src, routes in self._routes.items():
            if src != START and src not in known:
                raise InvalidGraph(f"a conditional edge leaves unknown node {src!r}")
            for r in routes:
                for t in (r.path_map or {}).values():
                    check(f"conditional edge from {src!r}", t)
        for sources, t in self._joins:
            for s in sources:
                if s not in known:
                    raise InvalidGraph(f"join {list(sources)} → {t!r} names unknown node {s!r}")
            check(f"join {list(sources)}", t)
        # a join into END only ends its branches: it schedules nothing (it used to KeyError on 'END')
        for node in self._nodes.values():
            if node.on_error is not None:
                check(f"on_error of node {node.name!r}", node.on_error)

        joins = tuple((frozenset(src), t) for src, t in self._joins if t != END)
        extra = [m for m in (self.input_schema, self.output_schema) if m is not None]
        extra += [n.view for n in self._nodes.values() if n.view is not None]
        schema = StateSchema(self.state, extra) if extra else self.schema
        joins_of: dict[str, list[int]] = {}
        for i, (members, _) in enumerate(joins):
            for s in members:
                joins_of.setdefault(s, []).append(i)
        edges = {
            src: tuple(dict.fromkeys(t for t in targets if t != END)) for src, targets in self._edges.items()
        }
        return GraphPlan(
            name=self.name,
            schema=schema,
            nodes=dict(self._nodes),
            edges=edges,
            routes={s: tuple(r) for s, r in self._routes.items()},
            joins=joins,
            joins_of={s: tuple(i) for s, i in joins_of.items()},
            graph_hash=self._hash(),
            has_subgraphs=any(n.subgraph is not None for n in self._nodes.values()),
            input=self.input_schema,
            output=self.output_schema,
        )

    def compile(
        self,
        checkpoint: Any = None,
        *,
        interrupt_before: Sequence[str] | str = (),
        interrupt_after: Sequence[str] | str = (),
        recursion_limit: int = 100,
    ) -> CompiledGraph[S]:
        """Freeze the graph into a runnable app.

        ``checkpoint`` is a store URL (``"memory://"``, ``"sqlite:///runs.db"``, an fsspec URL), an
        open checkpoint store, or ``None`` for no checkpoints (then resume, history and fork are
        unavailable). ``recursion_limit`` bounds supersteps per invocation. ``interrupt_before`` and
        ``interrupt_after`` list nodes to pause at, or ``"*"`` for every node.
        """
        from engine.graph.app import CompiledGraph

        plan = self.plan()
        every = tuple(plan.nodes)
        interrupt_before = every if interrupt_before == "*" else interrupt_before
        interrupt_after = every if interrupt_after == "*" else interrupt_after
        if isinstance(interrupt_before, str) or isinstance(interrupt_after, str):
            raise InvalidGraph('interrupt_before/interrupt_after take a list of node names or "*"')
        for name in (*interrupt_before, *interrupt_after):
            if name not in plan.nodes:
                raise InvalidGraph(f"interrupt names unknown node {name!r}")
        if recursion_limit < 1:
            raise InvalidGraph(f"recursion_limit must be at least 1, got {recursion_limit}")
        return CompiledGraph(
            plan,
            checkpoint=checkpoint,
            interrupt_before=frozenset(interrupt_before),
            interrupt_after=frozenset(interrupt_after),
            recursion_limit=recursion_limit,
        )

    def _hash(self) -> str:
        """A stable hash of the graph's shape, functions and state schema (stored with each run)."""
        h = hashlib.sha256()
        h.update(self.schema.describe().encode())
        for m in (self.input_schema, self.output_schema):
            h.update(f"schema:{'' if m is None else StateSchema(m).describe()}".encode())
        for name, node in sorted(self._nodes.items()):
            fn = _qualname(node.fn) if node.subgraph is None else f"subgraph:{node.subgraph.plan.graph_hash}"
            h.update(f"n:{name}:{fn}:{node.on_error}:{node.remote}".encode())
        for src, targets in sorted(self._edges.items()):
            h.update(f"e:{src}:{','.join(targets)}".encode())
        for src, routes in sorted(self._routes.items()):
            h.update(f"r:{src}:{','.join(_qualname(r.fn) for r in routes)}".encode())
        for sources, t in self._joins:
            h.update(f"j:{','.join(sources)}:{t}".encode())
        return h.hexdigest()[:16]


def _input_model(fn: Callable[..., Any], state: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model ``fn``'s first parameter is annotated with, when it is not the state."""
    try:
        params = list(inspect.signature(fn).parameters.values())
        hints = typing.get_type_hints(fn) if params else {}
    except (TypeError, ValueError, NameError):  # builtins, partials of C functions, forward refs
        return None
    hint = hints.get(params[0].name) if params else None
    if isinstance(hint, type) and issubclass(hint, BaseModel) and not issubclass(state, hint):
        return hint
    return None


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
