"""The ``policy:`` mapping of a service's configuration, checked with every problem at its line.

::

    policy:
      name: closed                 # open | closed (default: closed, a service's default)
      roots: [/data, s3://team-bucket/]
      schemes: [file, s3]          # closed: defaults to the roots' schemes
      modules: [mycompany.etl]

A file holding only this mapping (or a ``policy:`` key among others) is read by :func:`load_policy`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import ConfigError, Diagnostic
from engine.policy import Policy
from engine.spec.positions import Document, JsonPath, format_path


class PolicySettings(BaseModel):
    """What an operator allows pipelines to touch."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["open", "closed"] = Field(
        "closed", description="`closed`: nothing but what is listed; `open`: everything but what is narrowed."
    )
    roots: list[str] | None = Field(
        None, description="Folders and URL prefixes files must lie under (open: null means anywhere)."
    )
    schemes: list[str] | None = Field(
        None, description="URL schemes a path may use (closed: null means the roots' schemes)."
    )
    modules: list[str] | None = Field(
        None, description="Module prefixes code may be defined in (open: null means any)."
    )

    def policy(self) -> Policy:
        """The :class:`Policy` these settings describe."""
        if self.name == "closed":
            return Policy.closed(roots=self.roots or (), schemes=self.schemes, modules=self.modules or ())
        return Policy.open(roots=self.roots, schemes=self.schemes, modules=self.modules)


def policy_from_mapping(data: Any, *, document: Document | None = None, at: JsonPath = ()) -> Policy:
    """Check ``data`` (the ``policy:`` mapping) and build its policy; ``document`` and ``at`` say where
    ``data`` was written so each problem is reported at its line and column."""
    try:
        return PolicySettings.model_validate(data).policy()
    except ValidationError as exc:
        raise ConfigError([_diagnostic(err, data, document, at) for err in exc.errors()]) from None


def load_policy(path: str, content: bytes | str | None = None) -> Policy:
    """The policy of a YAML or JSON file: its ``policy:`` mapping, or the whole file when it has none."""
    from engine.spec.document import read_document

    doc = read_document(path, content)
    if isinstance(doc.data, dict) and "policy" in doc.data:
        return policy_from_mapping(doc.data["policy"], document=doc, at=("policy",))
    return policy_from_mapping(doc.data, document=doc)


def _diagnostic(err: Any, data: Any, document: Document | None, at: JsonPath) -> Diagnostic:
    loc: JsonPath = tuple(err["loc"])
    where = (*at, *loc)
    unknown = err["type"] == "extra_forbidden"
    if unknown:
        message = f"unknown key '{loc[-1]}' in the policy; keys: name, roots, schemes, modules"
    else:
        message = f"{format_path(where) or 'policy'}: {err['msg']}"
    if document is None:
        return Diagnostic("<policy>", 1, 1, message, code="policy", json_path=format_path(where))
    span = document.source_map.locate(where, prefer="key" if unknown else "value")
    return Diagnostic(
        document.file_of(span), span.line, span.col, message, code="policy", json_path=format_path(where)
    )
