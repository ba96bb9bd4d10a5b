"""Columns of any Arrow type as text for the PII ops: numbers, binary, structs, lists and maps.

A prompt renders whatever a column holds (``{{ contact.email }}``, ``{{ tags[0] }}``, a card number a
CSV reader typed as int64), so ``pii.mask_before_llm`` must scan every value, not only string columns.
:func:`text_type` maps a type to the one the masked column gets: numeric and binary leaves become
strings, nested types keep their shape with those leaves changed, and leaves no detector could find
anything in (booleans, dates, times, nulls) stay as they are. The output type depends only on the input
type, so every batch of a column has the same schema. ``None`` means a type the ops cannot read.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pyarrow as pa

Leaf = Callable[[str], str | None]
"""Masks one text leaf; returns it changed, or None to null the whole cell (``drop``)."""


def text_type(kind: pa.DataType) -> pa.DataType | None:
    """The type a column of ``kind`` has once its readable leaves are text (None: not readable)."""
    t = pa.types
    if t.is_string(kind) or t.is_large_string(kind) or t.is_string_view(kind):
        return kind
    if t.is_integer(kind) or t.is_floating(kind) or t.is_decimal(kind):
        return pa.string()
    if t.is_binary(kind) or t.is_large_binary(kind) or t.is_fixed_size_binary(kind) or t.is_binary_view(kind):
        return pa.string()
    if t.is_dictionary(kind):
        return text_type(kind.value_type)
    if t.is_boolean(kind) or t.is_temporal(kind) or t.is_null(kind):
        return kind
    if t.is_struct(kind):
        fields = [kind.field(i) for i in range(kind.num_fields)]
        inner = [text_type(f.type) for f in fields]
        if any(x is None for x in inner):
            return None
        return pa.struct([pa.field(f.name, x, f.nullable) for f, x in zip(fields, inner, strict=True)])
    if t.is_list(kind) or t.is_large_list(kind) or t.is_fixed_size_list(kind):
        item = text_type(kind.value_type)
        if item is None:
            return None
        return pa.large_list(item) if t.is_large_list(kind) else pa.list_(item)
    if t.is_map(kind):
        key, item = text_type(kind.key_type), text_type(kind.item_type)
        return None if key is None or item is None else pa.map_(key, item)
    return None


def _as_text(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float, Decimal)):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return value


class _Dropped(Exception):
    """A leaf asked for its whole cell to be nulled."""


def mask_values(column: pa.Array, leaf: Leaf) -> pa.Array:
    """``column`` with every readable leaf turned to text and passed through ``leaf`` (the caller checks
    :func:`text_type` first). A cell where ``leaf`` returns None becomes null."""
    target = text_type(column.type)
    assert target is not None  # callers check readability first

    def walk(value: Any) -> Any:
        value = _as_text(value)
        if isinstance(value, str):
            changed = leaf(value)
            if changed is None:
                raise _Dropped
            return changed
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, tuple):  # a map's (key, value) pair
            return tuple(walk(v) for v in value)
        return value

    out = []
    for cell in column.to_pylist():
        try:
            out.append(walk(cell))
        except _Dropped:
            out.append(None)
    return pa.array(out, target)
