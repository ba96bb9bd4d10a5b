"""Settings every test process shares, applied before any test (and any Ray worker) starts."""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Runs write an audit entry and may use the LLM response cache; in tests both go to a folder of
    # this session, never the user's home (a stale cached answer would hide a request a test counts).
    # Ray workers started later inherit these from this process.
    home = tempfile.mkdtemp(prefix="headrace-tests-")
    os.environ.setdefault("HEADRACE_HOME", home)
    os.environ.setdefault("HEADRACE_CACHE_DIR", os.path.join(home, "cache"))
    os.environ.pop("HEADRACE_AUDIT_LOG", None)
    # Pipelines in tests name their (fake) provider key as ${HEADRACE_TEST_KEY}, as users must: a key
    # written into a pipeline is refused. Tests that grep artefacts for the key use this value.
    os.environ.setdefault("HEADRACE_TEST_KEY", "sk-ant-test-SECRET-9f8e7d")
