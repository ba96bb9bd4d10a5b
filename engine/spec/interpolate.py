"""``${VAR}`` and ``${VAR:-default}`` in string values, from the environment; ``$${`` is a literal ``${``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from engine.errors import ConfigError, Diagnostic
from engine.spec.document import Document, JsonPath, format_path

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{([^}]*)\}?")


def interpolate(doc: Document, env: Mapping[str, str]) -> Document:
    """A new document whose strings have their variables replaced; every missing one is reported."""
    problems: list[Diagnostic] = []

    def walk(node: Any, where: JsonPath) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, (*where, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*where, i)) for i, v in enumerate(node)]
        if isinstance(node, str) and "${" in node:
            return _substitute(node, where)
        return node

    def _substitute(text: str, where: JsonPath) -> str:
        def one(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            name, default = m.group(1), m.group(2)
            if name is None:
                _report(
                    where,
                    f"'{m.group(0)}' is not a valid variable reference",
                    "write ${NAME} or ${NAME:-default}; $${ gives a literal ${",
                )
                return m.group(0)
            if name in env:
                return env[name]
            if default is not None:
                return default
            _report(
                where,
                f"environment variable {name} is not set",
                f"set it, or give a default: ${{{name}:-value}}",
            )
            return m.group(0)

        return _VAR.sub(one, text)

    def _report(where: JsonPath, message: str, hint: str) -> None:
        span = doc.source_map.locate(where)
        problems.append(
            Diagnostic(
                doc.file_of(span),
                span.line,
                span.col,
                message,
                code="missing_variable",
                json_path=format_path(where),
                hint=hint,
                origin=doc.source_map.origin(where),
            )
        )

    data = walk(doc.data, ())
    if problems:
        raise ConfigError(problems)
    return Document(doc.path, data, doc.source_map, doc.format)


_SECRET_KEY = re.compile(r"(^|_)(api_?key|key|token|secret|password)$", re.IGNORECASE)
_ONE_VARIABLE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")  # no `:-default`: that would be a literal


def refuse_literal_secrets(doc: Document) -> None:
    """Refuse a provider secret written into the pipeline (or an override) instead of read from the
    environment: files get shared, committed and logged; ``api_key: ${MY_KEY}`` keeps the key out of them."""
    providers = doc.data.get("providers") if isinstance(doc.data, dict) else None
    if not isinstance(providers, dict):
        return
    problems: list[Diagnostic] = []
    for name, settings in providers.items():
        config = settings.get("config") if isinstance(settings, dict) else None
        if not isinstance(config, dict):
            continue
        for key, value in config.items():
            if isinstance(key, str) and _SECRET_KEY.search(key) and isinstance(value, str) and value:
                if _ONE_VARIABLE.match(value):
                    continue
                where = ("providers", name, "config", key)
                span = doc.source_map.locate(where)
                problems.append(
                    Diagnostic(
                        doc.file_of(span),
                        span.line,
                        span.col,
                        f"providers.{name}.config.{key} holds a secret written into the pipeline",
                        code="literal_secret",
                        json_path=format_path(where),
                        hint=f"put it in the environment and write `{key}: ${{MY_VARIABLE}}` (the SDKs' own "
                        "variables, e.g. ANTHROPIC_API_KEY, are read when the key is absent)",
                        origin=doc.source_map.origin(where),
                    )
                )
    if problems:
        raise ConfigError(problems)
