"""The YAML reader: data built from libyaml's event stream, with every key and value located.

Building from events (not from PyYAML's composer) lets it refuse object-building tags, duplicate keys,
alias-expansion bombs and absurd nesting before any of them cost memory or a stack overflow. Scalars
resolve by the YAML 1.2 core schema: ``yes``/``on`` and dates stay strings, which JSON round-trips need.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from engine.errors import ConfigError
from engine.spec.positions import Document, JsonPath, Limits, SourceMap, Span
from engine.spec.positions import fail as _fail
from engine.spec.positions import join_path as _join

try:
    _YamlLoader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml missing
    _YamlLoader = yaml.SafeLoader


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


def read_yaml(path: str, text: str, limits: Limits) -> Document:
    """Parse YAML ``text`` (read from ``path``) into a located document, or raise ConfigError."""
    return _YamlBuilder(path, text, limits).read()


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
