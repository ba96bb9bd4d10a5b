"""Joining a cluster: what a driver asks Ray to ship, inside a Ray job and outside, and an address where
nothing listens refused at once (no Ray here: these are the decisions made before ``ray.init``)."""

from __future__ import annotations

import copy
import json
import logging
import socket
import time
from pathlib import Path

import pytest

from engine.errors import ClusterError
from engine.runtime.cluster import JOB_CONFIG_VARIABLE, check_reachable, join_runtime_env, quiet_ray_notices

ROOT = Path(__file__).resolve().parents[2]


def _job(env_vars: dict[str, str] | None = None, **extra: object) -> str:
    runtime_env: dict[str, object] = dict(extra)
    if env_vars is not None:
        runtime_env["env_vars"] = env_vars
    return json.dumps({"runtime_env": runtime_env, "metadata": {}})


def test_outside_a_job_the_packages_ship_as_folders_that_ray_can_copy() -> None:
    runtime_env = join_runtime_env({"ANTHROPIC_API_KEY": "k"})
    assert runtime_env is not None
    folders = runtime_env["py_modules"]
    assert folders == [str(ROOT / "engine"), str(ROOT / "operators"), str(ROOT / "connectors")]
    assert runtime_env["env_vars"] == {"ANTHROPIC_API_KEY": "k"}
    # Ray deep-copies a runtime env when it merges it with a job's: module objects made that fail
    assert copy.deepcopy(runtime_env) == runtime_env


def test_inside_a_job_no_code_ships_and_the_jobs_own_variables_win() -> None:
    environ = {
        JOB_CONFIG_VARIABLE: _job({"HEADRACE_CACHE_DIR": "/job/cache"}),
        "HEADRACE_CACHE_DIR": "/job/cache",
        "GEMINI_API_KEY": "g",
    }
    assert join_runtime_env(environ) == {"env_vars": {"GEMINI_API_KEY": "g"}}


def test_inside_a_job_that_sets_everything_the_driver_asks_for_nothing() -> None:
    environ = {JOB_CONFIG_VARIABLE: _job({"HEADRACE_OUT": "/out"}), "HEADRACE_OUT": "/out"}
    assert join_runtime_env(environ) is None


def test_ship_code_always_and_never() -> None:
    always = join_runtime_env({JOB_CONFIG_VARIABLE: _job(), "HEADRACE_SHIP_CODE": "always"})
    assert always is not None and len(always["py_modules"]) == 3  # type: ignore[arg-type]
    # a job that ships modules of its own keeps them: Ray refuses to merge two py_modules
    own = join_runtime_env({JOB_CONFIG_VARIABLE: _job(py_modules=["/x"]), "HEADRACE_SHIP_CODE": "always"})
    assert own is None
    assert join_runtime_env({"HEADRACE_SHIP_CODE": "never"}) is None


def test_a_bad_ship_code_value_says_which_values_exist() -> None:
    with pytest.raises(
        ClusterError, match="HEADRACE_SHIP_CODE='sometimes' is not one of auto, always, never"
    ):
        join_runtime_env({"HEADRACE_SHIP_CODE": "sometimes"})


def test_an_address_where_nothing_listens_is_refused_at_once() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ClusterError, match=rf"no Ray cluster answers at 127.0.0.1:{port} .*ray start --head"):
        check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - started < 3.0
    with pytest.raises(ClusterError, match=r"ray://127\.0\.0\.1"):
        check_reachable(f"ray://127.0.0.1:{port}")


def test_a_listening_address_and_auto_pass() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
    check_reachable("auto")


def test_rays_token_authentication_notice_does_not_reach_the_user(caplog: pytest.LogCaptureFixture) -> None:
    from ray._private.authentication import authentication_token_setup as ray_auth

    logger = logging.getLogger(ray_auth.__name__)
    level = logger.level
    logger.addHandler(caplog.handler)  # Ray's loggers may not propagate to the root's capture
    try:
        quiet_ray_notices()  # what headrace does before it starts or joins a Ray
        ray_auth._warn_token_auth_enabled()  # what Ray's ray.init then says on every start
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)
    assert "Token authentication is enabled" not in caplog.text
