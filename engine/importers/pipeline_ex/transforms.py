"""pipeline_ex's ``data_transform`` operations (``Pipeline.Data.Transformer``) on JSON values.

``filter`` (a ``condition`` such as ``score > 7`` or ``tags contains 'x'`` on each item's ``field``),
``map`` (a ``mapping`` of values, or ``expression: uppercase|lowercase``), ``aggregate`` (``sum``,
``average``, ``count``, ``max``, ``min``, ``first``, ``last``, ``unique``), ``join`` (items of
``right_source`` merged on ``join_key``), ``group_by`` and ``sort`` (``order: asc|desc``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["apply_operations"]


def apply_operations(data: Any, operations: Sequence[Mapping[str, Any]], steps: Mapping[str, Any]) -> Any:
    """``data`` after each operation in turn; an unknown operation is a ``ValueError`` naming it."""
    for op in operations:
        data = _apply(data, op, steps)
    return data


def _field(item: Any, path: str | None) -> Any:
    if not path:
        return item
    for key in path.split("."):
        item = item.get(key) if isinstance(item, Mapping) else None
    return item


def _set(item: Any, path: str, value: Any) -> Any:
    if not isinstance(item, Mapping):
        return item
    head, _, rest = path.partition(".")
    out = dict(item)
    out[head] = _set(out.get(head, {}), rest, value) if rest else value
    return out


def _apply(data: Any, op: Mapping[str, Any], steps: Mapping[str, Any]) -> Any:
    kind = op.get("operation")
    field = op.get("field")
    if kind == "filter":
        keep = lambda item: _holds(item, field, str(op.get("condition") or ""))  # noqa: E731
        return [i for i in data if keep(i)] if isinstance(data, list) else (data if keep(data) else None)
    if kind == "map":
        fn = lambda item: _map(item, field, op.get("mapping"), op.get("expression"))  # noqa: E731
        return [fn(i) for i in data] if isinstance(data, list) else fn(data)
    if kind == "aggregate":
        items = data if isinstance(data, list) else [data]
        values = [v for v in (_field(i, field) for i in items) if v is not None] if field else items
        return _aggregate(values, str(op.get("function", "sum")))
    if kind == "join":
        right = _source(str(op.get("right_source")), steps)
        key = str(op.get("join_key"))

        def join(item: Any) -> Any:
            value = _field(item, op.get("left_field") or key)
            match = next((r for r in right or [] if isinstance(r, Mapping) and r.get(key) == value), None)
            return {**item, **match} if match is not None and isinstance(item, Mapping) else item

        return [join(i) for i in data] if isinstance(data, list) else join(data)
    if kind == "group_by":
        if not isinstance(data, list):
            return {"default": data}
        groups: dict[str, list[Any]] = {}
        for item in data:
            groups.setdefault(_text(_field(item, field)), []).append(item)
        return groups
    if kind == "sort":
        if not isinstance(data, list):
            return data
        return sorted(data, key=lambda i: _sort_key(_field(i, field)), reverse=op.get("order") == "desc")
    raise ValueError(f"unknown data_transform operation {kind!r}")


def _text(value: Any) -> str:
    return (
        "nil" if value is None else ("true" if value is True else "false" if value is False else str(value))
    )


def _sort_key(value: Any) -> tuple[int, Any]:
    # Elixir's term order puts numbers before strings; None sorts first here (atoms sort after numbers)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def _source(source: str, steps: Mapping[str, Any]) -> Any:
    parts = source.split(":")
    if parts[0] == "previous_response" and len(parts) > 1:
        return _field(steps.get(parts[1]), parts[2] if len(parts) > 2 else None)
    return steps.get(source)


def _literal(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if re.fullmatch(r"\d+", text):
        return int(text)
    if re.fullmatch(r"\d+\.\d+", text):
        return float(text)
    return {"true": True, "false": False, "null": None, "nil": None}.get(text, text)


def _holds(item: Any, field: str | None, condition: str) -> bool:
    value = _field(item, field)
    for operator in (">=", "<=", "==", "!=", ">", "<", " contains "):
        if operator in condition:
            left, right = condition.split(operator, 1)
            left_value = _operand(left.strip(), value, item)
            right_value = _literal(right)
            if operator == " contains ":
                if isinstance(left_value, list):
                    return right_value in left_value
                return (
                    isinstance(left_value, str) and isinstance(right_value, str) and right_value in left_value
                )
            if operator == "==":
                return bool(left_value == right_value)
            if operator == "!=":
                return bool(left_value != right_value)
            try:
                return bool(
                    {">": left_value > right_value, "<": left_value < right_value}.get(operator)
                    if operator in (">", "<")
                    else (left_value >= right_value if operator == ">=" else left_value <= right_value)
                )
            except TypeError:
                return False
    return bool(_operand(condition.strip(), value, item))


def _operand(expr: str, value: Any, item: Any) -> Any:
    if expr == "value" or not expr:
        return value
    found = _field(item, expr)
    return found if found is not None or "." in expr else value


def _map(item: Any, field: str | None, mapping: Any, expression: Any) -> Any:
    if isinstance(mapping, Mapping):
        if field:
            current = _field(item, field)
            return _set(item, field, mapping.get(_text(current), current))
        return {**item, **mapping} if isinstance(item, Mapping) else item
    if expression in ("uppercase", "lowercase") and field:
        current = _field(item, field)
        if isinstance(current, str):
            return _set(item, field, current.upper() if expression == "uppercase" else current.lower())
    return item


def _aggregate(values: list[Any], function: str) -> Any:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if function == "sum":
        return sum(numbers)
    if function == "average":
        return sum(numbers) / len(numbers) if numbers else 0
    if function == "count":
        return len(values)
    if function in ("max", "min"):
        return (max if function == "max" else min)(values) if values else None
    if function in ("first", "last"):
        return (values[0] if function == "first" else values[-1]) if values else None
    if function == "unique":
        out: list[Any] = []
        for v in values:
            if v not in out:
                out.append(v)
        return out
    raise ValueError(f"unknown aggregate function {function!r}")
