"""A warm engine others can reach starts under the closed policy (the security issue's default for
anything accepting pipelines over a network); on loopback the environment's policy applies."""

from __future__ import annotations

import pytest

from engine.policy import Policy
from engine.service.server import close_unless_loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "myhost.example"])
def test_a_server_bound_beyond_loopback_is_closed_unless_told_otherwise(host: str) -> None:
    environ: dict[str, str] = {}
    told = close_unless_loopback(host, environ)
    assert environ == {"HEADRACE_POLICY": "closed"}
    assert told is not None and "closed policy" in told
    policy = Policy.from_env(environ)
    assert policy.name == "closed"
    assert policy.path_problem("/etc/passwd") is not None
    assert not policy.module_allowed("subprocess")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "::1", "localhost"])
def test_on_loopback_the_environments_policy_applies(host: str) -> None:
    environ: dict[str, str] = {}
    assert close_unless_loopback(host, environ) is None
    assert environ == {}


def test_an_explicit_policy_is_kept_and_an_open_one_beyond_loopback_is_warned_about() -> None:
    environ = {"HEADRACE_POLICY": "open"}
    told = close_unless_loopback("0.0.0.0", environ)
    assert environ == {"HEADRACE_POLICY": "open"}
    assert told is not None and told.startswith("warning:")
    closed = {"HEADRACE_POLICY": "closed", "HEADRACE_ALLOWED_ROOTS": "/data"}
    assert close_unless_loopback("0.0.0.0", closed) is None
    assert closed["HEADRACE_ALLOWED_ROOTS"] == "/data"
