"""Load a pipeline file: read, override, migrate, interpolate, validate; every problem located."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from engine.errors import ConfigError, Diagnostic
from engine.spec.compose import compose
from engine.spec.document import Document, Limits, read_document
from engine.spec.explain import explain
from engine.spec.inline import inline_subpipelines
from engine.spec.interpolate import interpolate, refuse_literal_secrets
from engine.spec.migrations import VersionProblem, migrate
from engine.spec.models import Pipeline
from engine.spec.overrides import apply_overrides
from engine.spec.registry import pipeline_model


@dataclass(frozen=True)
class LoadedPipeline:
    """A validated pipeline with the document it came from (for locating later problems)."""

    spec: Pipeline
    document: Document
    warnings: list[Diagnostic] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)  # inlined sub-pipelines: node prefix -> file


def load_pipeline(
    path: str,
    *,
    content: bytes | str | None = None,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    limits: Limits | None = None,
    _chain: tuple[str, ...] = (),
) -> LoadedPipeline:
    """Read and validate ``path``; raise :class:`ConfigError` listing every problem found.

    ``_chain``: the files inlining this one (``engine.spec.inline``), to refuse a cycle.
    """
    doc = compose(read_document(path, content, limits=limits), read_document, limits)
    doc = apply_overrides(doc, tuple(overrides))
    doc, warnings = _upgrade(doc)
    refuse_literal_secrets(doc)
    env = os.environ if env is None else env
    doc = interpolate(doc, env)

    def load_sub(sub_path: str, chain: tuple[str, ...]) -> LoadedPipeline:
        return load_pipeline(sub_path, env=env, limits=limits, _chain=chain)

    inlined = inline_subpipelines(doc, load_sub, _chain)
    doc = inlined.document
    return LoadedPipeline(validate_document(doc), doc, warnings + inlined.warnings, inlined.groups)


def validate_document(doc: Document) -> Pipeline:
    """Validate a current-format document against the models."""
    try:
        return pipeline_model().model_validate(doc.data, strict=True)
    except ValidationError as exc:
        raise ConfigError(explain(exc, doc, pipeline_schema())) from None


@lru_cache(maxsize=1)
def pipeline_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the current format, built from the models."""
    from engine.spec.schema import json_schema

    return json_schema()


def _upgrade(doc: Document) -> tuple[Document, list[Diagnostic]]:
    if not isinstance(doc.data, dict):
        found = "a list" if isinstance(doc.data, list) else f"a single value ({doc.data!r})"
        raise ConfigError(
            [
                Diagnostic(
                    doc.path,
                    1,
                    1,
                    f"the top level must be a mapping of pipeline fields, found {found}",
                    code="wrong_type",
                    hint="start with `version: 1`, `name:` and `nodes:`",
                )
            ]
        )
    try:
        data, steps = migrate(doc.data)
    except VersionProblem as exc:
        where = ("version",) if "version" in doc.data else ()
        span = doc.source_map.locate(where)
        raise ConfigError(
            [
                Diagnostic(
                    doc.file_of(span),
                    span.line,
                    span.col,
                    exc.message,
                    code="version",
                    json_path="version",
                    hint=exc.hint,
                    origin=doc.source_map.origin(where),
                )
            ]
        ) from None
    if not steps:
        return doc, []
    note = Diagnostic(
        doc.path,
        1,
        1,
        f"format v{steps[0].source} was migrated in memory to v{steps[-1].source + 1}",
        severity="warning",
        code="old_format",
        hint=f"`headrace migrate {doc.path} --in-place` updates the file",
    )
    return Document(doc.path, data, doc.source_map, doc.format), [note]
