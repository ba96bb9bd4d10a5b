"""Checkpoint records to bytes and back, with ``json`` only.

Never pickle: a checkpoint store may be shared, copied or downloaded, and unpickling its bytes runs
whatever code they name (LangGraph's CVE-2026-28277). JSON can only ever decode to plain values, so a
tampered store yields ``CheckpointCorrupt`` at worst.

Values are checked *before* they are written, so a bad value fails at the node that produced it
rather than on a later resume: ``NotJSON`` names the field path (``delta.items[3]``). Tuples are stored
as arrays; dict keys must be strings (``json`` would silently turn ``{1: x}`` into ``{"1": x}``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from engine.graph.checkpoints.base import FORMAT, JSON, RUN_STATUSES, SUPPORTED_FORMATS, RunRecord, StepRecord
from engine.graph.checkpoints.errors import CheckpointCorrupt, NotJSON

# check_circular off: every value is walked by _is_json first, which a cycle never gets through
_ENCODER = json.JSONEncoder(
    separators=(",", ":"),
    ensure_ascii=False,
    allow_nan=False,
    check_circular=False,
    default=lambda o: _as_dict(o),
)
_EMPTY: dict[type, str] = {dict: "{}", list: "[]", tuple: "[]"}  # most records' meta, and a last step's next
_DECODE = json.JSONDecoder().decode


def dumps(value: JSON, path: str = "value") -> str:
    """``value`` as compact JSON text; ``NotJSON`` naming the field path if it is not plain JSON."""
    if not value:
        empty = _EMPTY.get(type(value))
        if empty is not None:
            return empty
    if not _is_json(value):
        _raise_at(value, path)
    return _ENCODER.encode(value)


def loads(text: str | bytes, where: str) -> JSON:
    """Parse JSON text read from storage; ``CheckpointCorrupt`` naming ``where`` if it is not JSON."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return _DECODE(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointCorrupt(f"{where}: stored data is not valid JSON ({exc})") from None


def encode(record: RunRecord | StepRecord) -> bytes:
    """One record as compact UTF-8 JSON (no newline), tagged with its kind and format version."""
    if isinstance(record, StepRecord):
        data: dict[str, Any] = {
            "kind": "step",
            "format": record.format,
            "run_id": record.run_id,
            "step": record.step,
            "node": record.node,
            "delta": record.delta,
            "next": list(record.next),
            "created_at": record.created_at,
            "meta": record.meta,
        }
        check_json(record.delta, "delta")
    else:
        data = {
            "kind": "run",
            "format": FORMAT,
            "run_id": record.run_id,
            "graph": record.graph,
            "graph_hash": record.graph_hash,
            "created_at": record.created_at,
            "status": record.status,
            "parent": list(record.parent) if record.parent is not None else None,
            "meta": record.meta,
        }
    check_json(record.meta, "meta")
    # the other fields are typed by the record itself; only delta and meta carry user values
    return _ENCODER.encode(data).encode("utf-8")


def decode(data: str | bytes, *, where: str = "checkpoint") -> RunRecord | StepRecord:
    """A record from ``encode``'s bytes; ``CheckpointCorrupt`` naming ``where``, run and step if unusable."""
    obj = loads(data, where)
    if not isinstance(obj, dict):
        raise CheckpointCorrupt(f"{where}: expected a JSON object, found {type(obj).__name__}")
    if obj.get("kind") == "run":
        return run_from_dict(obj, where)
    if obj.get("kind") == "step":
        return step_from_dict(obj, where)
    raise CheckpointCorrupt(f"{where}: unknown record kind {obj.get('kind')!r}")


def decode_step(data: str | bytes, *, where: str) -> StepRecord:
    """Like ``decode`` for data that must hold a step."""
    record = decode(data, where=where)
    if not isinstance(record, StepRecord):
        raise CheckpointCorrupt(f"{where}: expected a step record, found a run record")
    return record


def decode_run(data: str | bytes, *, where: str) -> RunRecord:
    """Like ``decode`` for data that must hold a run."""
    record = decode(data, where=where)
    if not isinstance(record, RunRecord):
        raise CheckpointCorrupt(f"{where}: expected a run record, found a step record")
    return record


def step_from_dict(obj: Mapping[str, Any], where: str) -> StepRecord:
    """A ``StepRecord`` from its decoded fields, checking each one's type and the format version."""
    label = f"{where} (run '{obj.get('run_id')}', step {obj.get('step')})"
    check_format(obj.get("format"), label)
    try:
        record = StepRecord(
            run_id=_typed(obj["run_id"], str),
            step=_typed(obj["step"], int),
            node=_typed(obj["node"], str),
            delta=_typed(obj["delta"], dict),
            next=tuple(_typed(n, str) for n in _typed(obj["next"], list)),
            created_at=float(_typed(obj["created_at"], (int, float))),
            meta=_typed(obj.get("meta", {}), dict),
            format=obj["format"],
        )
    except (KeyError, TypeError) as exc:
        raise CheckpointCorrupt(f"{label}: malformed step record ({_why(exc)})") from None
    return record


def run_from_dict(obj: Mapping[str, Any], where: str) -> RunRecord:
    """A ``RunRecord`` from its decoded fields, checking each one's type and the format version."""
    label = f"{where} (run '{obj.get('run_id')}')"
    check_format(obj.get("format"), label)
    try:
        parent = obj.get("parent")
        if parent is not None:
            pair = _typed(parent, list)
            if len(pair) != 2:
                raise TypeError("parent must be [run_id, step]")
            parent = (_typed(pair[0], str), _typed(pair[1], int))
        status = _typed(obj["status"], str)
        if status not in RUN_STATUSES:
            raise TypeError(f"unknown status {status!r}")
        record = RunRecord(
            run_id=_typed(obj["run_id"], str),
            graph=_typed(obj["graph"], str),
            graph_hash=_typed(obj["graph_hash"], str),
            created_at=float(_typed(obj["created_at"], (int, float))),
            status=status,  # checked against RUN_STATUSES above
            parent=parent,
            meta=_typed(obj.get("meta", {}), dict),
        )
    except (KeyError, TypeError) as exc:
        raise CheckpointCorrupt(f"{label}: malformed run record ({_why(exc)})") from None
    return record


def check_format(version: object, label: str) -> None:
    """Refuse a record whose format version this headrace cannot read."""
    if type(version) is not int or version not in SUPPORTED_FORMATS:
        newer = type(version) is int and version > FORMAT
        hint = "it was written by a newer headrace; upgrade to read it" if newer else "the record is damaged"
        raise CheckpointCorrupt(
            f"{label}: unknown checkpoint format {version!r} (this headrace reads "
            f"{sorted(SUPPORTED_FORMATS)}); {hint}"
        )


def check_json(value: JSON, path: str) -> None:
    """Raise ``NotJSON`` naming the first field under ``path`` that is not plain JSON."""
    if not _is_json(value):
        _raise_at(value, path)


def _is_json(value: object) -> bool:
    # The fast path: no path strings are built unless something is wrong.
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return True
    if t is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    if t is dict:
        return all(type(k) is str and _is_json(v) for k, v in value.items())  # type: ignore[attr-defined]
    if t is list or t is tuple:
        return all(_is_json(v) for v in value)  # type: ignore[attr-defined]
    if isinstance(value, bool | int | str):  # enums and other subclasses encode as their base value
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_is_json(v) for v in value)
    return False


def _raise_at(value: object, path: str) -> None:
    """Walk ``value`` again, this time keeping the path, and raise at the first non-JSON part."""
    if isinstance(value, float) and not math.isfinite(value):
        raise NotJSON(f"{path} is {value!r}: JSON has no NaN or infinity; store None or a string instead")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise NotJSON(
                    f"{path} has the key {k!r} of type {type(k).__name__}: JSON object keys are strings"
                )
            _raise_at(v, f"{path}.{k}" if k.isidentifier() else f"{path}[{k!r}]")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _raise_at(v, f"{path}[{i}]")
        return
    if not _is_json(value):
        raise NotJSON(
            f"{path} is a {type(value).__name__}, which is not JSON; checkpoints store JSON values only "
            "(dict with str keys, list, str, int, float, bool, None): convert it in the node, "
            "e.g. a set to a sorted list, bytes to base64 text, a model with .model_dump(mode='json')"
        )


def _as_dict(o: object) -> dict[str, Any]:
    # Only reached for a Mapping that is not a dict (already validated): json cannot encode those itself.
    if isinstance(o, Mapping):
        return dict(o)
    raise TypeError(f"{type(o).__name__} is not JSON")


def _typed(value: Any, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = kind.__name__ if isinstance(kind, type) else "number"
        raise TypeError(f"expected {expected}, found {type(value).__name__}")
    return value


def _why(exc: Exception) -> str:
    return f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
