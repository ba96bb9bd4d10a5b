"""Format versions and the chain of migrations between them.

A migration is a small pure function from a raw document of format N to one of format N+1. The chain
hands each step its own deep copy, so a step may edit what it receives and return it; that is how
``headrace migrate`` keeps comments (the copy is a ruamel.yaml round-trip mapping) while the steps stay
free of side effects on their caller's data.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.spec.models import FORMAT_VERSION

RawDocument = MutableMapping[str, Any]


@dataclass(frozen=True)
class Migration:
    """One step of the chain: format ``source`` becomes ``source + 1``."""

    source: int
    summary: str
    apply: Callable[[RawDocument], RawDocument]


MIGRATIONS: tuple[Migration, ...] = ()
"""Every migration this headrace knows, oldest first. Format 1 is the first format; importing the
predecessor's ``workflow:`` files will be the first entry."""


class VersionProblem(Exception):
    """The document's version is missing, malformed, too new, or has no path to the current one."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def document_version(data: RawDocument) -> int:
    """The format version a raw document declares."""
    if "version" not in data:
        raise VersionProblem(
            "missing required field `version`", f"add `version: {FORMAT_VERSION}` at the top"
        )
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise VersionProblem(
            f"`version` must be a whole number, not {version!r}",
            f"this headrace reads `version: {FORMAT_VERSION}`",
        )
    if version > FORMAT_VERSION:
        raise VersionProblem(
            f"format v{version}; this headrace reads up to v{FORMAT_VERSION}", "upgrade headrace"
        )
    return version


def plan_migrations(version: int, steps: Sequence[Migration] = MIGRATIONS) -> list[Migration]:
    """The steps that take format ``version`` to the current one (empty when it is current)."""
    chain: list[Migration] = []
    by_source = {m.source: m for m in steps}
    current = version
    while current < FORMAT_VERSION:
        step = by_source.get(current)
        if step is None:
            raise VersionProblem(
                f"format v{version} is not one this headrace can read or migrate",
                f"the formats it knows are v{min([*by_source, FORMAT_VERSION])} to v{FORMAT_VERSION}",
            )
        chain.append(step)
        current += 1
    return chain


def migrate(
    data: RawDocument, steps: Sequence[Migration] = MIGRATIONS
) -> tuple[RawDocument, list[Migration]]:
    """Apply the chain to ``data``; returns the migrated document and the steps taken."""
    chain = plan_migrations(document_version(data), steps)
    out = data
    for step in chain:
        out = step.apply(copy.deepcopy(out))
        out["version"] = step.source + 1
    return out, chain
