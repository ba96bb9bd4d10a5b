"""What ``pii_detect`` and ``pii_mask`` do to a batch: ``Table -> Table`` functions, registered as
their ops' ``batch`` behaviour in :mod:`operators`.

A column is first screened in Arrow (``pyarrow.compute.match_substring_regex`` with the triggers of the
asked types); only the rows that can hold a finding go through the Python detectors, and only the rows
that changed are replaced (``replace_with_mask``), so clean text costs one vectorised pass.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import RunError
from operators.pii import (
    ANY_NAME_TRIGGER,
    TRIGGERS,
    Finding,
    PiiDetect,
    PiiMask,
    PresidioMissing,
    find_pii,
    presidio_names,
)
from operators.pii_text import mask_values, text_type

__all__ = ["FINDINGS_ARROW_TYPE", "MIN_KEY_CHARS", "hash_tag"]

BatchFn = Callable[[pa.Table], pa.Table]
MIN_KEY_CHARS = 16
"""The shortest key ``mode: hash`` accepts: a short key makes a hashed SSN or card guessable."""

FINDINGS_ARROW_TYPE = pa.list_(
    pa.struct(
        [
            pa.field("type", pa.string()),
            pa.field("column", pa.string()),
            pa.field("start", pa.int32()),
            pa.field("end", pa.int32()),
        ]
    )
)

_Person = Callable[[str], Iterable[tuple[int, int]]] | None


def hash_tag(kind: str, value: str, key: bytes) -> str:
    """``[TYPE:<first 12 hex digits of HMAC-SHA256(key, value)>]``: equal values give equal tags."""
    digest = hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:12]
    return f"[{kind}:{digest}]"


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _person_detector(spec: PiiDetect | PiiMask) -> _Person:
    if spec.detector != "presidio" or "PERSON" not in spec.types:
        return None
    try:
        return presidio_names(spec.presidio_model)
    except PresidioMissing as exc:
        raise RunError(f"{spec.op}: {exc} on this machine") from None


def _column(table: pa.Table, name: str, op: str) -> pa.Array:
    if name not in table.column_names:
        raise ValueError(
            f"{op}: column '{name}' is not in the batch (columns: {', '.join(table.column_names)})"
        )
    return table[name].combine_chunks()


def _scan(
    column: pa.Array, spec: PiiDetect | PiiMask, person: _Person
) -> list[tuple[int, str, list[Finding]]]:
    """``(row, text, findings)`` for each row of ``column`` that holds any finding.

    Each type's trigger is matched in Arrow first; a row then runs only the detectors whose trigger it
    matched, and a row that matched none never reaches Python.
    """
    if not _is_text(column.type) or len(column) == 0:
        return []  # null-typed (all missing) or not text: nothing to find
    triggers = {**TRIGGERS, "PERSON": ANY_NAME_TRIGGER} if person is not None else TRIGGERS
    hits = {
        kind: pc.fill_null(pc.match_substring_regex(column, triggers[kind]), False).to_numpy(
            zero_copy_only=False
        )
        for kind in spec.types
    }
    rows = np.flatnonzero(np.logical_or.reduce(list(hits.values())))
    found = []
    for row, text in zip(rows.tolist(), column.take(pa.array(rows)).to_pylist(), strict=True):
        findings = find_pii(text, [k for k in spec.types if hits[k][row]], person=person)
        if findings:
            found.append((row, text, findings))
    return found


def _pii_detect(spec: PiiDetect) -> BatchFn:
    person = _person_detector(spec)

    def run(table: pa.Table) -> pa.Table:
        per_row: list[list[dict[str, object]]] = [[] for _ in range(table.num_rows)]
        for name in spec.columns:
            for row, _, findings in _scan(_column(table, name, spec.op), spec, person):
                per_row[row].extend(
                    {"type": f.type, "column": name, "start": f.start, "end": f.end} for f in findings
                )
        values = pa.array(per_row, FINDINGS_ARROW_TYPE)
        if spec.output in table.column_names:
            return table.set_column(table.column_names.index(spec.output), spec.output, values)
        return table.append_column(spec.output, values)

    return run


def _pii_mask(spec: PiiMask) -> BatchFn:
    person = _person_detector(spec)
    modes = spec.modes()
    key = _key(spec) if "hash" in (modes.values() if modes is not None else [spec.mode]) else b""

    whole = set(spec.whole)

    def run(table: pa.Table) -> pa.Table:
        everything = {
            f.name: spec.mode for f in table.schema if spec.any_type or _is_text(f.type) or f.name in whole
        }
        targets = everything if modes is None else {**modes, **dict.fromkeys(spec.whole, spec.mode)}
        for name, mode in targets.items():
            column = _column(table, name, spec.op)
            if name in whole or (spec.any_type and not _is_text(column.type)):
                masked = _mask_any(column, name in whole, spec, person, mode, key)
                table = table.set_column(table.column_names.index(name), name, masked)
                continue
            found = _scan(column, spec, person)
            if not found:
                continue
            changed = _row_mask(len(column), [r for r, _, _ in found])
            if mode == "drop":
                masked = pc.if_else(changed, pa.scalar(None, column.type), column)
            else:
                texts = [_replace(text, findings, mode, key) for _, text, findings in found]
                masked = pc.replace_with_mask(column, changed, pa.array(texts, column.type))
            table = table.set_column(table.column_names.index(name), table.field(name), masked)
        return table

    return run


def _mask_any(
    column: pa.Array, whole: bool, spec: PiiMask, person: _Person, mode: str, key: bytes
) -> pa.Array:
    """A column of any type with every leaf masked (``whole``: replaced), as text. A type the detectors
    cannot read leaf by leaf (a union, an extension type) is masked as the text of each value, so nothing
    reaches a prompt unscanned (``validate --strict`` warns about such a prompt input)."""
    if text_type(column.type) is None:
        column = pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string())

    def leaf(text: str) -> str | None:
        if whole:
            if mode == "drop":
                return None
            return hash_tag("PII", text, key) if mode == "hash" else "[PII]"
        findings = find_pii(text, spec.types, person=person)
        if not findings:
            return text
        return None if mode == "drop" else _replace(text, findings, mode, key)

    return mask_values(column, leaf)


def _row_mask(size: int, rows: list[int]) -> pa.Array:
    flags = [False] * size
    for r in rows:
        flags[r] = True
    return pa.array(flags, pa.bool_())


def _replace(text: str, findings: list[Finding], mode: str, key: bytes) -> str:
    parts: list[str] = []
    at = 0
    for f in findings:
        value = text[f.start : f.end]
        parts += [text[at : f.start], hash_tag(f.type, value, key) if mode == "hash" else f"[{f.type}]"]
        at = f.end
    parts.append(text[at:])
    return "".join(parts)


def _key(spec: PiiMask) -> bytes:
    """The hash key from the environment; there is no default key, so a missing one stops the run."""
    value = os.environ.get(spec.key_env, "")
    if len(value) < MIN_KEY_CHARS:
        state = "is not set" if not value else f"holds fewer than {MIN_KEY_CHARS} characters"
        raise RunError(
            f"pii_mask with mode hash reads its key from the environment variable {spec.key_env}, which "
            f"{state} on this machine; set it to a secret of {MIN_KEY_CHARS} or more characters on every "
            "machine that runs tasks (or use mode mask)"
        )
    return value.encode("utf-8")
