"""A module for the tenant-policy tests: a node function defined here, and one only re-exported from
another module (a policy allowing this module's text still refuses it where it is defined)."""

from __future__ import annotations

from typing import Any

from tests.service_nodes import add_one as reexported

__all__ = ["add_two", "reexported"]


def add_two(state: Any) -> dict[str, Any]:
    """``n + 2``."""
    return {"n": state.n + 2}
