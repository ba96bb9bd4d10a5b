"""The table of ops: each ``op`` name maps to the node model that describes it and to its behaviour.

Built-in ops come from the ``connectors`` and ``operators`` packages; third parties add theirs through
the ``headrace.ops`` entry-point group (an entry point names a module, or a node model class, or a
callable returning a list of them). The discriminated union of :func:`pipeline_model` is assembled from
this table, so a plugin's op brings its own schema.

Behaviour is held here too, by kind (:data:`KINDS`): ``batch`` (spec -> per-batch function),
``state`` (spec -> a barrier's stream-wide state), ``reader`` (a source's reader), ``writer`` (a sink's
part writer class), ``graph`` (a state-graph node other than ``call``: ``(name, spec, base_dir) ->``
the node's function). Register it with the model (``register_op(Model, batch=fn)``) or apart from it
(:func:`register_behaviour`); a value may be an import path (``"pkg.mod:name"``), resolved on first use,
so validating a pipeline never imports what only running it needs. An LLM op's pool needs no entry: a
model that subclasses ``operators.llm.LlmSpec`` is pooled and runs on the shared pool machinery.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, overload

from pydantic import Field, create_model

from engine.policy import Policy, PolicyViolation, import_object
from engine.spec.models import NodeName, NodeSpec, Pipeline

ENTRY_POINT_GROUP = "headrace.ops"
_BUILTIN_MODULES = ("connectors", "operators")

Kind = Literal["batch", "state", "reader", "writer", "graph"]
KINDS: tuple[Kind, ...] = ("batch", "state", "reader", "writer", "graph")

_ops: dict[str, type[NodeSpec]] = {}
_behaviour: dict[str, dict[str, Any]] = {}
_lock = threading.Lock()
_loaded = False
_loading = threading.RLock()
"""Held while the built-in ops and the plugins are loaded (re-entrant: a module may ask for ops)."""

N = TypeVar("N", bound=type[NodeSpec])


class RegistryError(Exception):
    """Two models claim one op name, or a model has no literal `op`."""


def op_name(model: type[NodeSpec]) -> str:
    """The literal ``op`` value a node model declares."""
    annotation = model.model_fields["op"].annotation
    args = get_args(annotation)
    if len(args) != 1 or not isinstance(args[0], str):
        raise RegistryError(f"{model.__qualname__} must declare `op: Literal['name']`")
    return args[0]


@overload
def register_op(model: N, **behaviour: Any) -> N: ...


@overload
def register_op(model: None = None, **behaviour: Any) -> Any: ...


def register_op(model: N | None = None, **behaviour: Any) -> Any:
    """Class decorator: make ``model`` the schema of its ``op``, with its behaviour by kind
    (``@register_op`` or ``@register_op(batch=...)``, or called as ``register_op(Model, reader=...)``)."""
    if model is None:
        return lambda m: register_op(m, **behaviour)
    name = op_name(model)
    if behaviour:
        register_behaviour(name, **behaviour)
    return _register_model(name, model)


def register_behaviour(op: str, **behaviour: Any) -> None:
    """Register what ``op`` does, by kind (see :data:`KINDS`); a value may be an import path."""
    unknown = set(behaviour) - set(KINDS)
    if unknown:
        raise RegistryError(f"op '{op}': unknown behaviour {sorted(unknown)}; known: {', '.join(KINDS)}")
    with _lock:
        _behaviour.setdefault(op, {}).update(behaviour)


def behaviour(op: str, kind: Kind) -> Any | None:
    """What ``op`` does of ``kind`` (None when it has none): built-ins and plugins, import paths resolved."""
    _ensure_loaded()
    value = _behaviour.get(op, {}).get(kind)
    if isinstance(value, str):
        module, _, attr = value.partition(":")
        value = getattr(importlib.import_module(module), attr)
        with _lock:
            _behaviour[op][kind] = value
    return value


def behaviour_kinds(op: str) -> set[str]:
    """The kinds of behaviour ``op`` has registered, without importing any of them."""
    _ensure_loaded()
    return set(_behaviour.get(op, {}))


def _register_model(name: str, model: N) -> N:
    with _lock:
        existing = _ops.get(name)
        if existing is not None and existing is not model:
            raise RegistryError(
                f"op '{name}' is registered twice: {existing.__module__}.{existing.__qualname__} "
                f"and {model.__module__}.{model.__qualname__}"
            )
        _ops[name] = model
    pipeline_model.cache_clear()
    return model


def ops() -> Mapping[str, type[NodeSpec]]:
    """Every registered op, built-ins and plugins, by name."""
    _ensure_loaded()
    return dict(_ops)


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    # once per process: a server's first concurrent requests would otherwise each scan every installed
    # distribution's entry points and rebuild the pipeline model (seen as 10% of a loaded service's time)
    with _loading:
        if _loaded:
            return
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            _register_loaded(load_entry_point(ep))
        _loaded = True


def load_entry_point(ep: EntryPoint, policy: Policy | None = None) -> Any:
    """A plugin's module, or the class or function it names, by the operator's module policy: the module
    must be allowed and an attribute must be defined in an allowed module (an entry point naming
    ``pkg:subprocess.run`` is refused before anything is called)."""
    policy = Policy.from_env() if policy is None else policy
    where = f"plugin entry point {ep.name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP})"
    try:
        if ep.attr is None:
            problem = policy.module_problem(ep.module)
            if problem is not None:
                raise PolicyViolation(problem)
            return importlib.import_module(ep.module)
        return import_object(f"{ep.module}:{ep.attr}", policy)
    except PolicyViolation as exc:
        raise RegistryError(f"{where}: {exc}; uninstall it or allow its module") from None


def _register_loaded(obj: Any) -> None:
    if isinstance(obj, type) and issubclass(obj, NodeSpec):
        register_op(obj)
    elif callable(obj) and not isinstance(obj, type):
        for model in obj():
            register_op(model)
    # a module: importing it registered its ops through @register_op


@lru_cache(maxsize=1)
def pipeline_model() -> type[Pipeline]:
    """The Pipeline model whose ``nodes`` is the discriminated union of every registered op."""
    models = list(ops().values())
    union: Any = Union[tuple(models)] if len(models) > 1 else models[0]  # noqa: UP007
    node = Annotated[union, Field(discriminator="op")]
    return create_model(
        "Pipeline",
        __base__=Pipeline,
        __doc__=Pipeline.__doc__,
        nodes=(
            dict[NodeName, node],
            Field(min_length=1, description=Pipeline.model_fields["nodes"].description),
        ),
    )
