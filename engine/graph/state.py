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

import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

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

    __slots__ = ("adapter", "append", "name", "reducer")

    def __init__(self, name: str, adapter: TypeAdapter[Any], reducer: Reducer | None, append: bool):
        self.name = name
        self.adapter = adapter
        self.reducer = reducer
        self.append = append


class StateSchema(Generic[S]):
    """A state model's fields and reducers, with fast update validation and merging."""

    def __init__(self, model: type[S]) -> None:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise InvalidGraph(f"Graph(state) needs a pydantic BaseModel subclass, got {model!r}")
        self.model = model
        self.fields: dict[str, _Field] = {}
        for name, info in model.model_fields.items():
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
            self.fields[name] = _Field(name, TypeAdapter(annotation), reducer, named_append)
        self._names = set(self.fields)
        self._fast = not model.__private_attributes__ and model.model_config.get("extra") != "allow"

    # -- values ---------------------------------------------------------------------------------

    def initial(self, value: Mapping[str, Any] | BaseModel | None) -> dict[str, Any]:
        """Validate a run's input with the whole model (defaults filled in) and return its values."""
        if isinstance(value, self.model):
            return dict(value.__dict__)
        data = value.model_dump() if isinstance(value, BaseModel) else dict(value or {})
        try:
            return dict(self.model.model_validate(data).__dict__)
        except ValidationError as exc:
            raise InvalidUpdate(
                f"the input does not fit state {self.model.__name__}: {exc}", node="__input__", key=""
            ) from exc

    def snapshot(self, values: Mapping[str, Any]) -> S:
        """A model instance of ``values`` without re-validation (each value was validated on entry)."""
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


def _is_plain_callable(meta: Any) -> bool:
    # pydantic constraint objects (annotated_types.Ge, Field metadata...) are not callables; a
    # reducer is a function, builtin or an object with __call__ taking (old, new)
    return callable(meta) and not hasattr(meta, "__get_pydantic_core_schema__")
