"""``headrace migrate``: apply the migration chain to a file, keeping its comments and key order."""

from __future__ import annotations

from engine.errors import ConfigError, Diagnostic
from engine.spec.convert import dump_commented, dump_json, load_commented
from engine.spec.document import read_document
from engine.spec.migrations import MIGRATIONS, Migration, VersionProblem, migrate


def migrate_file(path: str, steps: tuple[Migration, ...] = MIGRATIONS) -> tuple[str, list[Migration]]:
    """The file's text at the current format, and the steps that took it there."""
    doc = read_document(path)  # full checks (size, tags, duplicates) before touching it
    if not isinstance(doc.data, dict):
        raise ConfigError([Diagnostic(path, 1, 1, "the top level must be a mapping", code="wrong_type")])
    with open(path, encoding="utf-8-sig") as fh:
        text = fh.read()
    raw = load_commented(text) if doc.format == "yaml" else doc.data
    try:
        migrated, taken = migrate(raw, steps)
    except VersionProblem as exc:
        span = doc.source_map.locate(("version",))
        raise ConfigError(
            [Diagnostic(path, span.line, span.col, exc.message, code="version", hint=exc.hint)]
        ) from None
    if not taken:
        return text, []
    return (dump_commented(migrated) if doc.format == "yaml" else dump_json(migrated, path)), taken
