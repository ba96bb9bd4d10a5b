"""Convert pipeline files between YAML and JSON, and rewrite YAML without losing its comments."""

from __future__ import annotations

import io
import json
import math
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.representer import RoundTripRepresenter
from ruamel.yaml.scalarfloat import ScalarFloat
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from engine.errors import ConfigError, Diagnostic
from engine.spec.document import Document, read_document

Format = Literal["json", "yaml"]


def convert(path: str, content: bytes | str | None, to: Format) -> str:
    """The document at ``path`` (or ``content``) rendered as ``to``; data is kept exactly."""
    doc = read_document(path, content)
    if to == "json":
        return dump_json(doc.data, path)
    if doc.format == "yaml":
        return roundtrip_yaml(_text(path, content))
    return dump_yaml(doc.data)


def dump_json(data: Any, path: str = "<data>") -> str:
    """Pretty JSON, refusing values JSON cannot hold (``.nan``, ``.inf``)."""
    _check_json_safe(data, path)
    # json leaves DEL raw, which the reader refuses as a control character; it can only sit in a string
    return json.dumps(data, indent=2, ensure_ascii=False).replace("\x7f", "\\u007f") + "\n"


def dump_yaml(data: Any) -> str:
    """Block-style YAML 1.2 that :func:`engine.spec.document.read_document` reads back equal."""
    out = io.StringIO()
    _yaml().dump(_to_commented(data), out)
    return out.getvalue()


def roundtrip_yaml(text: str) -> str:
    """Re-emit YAML through ruamel's round-trip mode: comments, order and quoting are kept."""
    yaml = _yaml()
    out = io.StringIO()
    yaml.dump(yaml.load(text), out)
    return out.getvalue()


def load_commented(text: str) -> Any:
    """A round-trip (comment-keeping) view of YAML text, for rewrites such as migrations."""
    return _yaml().load(text)


def dump_commented(data: Any) -> str:
    """Emit a round-trip view produced by :func:`load_commented`."""
    out = io.StringIO()
    _yaml().dump(data, out)
    return out.getvalue()


class _ExactFloats(RoundTripRepresenter):
    """ruamel re-emits a float in its source's layout, truncating digits; keep the value exact."""

    def represent_scalar_float(self, data: Any) -> ScalarNode:
        try:
            node = super().represent_scalar_float(data)
        except ValueError:  # ruamel's layout code fails on some values, e.g. 1e400 read as inf
            return self.represent_scalar("tag:yaml.org,2002:float", _float_text(float(data)))
        try:
            exact = float(node.value) == float(data)
        except ValueError:  # .inf, .nan
            exact = True
        if not exact:
            node.value = _float_text(float(data))
        return node


def _float_text(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    return repr(value)


_ExactFloats.add_representer(ScalarFloat, _ExactFloats.represent_scalar_float)


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.Representer = _ExactFloats
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _text(path: str, content: bytes | str | None) -> str:
    if content is None:
        with open(path, encoding="utf-8-sig") as fh:
            return fh.read()
    return content.decode("utf-8-sig") if isinstance(content, bytes) else content


def _to_commented(data: Any) -> Any:
    if isinstance(data, dict):
        out = CommentedMap()
        for k, v in data.items():
            out[_to_commented(k)] = _to_commented(v)
        return out
    if isinstance(data, list):
        seq = CommentedSeq(_to_commented(v) for v in data)
        return seq
    if isinstance(data, str) and any(c in data for c in _LINE_BREAKS):
        # ruamel writes these raw in single quotes, where a reader folds NEL into a space
        return DoubleQuotedScalarString(data)
    return data


_LINE_BREAKS = ("\x85", "\u2028", "\u2029")


def _check_json_safe(data: Any, path: str) -> None:
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(
                [
                    Diagnostic(
                        path,
                        1,
                        1,
                        f"{item} has no JSON form",
                        code="not_json",
                        hint="write it as a string, or keep the file in YAML",
                    )
                ]
            )


__all__ = [
    "Document",
    "convert",
    "dump_commented",
    "dump_json",
    "dump_yaml",
    "load_commented",
    "roundtrip_yaml",
]
