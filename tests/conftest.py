"""Settings every test process shares, applied before any test (and any Ray worker) starts."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Runs write an audit entry and may use the LLM response cache; in tests both go to a folder of
    # this session, never the user's home (a stale cached answer would hide a request a test counts).
    # Ray workers started later inherit these from this process.
    home = tempfile.mkdtemp(prefix="headrace-tests-")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Each pytest-xdist worker (a lane, see below) gets a home of its own: runs listed, audited and
        # cached by one lane's tests must not show up in the other's.
        os.environ["HEADRACE_HOME"] = home
        os.environ["HEADRACE_CACHE_DIR"] = os.path.join(home, "cache")
    os.environ.setdefault("HEADRACE_HOME", home)
    os.environ.setdefault("HEADRACE_CACHE_DIR", os.path.join(home, "cache"))
    os.environ.pop("HEADRACE_AUDIT_LOG", None)
    # Pipelines in tests name their (fake) provider key as ${HEADRACE_TEST_KEY}, as users must: a key
    # written into a pipeline is refused. Tests that grep artefacts for the key use this value.
    os.environ.setdefault("HEADRACE_TEST_KEY", "sk-ant-test-SECRET-9f8e7d")


_INTEGRATION = os.path.join("tests", "integration") + os.sep


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/integration, and any test that asks for the ``ray_cluster`` fixture, carries
    the ``integration`` marker, so ``pytest -m "not integration"`` is the fast subset without Ray."""
    for item in items:
        under = _INTEGRATION in str(item.path)
        if under or "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Two lanes for ``-n 2 --dist loadscope`` (the README's test command): every module that uses the
    session's shared Ray (the ``ray_cluster`` fixture) is one work unit, run one after another in one
    worker on its one Ray, as without xdist; every other module is a unit of its own (those starting
    Ray processes of their own included) and fills the other worker. xdist hands out the largest unit
    first, so the Ray lane starts at once. (Scopes are decided here, from the module's source, because
    ``--dist loadgroup`` does not group under pytest 9: it renames node ids, which pytest 9 ignores.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    root = config.rootpath
    on_session_ray = {
        str(path.relative_to(root)).replace(os.sep, "/")
        for path in (root / "tests").rglob("test_*.py")
        if "ray_cluster" in path.read_text(encoding="utf-8", errors="replace")
    }

    class Lanes(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "session-ray" if module in on_session_ray else module

    return Lanes(config, log)


_NO_RAY = "127.0.0.1:9"
"""A Ray address where nothing listens: a `headrace` process that a unit test starts cannot use Ray."""


@pytest.fixture(autouse=True)
def _ray_only_in_integration_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test without the ``integration`` marker fails if it starts Ray: in this process ``ray.init``
    fails at once; in a process it starts, Ray finds no cluster at ``RAY_ADDRESS`` (after Ray's own
    timeout), so the test fails rather than quietly costing seconds of the fast subset."""
    if request.node.get_closest_marker("integration") is not None:
        return
    monkeypatch.setenv("RAY_ADDRESS", _NO_RAY)
    import ray

    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail(
            f"{request.node.nodeid} starts Ray but is not marked integration: mark it "
            "`@pytest.mark.integration` (or move it to tests/integration), or keep Ray out of it",
            pytrace=False,
        )

    monkeypatch.setattr(ray, "init", refuse)
