"""Fixtures of the unit tests (no Ray: everything here runs in one process in seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.helpers import VALID_PIPELINE, write


@pytest.fixture
def valid_file(tmp_path: Path) -> Path:
    """A valid pipeline file in a temporary folder."""
    return write(tmp_path / "pipeline.yaml", VALID_PIPELINE)


@pytest.fixture(autouse=True)
def _no_stray_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests rely on these being unset (``${NOPE}`` must be missing; no debug tracebacks)."""
    monkeypatch.delenv("NOPE", raising=False)
    monkeypatch.delenv("HEADRACE_DEBUG", raising=False)
