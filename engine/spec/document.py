"""Read a YAML or JSON pipeline file into plain data plus a map of where every key and value sits.

This module checks the bytes (size, binary data, encoding), picks the format and hands the text to
:mod:`engine.spec.yaml_reader` or :mod:`engine.spec.json_reader`. The position types it returns live in
:mod:`engine.spec.positions` and are re-exported here.
"""

from __future__ import annotations

import re
from typing import Literal

from engine.spec.json_reader import read_json
from engine.spec.positions import Document, JsonPath, Limits, SourceMap, Span, format_path
from engine.spec.positions import fail as _fail
from engine.spec.yaml_reader import read_yaml, resolve_plain_scalar

__all__ = [
    "Document",
    "JsonPath",
    "Limits",
    "SourceMap",
    "Span",
    "format_path",
    "read_document",
    "resolve_plain_scalar",
]


def read_document(
    path: str,
    content: bytes | str | None = None,
    *,
    limits: Limits | None = None,
    fmt: Literal["yaml", "json"] | None = None,
) -> Document:
    """Parse ``path`` (or ``content`` given for it) into a :class:`Document`, or raise ConfigError."""
    limits = limits or Limits()
    raw = _read_bytes(path, content, limits)
    text = _decode(path, raw)
    if fmt is None:
        fmt = _guess_format(path, text)
    if not text.strip() or (fmt == "yaml" and _only_comments(text)):
        raise _fail(
            path,
            1,
            1,
            "the file is empty",
            "a pipeline needs at least `version`, `name` and `nodes`",
        )
    if fmt == "json":
        return read_json(path, text, limits)
    return read_yaml(path, text, limits)


def _read_bytes(path: str, content: bytes | str | None, limits: Limits) -> bytes:
    if content is None:
        try:
            with open(path, "rb") as fh:
                raw = fh.read(limits.max_bytes + 1)
        except FileNotFoundError:
            raise _fail(path, 1, 1, "no such file", code="not_found") from None
        except IsADirectoryError:
            raise _fail(path, 1, 1, "is a directory, not a pipeline file", code="not_found") from None
        except OSError as exc:
            raise _fail(path, 1, 1, f"cannot read the file: {exc.strerror}", code="not_found") from None
    else:
        raw = content.encode() if isinstance(content, str) else content
    if len(raw) > limits.max_bytes:
        size = "more than " + _mib(limits.max_bytes) if content is None else _mib(len(raw))
        raise _fail(
            path,
            1,
            1,
            f"the file is {size}; pipeline files are limited to {_mib(limits.max_bytes)}",
            "keep data out of the pipeline file and point a source node at it",
            code="too_large",
        )
    return raw


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def _decode(path: str, raw: bytes) -> str:
    nul = raw.find(b"\x00")
    if nul >= 0:
        line, col = _line_col_bytes(raw, nul)
        raise _fail(
            path,
            line,
            col,
            "the file holds binary data (a NUL byte), not YAML or JSON text",
            code="binary",
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, col = _line_col_bytes(raw, exc.start)
        raise _fail(
            path,
            line,
            col,
            f"the file is not UTF-8 text (byte 0x{raw[exc.start]:02x})",
            "save the file as UTF-8",
            code="encoding",
        ) from None
    # DEL and C1 controls are legal raw in JSON strings; the YAML reader refuses them (located)
    bad = re.search(r"[\x01-\x08\x0b\x0c\x0e-\x1f]", text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        col = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        raise _fail(
            path,
            line,
            col,
            f"control character {bad.group()!r} is not allowed in a pipeline file",
            code="binary",
        )
    return text


def _line_col_bytes(raw: bytes, offset: int) -> tuple[int, int]:
    line = raw.count(b"\n", 0, offset) + 1
    col = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return line, col


def _guess_format(path: str, text: str) -> Literal["yaml", "json"]:
    lower = path.lower()
    if lower.endswith(".json"):
        return "json"
    if lower.endswith((".yaml", ".yml")):
        return "yaml"
    return "json" if text.lstrip()[:1] in ("{", "[") else "yaml"


def _only_comments(text: str) -> bool:
    return all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines())
