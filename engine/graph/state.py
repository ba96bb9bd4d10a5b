"""The state schema of a graph: fields, defaults, reducers, update validation and the fold of deltas.

The state is a pydantic model written by the user. Each field may carry a reducer in its annotation::

    class S(BaseModel):
        n: int = 0                                        # no reducer: an update replaces the value
        log: Annotated[list[str], operator.add] = []      # any callable(old, new) -> merged
        seen: Annotated[list[str], "append"] = []         # a named reducer (see REDUCERS)

Named reducers: ``"replace"`` (the default), ``"append"`` (a list field takes one item or a list of
items), ``"add"`` (``old + new``: numbers, lists, strings) and ``"merge"`` (``{**old, **new}`` for dicts).

Inside the runner the state is a plain ``dict`` of field values; nodes receive a fresh model instance
built from it without re-validation (:meth:`StateSchema.snapshot`), because every value that entered
it was validated: the input once with the whole model, and each update key with a cached
``TypeAdapter`` of that field (its constraints included). Custom reducers receive the update value
validated as the field's type. Updates and states are serialised with ``model_dump(mode="json")``
semantics: declared types only, never pickle.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Generic, TypeVar, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError, create_model

from engine.graph.errors import InvalidGraph, InvalidUpdate

S = TypeVar("S", bound=BaseModel)
Reducer = Callable[[Any, Any], Any]


def _append(old: Any, new: Any) -> Any:
    return [*old, *new]


def _merge(old: Any, new: Any) -> Any:
    return {**old, **new}


REDUCERS: dict[str, Reducer | None] = {
    "replace": None,
    "append": _append,
    "add": operator.add,
    "merge": _merge,
}
"""Reducers a field may name in its ``Annotated`` metadata; ``None`` means replace."""


class _Field:
    """What the runner needs of one state field, computed once per graph."""

    __slots__ = ("adapter", "append", "empty", "name", "reducer")

    def __init__(self, name: str, adapter: TypeAdapter[Any], reducer: Reducer | None, append: bool):
        self.name = name
        self.adapter = adapter
        self.reducer = reducer
        self.append = append
        self.empty: Callable[[], Any] | object = _NO_EMPTY
        """The field type's empty value (``list``, ``int``...): what a reducer starts from."""


class StateSchema(Generic[S]):
    """A state model's fields and reducers, with fast update validation and merging."""

    def __init__(self, model: type[S], extra: Sequence[type[BaseModel]] = ()) -> None:
        """``extra``: input, output and private schemas whose fields join the state's as channels
        (a field the state does not declare starts as its default, or ``None``)."""
        for m in (model, *extra):
            if not (isinstance(m, type) and issubclass(m, BaseModel)):
                raise InvalidGraph(
                    f"Graph(state) and its schemas must be pydantic BaseModel subclasses, got {m!r}"
                )
        self.model = model
        channels = _combine(model, extra)
        self.channels: type[BaseModel] = channels
        self._view: StateSchema[S] | None = None if channels is model else StateSchema(model)
        self._views: dict[type[BaseModel], StateSchema[Any]] = {}
        self.fields: dict[str, _Field] = {}
        for name, info in channels.model_fields.items():
            reducer: Reducer | None = None
            named_append = False
            constraints: list[Any] = []
            for meta in info.metadata:
                if isinstance(meta, str):
                    if meta not in REDUCERS:
                        raise InvalidGraph(
                            f"state field {name!r} names reducer {meta!r}; "
                            f"known reducers: {', '.join(REDUCERS)}"
                        )
                    reducer, named_append = REDUCERS[meta], meta == "append"
                elif callable(meta) and not isinstance(meta, type) and _is_plain_callable(meta):
                    reducer = meta
                else:
                    constraints.append(meta)
            annotation: Any = info.annotation
            for constraint in constraints:  # nested Annotated flattens: field constraints kept
                annotation = Annotated[annotation, constraint]
            spec = self.fields[name] = _Field(name, TypeAdapter(annotation), reducer, named_append)
            if reducer is not None:
                spec.empty = _empty_of(info.annotation)
        self._names = set(self.fields)
        self._fast = not model.__private_attributes__ and model.model_config.get("extra") != "allow"

    def view(self, model: type[BaseModel], values: Mapping[str, Any]) -> Any:
        """An instance of ``model`` (an input, output or private schema) from the channels it has."""
        if model is self.channels:
            return self.snapshot(values)
        schema = self._views.get(model)
        if schema is None:
            schema = self._views[model] = StateSchema(model)
        return schema.snapshot({k: values[k] for k in schema.fields if k in values})

    # -- values ---------------------------------------------------------------------------------

    def initial(self, value: Mapping[str, Any] | BaseModel | None) -> dict[str, Any]:
        """A fresh run's state: the input validated with the whole model (defaults filled in), each
        given field with a reducer passed through it from its type's empty value (LangGraph's start
        from empty channels: ``operator.add`` keeps the value, a custom reducer sees it)."""
        if isinstance(value, self.model):
            data: dict[str, Any] = dict(value.__dict__)
            given = set(value.model_fields_set)
        else:
            data = value.model_dump() if isinstance(value, BaseModel) else dict(value or {})
            given = set(data)
            for key in given:  # an `append` field takes one item, as in a node's update
                spec = self.fields.get(key)
                if spec is not None and spec.append and not isinstance(data[key], (list, tuple)):
                    data[key] = [data[key]]
        try:
            values = dict(self.channels.model_validate(data).__dict__)
        except ValidationError as exc:
            raise InvalidUpdate(
                f"the input does not fit state {self.model.__name__}: {exc}", node="__input__", key=""
            ) from exc
        for key in given:
            spec = self.fields.get(key)
            if spec is not None and spec.reducer is not None and spec.empty is not _NO_EMPTY:
                values[key] = spec.reducer(spec.empty(), values[key])  # type: ignore[operator]
        return values

    def paused(
        self,
        values: Mapping[str, Any],
        interrupts: list[dict[str, Any]],
        model: type[BaseModel] | None = None,
    ) -> Any:
        """A state (or ``model``) instance that also carries the pending interrupts as ``__interrupt__``."""
        inst = self.snapshot(values) if model is None else self.view(model, values)
        cls = _paused_class(type(inst))
        object.__setattr__(inst, "__class__", cls)
        object.__setattr__(inst, "__pydantic_private__", {"__interrupt__": list(interrupts)})
        return inst

    def snapshot(self, values: Mapping[str, Any]) -> S:
        """A model instance of ``values`` without re-validation (each value was validated on entry)."""
        if self._view is not None:  # private channels are left out of the state the caller sees
            return self._view.snapshot({k: values[k] for k in self._view.fields})
        if not self._fast:
            return self.model.model_construct(**values)
        inst = self.model.__new__(self.model)
        object.__setattr__(inst, "__dict__", dict(values))
        object.__setattr__(inst, "__pydantic_fields_set__", set(self._names))
        object.__setattr__(inst, "__pydantic_extra__", None)
        object.__setattr__(inst, "__pydantic_private__", None)
        return inst

    # -- updates --------------------------------------------------------------------------------

    def validate(self, node: str, update: Mapping[str, Any], *, source: str = "") -> dict[str, Any]:
        """Check each key against the model and each value against its field's type.

        ``append`` fields take one item or a list; the result always holds a list there. ``source``
        says where the values come from in messages (default: ``node 'NAME' returned``).
        """
        who = source or f"node {node!r} returned"
        out: dict[str, Any] = {}
        fields = self.fields
        for key, value in update.items():
            spec = fields.get(key)
            if spec is None:
                raise InvalidUpdate(
                    f"{who} key {key!r}, which state {self.model.__name__} does not "
                    f"declare; declare it as a field or drop it (fields: {', '.join(fields)})",
                    node=node,
                    key=key,
                )
            if spec.append and not isinstance(value, (list, tuple)):
                value = [value]
            try:
                out[key] = spec.adapter.validate_python(value)
            except ValidationError as exc:
                raise InvalidUpdate(
                    f"{who} {key}={value!r}, which does not fit field {key!r} of "
                    f"{self.model.__name__}: {exc.errors()[0]['msg']}",
                    node=node,
                    key=key,
                ) from exc
        return out

    def merge(self, values: dict[str, Any], update: Mapping[str, Any]) -> None:
        """Apply a validated update to ``values`` in place, through each field's reducer."""
        fields = self.fields
        for key, value in update.items():
            reducer = fields[key].reducer
            values[key] = value if reducer is None else reducer(values[key], value)

    def replace(self, values: dict[str, Any], update: Mapping[str, Any]) -> None:
        """Set fields without reducers (a ``Send`` payload, a stored full state)."""
        values.update(update)

    # -- JSON -----------------------------------------------------------------------------------

    def dump(self, update: Mapping[str, Any]) -> dict[str, Any]:
        """A validated update (or full state) as JSON-ready values of the declared types."""
        fields = self.fields
        return {k: fields[k].adapter.dump_python(v, mode="json") for k, v in update.items()}

    def load(self, node: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """The inverse of :meth:`dump`: JSON values back to the declared types."""
        return self.validate(node, data)

    def fold(self, initial: Mapping[str, Any], deltas: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """The state after applying ``deltas`` (JSON updates, in step order) to ``initial``."""
        values = dict(initial)
        for delta in deltas:
            self.merge(values, self.load("__checkpoint__", delta))
        return values

    def describe(self) -> str:
        """A stable text of the fields, their types and reducers (part of the graph hash)."""
        parts = []
        for name, spec in self.fields.items():
            info = self.model.model_fields[name]
            reducer = spec.reducer
            rname = "replace" if reducer is None else getattr(reducer, "__qualname__", repr(reducer))
            parts.append(f"{name}:{info.annotation!r}:{rname}")
        return ";".join(parts)


_NO_EMPTY = object()


def _combine(model: type[BaseModel], extra: Sequence[type[BaseModel]]) -> type[BaseModel]:
    """The state model, or one model holding its fields and those of ``extra`` (first one wins)."""
    others = [m for m in extra if m is not model]
    if not others:
        return model
    fields: dict[str, Any] = {}
    for m in (model, *others):
        for name, info in m.model_fields.items():
            if name in fields:
                continue
            if info.is_required() and m is not model:
                info = copy.copy(info)
                info.default = None
                annotation: Any = info.annotation
                fields[name] = (annotation | None, info)
            else:
                fields[name] = (info.annotation, info)
    return create_model(f"{model.__name__}Channels", **fields)


def _empty_of(annotation: Any) -> Callable[[], Any] | object:
    origin = get_origin(annotation) or annotation
    if isinstance(origin, type) and origin not in (object,):
        try:
            origin()
        except Exception:  # a type with required arguments has no empty value
            return _NO_EMPTY
        return origin
    return _NO_EMPTY


_PAUSED: dict[type[BaseModel], type[BaseModel]] = {}


def _paused_class(model: type[BaseModel]) -> type[BaseModel]:
    """A subclass of ``model`` whose instances carry ``__interrupt__`` and compare as ``model``'s."""
    cls = _PAUSED.get(model)
    if cls is None:

        def __eq__(self: BaseModel, other: object) -> bool:
            if isinstance(other, model):
                return self.__dict__ == other.__dict__
            return NotImplemented

        def interrupts(self: BaseModel) -> list[dict[str, Any]]:
            return list((self.__pydantic_private__ or {}).get("__interrupt__", []))

        namespace = {
            "__module__": model.__module__,
            "__qualname__": model.__qualname__,
            "__eq__": __eq__,
            "__hash__": None,
            "__interrupt__": property(interrupts, doc="The interrupts that paused the run."),
        }
        cls = _PAUSED[model] = type(model.__name__, (model,), namespace)
    return cls


def _is_plain_callable(meta: Any) -> bool:
    # pydantic constraint objects (annotated_types.Ge, Field metadata...) are not callables; a
    # reducer is a function, builtin or an object with __call__ taking (old, new)
    return callable(meta) and not hasattr(meta, "__get_pydantic_core_schema__")
