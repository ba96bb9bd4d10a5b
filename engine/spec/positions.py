"""Where things are in a pipeline file: spans, source maps, parsed documents and reading limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from engine.errors import ConfigError, Diagnostic

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Limits:
    """Bounds that keep a hostile or mistaken file from costing time or memory."""

    max_bytes: int = 8 * 1024 * 1024
    max_depth: int = 64
    max_nodes: int = 200_000


@dataclass(frozen=True)
class Span:
    """A 1-based line and column in a source file: the document's own, or ``path`` (an included file)."""

    line: int
    col: int
    path: str = ""


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

    def file_of(self, span: Span) -> str:
        """The file ``span`` is in: an included file's path, else this document's."""
        return span.path or self.path


def join_path(where: JsonPath, key: str | int) -> JsonPath:
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


def fail(path: str, line: int, col: int, message: str, hint: str = "", code: str = "syntax") -> ConfigError:
    return ConfigError([Diagnostic(path, line, col, message, code=code, hint=hint)])
