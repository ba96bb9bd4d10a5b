"""The JSON reader: a small recursive-descent parser that records positions and refuses duplicate keys."""

from __future__ import annotations

import bisect
import json.scanner
import re
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

from engine.spec.positions import Document, JsonPath, Limits, SourceMap, Span
from engine.spec.positions import fail as _fail
from engine.spec.positions import join_path as _join

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = json.scanner.NUMBER_RE


def read_json(path: str, text: str, limits: Limits) -> Document:
    """Parse JSON ``text`` (read from ``path``) into a located document, or raise ConfigError."""
    return _JsonReader(path, text, limits).read()


class _JsonReader:
    """A small recursive-descent JSON reader that records positions and refuses duplicate keys."""

    def __init__(self, path: str, text: str, limits: Limits) -> None:
        self.path = path
        self.text = text
        self.limits = limits
        self.smap = SourceMap(path)
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.nodes = 0

    def read(self) -> Document:
        pos = self._skip(0)
        value, pos = self._value(pos, (), 0)
        pos = self._skip(pos)
        if pos != len(self.text):
            self._error(pos, "extra data after the JSON document")
        return Document(self.path, value, self.smap, "json")

    def _span(self, pos: int) -> Span:
        line = bisect.bisect_right(self.line_starts, pos)
        return Span(line, pos - self.line_starts[line - 1] + 1)

    def _error(self, pos: int, message: str, hint: str = "", code: str = "syntax") -> None:
        span = self._span(min(pos, len(self.text)))
        raise _fail(self.path, span.line, span.col, message, hint, code=code)

    def _skip(self, pos: int) -> int:
        m = _WS.match(self.text, pos)
        return m.end() if m else pos

    def _value(self, pos: int, where: JsonPath, depth: int) -> tuple[Any, int]:
        if depth >= self.limits.max_depth:  # depth 0 is the root: the same count as YAML's
            self._error(pos, f"nesting deeper than {self.limits.max_depth} levels", code="too_deep")
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            self._error(
                pos,
                f"the document holds more than {self.limits.max_nodes} values",
                code="too_large",
            )
        self.smap.values[where] = self._span(pos)
        ch = self.text[pos : pos + 1]
        if ch == "{":
            return self._object(pos + 1, where, depth)
        if ch == "[":
            return self._array(pos + 1, where, depth)
        if ch == '"':
            return self._string(pos)
        for word, value in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, pos):
                return value, pos + len(word)
        m = _NUMBER.match(self.text, pos)
        if m:
            integer, frac, exp = m.groups()
            if frac or exp:
                return float(integer + (frac or "") + (exp or "")), m.end()
            return int(integer), m.end()
        if not ch:
            self._error(pos, "unexpected end of the file: a JSON value is missing")
        self._error(pos, f"unexpected character {ch!r}: expected a JSON value")
        raise AssertionError("unreachable")

    def _string(self, pos: int) -> tuple[str, int]:
        try:
            return scanstring(self.text, pos + 1, True)
        except json.JSONDecodeError as exc:
            bad = self.text[exc.pos : exc.pos + 1]
            if exc.msg.startswith("Unterminated") or bad in ("\n", "\r"):
                self._error(
                    pos,
                    "unterminated string",
                    'close it with " on the same line; a newline inside a string is written \\n',
                )
            if exc.msg.startswith("Invalid control character"):
                self._error(exc.pos, f"JSON string: control character {bad!r} must be escaped")
            self._error(exc.pos, f"JSON string: {exc.msg.removesuffix(' at')}")
            raise AssertionError("unreachable") from None

    def _trailing_comma(self, comma: int | None, pos: int, close: str) -> None:
        if comma is not None and self.text[pos : pos + 1] == close:
            self._error(comma, f"trailing comma before '{close}'", "JSON allows no comma after the last item")

    def _object(self, pos: int, where: JsonPath, depth: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        pos = self._skip(pos)
        if self.text[pos : pos + 1] == "}":
            return out, pos + 1
        comma: int | None = None
        while True:
            pos = self._skip(pos)
            self._trailing_comma(comma, pos, "}")
            if self.text[pos : pos + 1] != '"':
                self._error(
                    pos,
                    "expected a quoted key",
                    "JSON keys are double-quoted strings; no trailing commas",
                )
            key_pos = pos
            key, pos = self._string(pos)
            if key in out:
                first = self.smap.keys[_join(where, key)]
                self._error(
                    key_pos,
                    f"duplicate key '{key}' (first at line {first.line})",
                    "remove or rename one of them",
                    code="duplicate_key",
                )
            self.smap.keys[_join(where, key)] = self._span(key_pos)
            pos = self._skip(pos)
            if self.text[pos : pos + 1] != ":":
                self._error(pos, "expected ':' after the key")
            pos = self._skip(pos + 1)
            out[key], pos = self._value(pos, (*where, key), depth + 1)
            pos = self._skip(pos)
            ch = self.text[pos : pos + 1]
            if ch == ",":
                comma, pos = pos, pos + 1
                continue
            if ch == "}":
                return out, pos + 1
            self._error(pos, "expected ',' or '}' in the object")

    def _array(self, pos: int, where: JsonPath, depth: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        pos = self._skip(pos)
        if self.text[pos : pos + 1] == "]":
            return out, pos + 1
        comma: int | None = None
        while True:
            pos = self._skip(pos)
            self._trailing_comma(comma, pos, "]")
            item, pos = self._value(pos, (*where, len(out)), depth + 1)
            out.append(item)
            pos = self._skip(pos)
            ch = self.text[pos : pos + 1]
            if ch == ",":
                comma, pos = pos, pos + 1
                continue
            if ch == "]":
                return out, pos + 1
            self._error(pos, "expected ',' or ']' in the array")
