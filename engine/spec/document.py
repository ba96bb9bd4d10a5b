"""Read a YAML or JSON pipeline file into plain data plus a map of where every key and value sits.

The YAML reader builds the data from the parser's event stream itself (not from PyYAML's composer), so
it can refuse object-building tags, duplicate keys, alias-expansion bombs and absurd nesting before any
of them cost memory or a stack overflow, and so every value keeps its exact line and column.
Scalars resolve by the YAML 1.2 core schema: ``yes``/``on`` stay strings and dates stay strings, which
is what JSON round-trips need.
"""

from __future__ import annotations

import bisect
import json
import json.decoder
import json.scanner
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any, Literal

import yaml

from engine.errors import ConfigError, Diagnostic

JsonPath = tuple[str | int, ...]

try:
    _YamlLoader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml missing
    _YamlLoader = yaml.SafeLoader


@dataclass(frozen=True)
class Limits:
    """Bounds that keep a hostile or mistaken file from costing time or memory."""

    max_bytes: int = 8 * 1024 * 1024
    max_depth: int = 64
    max_nodes: int = 200_000


@dataclass(frozen=True)
class Span:
    """A 1-based line and column in a source file."""

    line: int
    col: int


@dataclass
class SourceMap:
    """Where each JSON path of a document was written: its key and its value."""

    path: str
    keys: dict[JsonPath, Span] = field(default_factory=dict)
    values: dict[JsonPath, Span] = field(default_factory=dict)
    origins: dict[JsonPath, str] = field(default_factory=dict)

    def locate(self, where: JsonPath, *, prefer: Literal["key", "value"] = "value") -> Span:
        """The best span for ``where``: itself, else the closest ancestor that was written down."""
        probe = tuple(where)
        while True:
            first, second = (self.keys, self.values) if prefer == "key" else (self.values, self.keys)
            if probe in first:
                return first[probe]
            if probe in second:
                return second[probe]
            if not probe:
                return Span(1, 1)
            probe = probe[:-1]

    def origin(self, where: JsonPath) -> str:
        """The override that set ``where`` or one of its ancestors, if any."""
        probe = tuple(where)
        while True:
            if probe in self.origins:
                return self.origins[probe]
            if not probe:
                return ""
            probe = probe[:-1]


@dataclass
class Document:
    """A parsed pipeline file: plain data (dicts, lists, scalars) and its source map."""

    path: str
    data: Any
    source_map: SourceMap
    format: Literal["yaml", "json"]


def _join(where: JsonPath, key: str | int) -> JsonPath:
    return (*where, key)


def format_path(where: JsonPath) -> str:
    """Render a JSON path as ``nodes.clean.query`` or ``edges[2].to``."""
    out = ""
    for part in where:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(root)"


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
        return _JsonReader(path, text, limits).read()
    return _YamlBuilder(path, text, limits).read()


def _fail(path: str, line: int, col: int, message: str, hint: str = "", code: str = "syntax") -> ConfigError:
    return ConfigError([Diagnostic(path, line, col, message, code=code, hint=hint)])


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


# --- YAML ------------------------------------------------------------------------------------------

_STD = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {f"{_STD}{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")} | {"!"}

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


def resolve_plain_scalar(value: str) -> Any:
    """Resolve an unquoted YAML scalar by the YAML 1.2 core schema (also used for ``--set`` values)."""
    if _NULL.match(value):
        return None
    if _BOOL.match(value):
        return value.lower() == "true"
    if _INT.match(value):
        if value.startswith("0o"):
            return int(value[2:], 8)
        if value.startswith("0x"):
            return int(value[2:], 16)
        return int(value)
    if _FLOAT.match(value):
        low = value.lower()
        if low.endswith(".inf"):
            return float("-inf") if low.startswith("-") else float("inf")
        if low == ".nan":
            return float("nan")
        return float(value)
    return value


@dataclass
class _Frame:
    container: dict[str, Any] | list[Any]
    where: JsonPath
    anchor: str | None
    start: Span
    nodes: int = 1
    key: str | None = None
    key_span: Span | None = None
    merge_key: bool = False  # the pending key is a plain `<<` (a quoted '<<' is an ordinary key)
    merges: list[tuple[Any, Span]] = field(default_factory=list)


class _YamlBuilder:
    def __init__(self, path: str, text: str, limits: Limits) -> None:
        self.path = path
        self.text = text
        self.limits = limits
        self.smap = SourceMap(path)
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.total_nodes = 0

    def read(self) -> Document:
        try:
            data = self._build(yaml.parse(self.text, Loader=_YamlLoader))
        except yaml.MarkedYAMLError as exc:
            raise self._syntax_error(exc) from None
        except yaml.reader.ReaderError as exc:
            raise self._reader_error(exc) from None
        except yaml.YAMLError as exc:
            raise _fail(self.path, 1, 1, f"not valid YAML: {exc}") from None
        return Document(self.path, data, self.smap, "yaml")

    def _reader_error(self, exc: yaml.reader.ReaderError) -> ConfigError:
        # the reported position may count bytes; the first occurrence of the character is exact
        char = chr(exc.character) if isinstance(exc.character, int) else str(exc.character)
        index = self.text.find(char)
        if index < 0:
            index = min(exc.position, len(self.text))
        line = self.text.count("\n", 0, index) + 1
        col = index - (self.text.rfind("\n", 0, index) + 1) + 1
        return _fail(
            self.path,
            line,
            col,
            f"character U+{ord(char[:1] or ' '):04X} is not allowed in YAML text",
            "remove it, or write it as an escape (e.g. \\x7f) inside a double-quoted string",
            code="binary",
        )

    def _syntax_error(self, exc: yaml.MarkedYAMLError) -> ConfigError:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        lines = re.split("\r\n|[\r\n\x85\u2028\u2029]", self.text)
        if line > len(lines):  # libyaml may place the end of a file without a final newline past it
            line, col = len(lines), len(lines[-1]) + 1
        problem = exc.problem or "not valid YAML"
        if "nesting depth" in problem:
            if mark is not None:  # libyaml scans ahead and stops at 1000 levels: find ours
                exact = self._depth_error(mark.index)
                if exact is not None:
                    return exact
            return _fail(
                self.path,
                line,
                col,
                f"nesting deeper than {self.limits.max_depth} levels",
                code="too_deep",
            )
        hint = ""
        if mark is not None and "\t" in self._line_text(mark.line)[: mark.column + 1]:
            hint = "YAML indentation must use spaces, not tabs"
        elif "quoted scalar" in (exc.context or "") and exc.context_mark is not None:
            cm = exc.context_mark
            if "end of stream" in problem or "document" in problem:
                # the parser notices only at the end of the file; point at the opening quote
                return _fail(
                    self.path,
                    cm.line + 1,
                    cm.column + 1,
                    "YAML syntax: this quoted string is never closed",
                    f"add the closing quote (the parser {problem})",
                )
            hint = f"in the quoted string opened at {cm.line + 1}:{cm.column + 1}"
        elif exc.context and exc.context_mark is not None:
            hint = f"{exc.context} at {exc.context_mark.line + 1}:{exc.context_mark.column + 1}"
        return _fail(self.path, line, col, f"YAML syntax: {problem}", hint)

    def _depth_error(self, index: int) -> ConfigError | None:
        """Rebuild the text up to libyaml's stop with the pure-Python parser to hit our own limit."""
        builder = _YamlBuilder(self.path, self.text[: index + 1], self.limits)
        try:
            builder._build(yaml.parse(builder.text, Loader=yaml.SafeLoader))
        except ConfigError as exc:
            if exc.diagnostics and exc.diagnostics[0].code == "too_deep":
                return exc
        except yaml.YAMLError:
            pass
        return None

    def _line_text(self, index: int) -> str:
        lines = self.text.splitlines()
        return lines[index] if 0 <= index < len(lines) else ""

    def _span(self, mark: Any) -> Span:
        return Span(mark.line + 1, mark.column + 1)

    def _build(self, events: Iterator[yaml.Event]) -> Any:
        stack: list[_Frame] = []
        root: Any = None
        documents = 0
        for ev in events:
            if isinstance(ev, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise _fail(
                        self.path,
                        *self._lc(ev),
                        "the file holds more than one YAML document",
                        "a pipeline file holds exactly one document; remove the extra `---`",
                    )
                continue
            if isinstance(ev, (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentEndEvent)):
                continue
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                self._check_tag(ev)
                where = self._child_path(stack, ev)
                if len(stack) >= self.limits.max_depth:
                    raise _fail(
                        self.path,
                        *self._lc(ev),
                        f"nesting deeper than {self.limits.max_depth} levels",
                        code="too_deep",
                    )
                container: dict[str, Any] | list[Any] = {} if isinstance(ev, yaml.MappingStartEvent) else []
                self.smap.values[where] = self._span(ev.start_mark)
                self._count(1, ev)
                stack.append(_Frame(container, where, ev.anchor, self._span(ev.start_mark)))
                continue
            if isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                frame = stack.pop()
                if isinstance(frame.container, dict) and frame.merges:
                    self._apply_merges(frame)
                if frame.anchor:
                    self.anchors[frame.anchor] = (frame.container, frame.nodes)
                root = self._attach(stack, frame.container, frame.nodes, ev, done_path=frame.where)
                continue
            if isinstance(ev, yaml.AliasEvent):
                if ev.anchor not in self.anchors:
                    raise _fail(self.path, *self._lc(ev), f"unknown or recursive anchor '*{ev.anchor}'")
                value, nodes = self.anchors[ev.anchor]
                self._count(nodes, ev)
                if stack and isinstance(stack[-1].container, dict) and stack[-1].key is None:
                    raise _fail(self.path, *self._lc(ev), "an alias cannot be a mapping key")
                where = self._child_path(stack, ev)
                self.smap.values.setdefault(where, self._span(ev.start_mark))
                root = self._attach(stack, value, nodes, ev, done_path=where)
                continue
            if isinstance(ev, yaml.ScalarEvent):
                self._check_tag(ev)
                self._count(1, ev)
                if stack and isinstance(stack[-1].container, dict) and stack[-1].key is None:
                    frame = stack[-1]
                    key = ev.value
                    merge = key == "<<" and not ev.style
                    if key in frame.container or (merge and frame.merges):
                        first = self.smap.keys.get(_join(frame.where, key))
                        where_first = f" (first at line {first.line})" if first else ""
                        raise _fail(
                            self.path,
                            *self._lc(ev),
                            f"duplicate key '{key}'{where_first}",
                            "YAML would silently keep only the last one; remove or rename one",
                            code="duplicate_key",
                        )
                    frame.key = key
                    frame.key_span = self._span(ev.start_mark)
                    frame.merge_key = merge
                    if not merge:
                        self.smap.keys[_join(frame.where, key)] = frame.key_span
                    continue
                value = self._scalar(ev)
                where = self._child_path(stack, ev)
                self.smap.values[where] = self._span(ev.start_mark)
                if ev.anchor:
                    self.anchors[ev.anchor] = (value, 1)
                root = self._attach(stack, value, 1, ev, done_path=where)
                continue
        return root

    def _lc(self, ev: yaml.Event) -> tuple[int, int]:
        mark = ev.start_mark
        return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)

    def _count(self, n: int, ev: yaml.Event) -> None:
        self.total_nodes += n
        if self.total_nodes > self.limits.max_nodes:
            raise _fail(
                self.path,
                *self._lc(ev),
                f"the document expands to more than {self.limits.max_nodes} values",
                "aliases that expand exponentially (a 'billion laughs') are refused",
                code="too_large",
            )

    def _check_tag(self, ev: Any) -> None:
        tag = ev.tag
        if tag is None:
            return
        implicit = ev.implicit if isinstance(ev, yaml.ScalarEvent) else (ev.implicit,)
        if isinstance(ev, yaml.ScalarEvent) and implicit[0]:
            return
        if tag not in _ALLOWED_TAGS:
            raise _fail(
                self.path,
                *self._lc(ev),
                f"YAML tag '{tag}' is not allowed",
                "pipeline files hold plain data; tags that build objects are refused",
                code="unsafe_tag",
            )

    def _scalar(self, ev: yaml.ScalarEvent) -> Any:
        tag = ev.tag
        if tag and not ev.implicit[0] and tag != "!":
            kind = tag[len(_STD) :]
            if kind == "str":
                return ev.value
            value = resolve_plain_scalar(ev.value)
            valid = {
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, (int, float)) and not isinstance(value, bool),
                "bool": isinstance(value, bool),
                "null": value is None,
            }.get(kind, False)
            if not valid:
                raise _fail(self.path, *self._lc(ev), f"'{ev.value}' is not a valid !!{kind}")
            return float(value) if kind == "float" else value
        if ev.style in ("'", '"', "|", ">") or tag == "!":
            return ev.value
        return resolve_plain_scalar(ev.value)

    def _child_path(self, stack: list[_Frame], ev: yaml.Event) -> JsonPath:
        if not stack:
            return ()
        frame = stack[-1]
        if isinstance(frame.container, list):
            return (*frame.where, len(frame.container))
        if frame.key is None:
            raise _fail(self.path, *self._lc(ev), "mapping keys must be plain scalars, not collections")
        return (*frame.where, frame.key)

    def _attach(
        self, stack: list[_Frame], value: Any, nodes: int, ev: yaml.Event, done_path: JsonPath
    ) -> Any:
        if not stack:
            return value
        frame = stack[-1]
        frame.nodes += nodes
        if isinstance(frame.container, list):
            frame.container.append(value)
        else:
            assert frame.key is not None
            if frame.merge_key:
                assert frame.key_span is not None
                frame.merges.append((value, frame.key_span))
            else:
                frame.container[frame.key] = value
            frame.key = None
        return None

    def _apply_merges(self, frame: _Frame) -> None:
        target = frame.container
        assert isinstance(target, dict)
        for value, span in frame.merges:
            sources = value if isinstance(value, list) else [value]
            for source in sources:
                if not isinstance(source, dict):
                    raise _fail(self.path, span.line, span.col, "'<<' merges only mappings")
                for key, item in source.items():
                    if key not in target:
                        target[key] = item
                        self.smap.keys.setdefault(_join(frame.where, key), span)
                        self.smap.values.setdefault(_join(frame.where, key), span)


# --- JSON ------------------------------------------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = json.scanner.NUMBER_RE


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
