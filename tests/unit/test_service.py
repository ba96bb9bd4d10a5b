"""The warm engine's pieces without Ray: discovery file, compile cache, token check, 422s, the light
client path of ``headrace run``."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from engine.errors import ConfigError
from engine.service.app import create_app
from engine.service.auth import LocalToken
from engine.service.client import find_engine
from engine.service.compile_cache import CompileCache
from engine.service.discovery import EngineInfo, discovery_path, live_info, read_info, remove_info, write_info
from engine.service.runs import ServedRuns

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = """version: 1
name: cached
nodes:
  input: {op: read_csv, path: data.csv}
  output:
    op: write_parquet
    input: input
    path: ${OUT_DIR:-out}/x
"""
BROKEN = """version: 1
name: broken
nodes:
  input: {op: read_csv, path: data.csv}
  output: {op: write_parquet, input: nowhere, path: out/x}
"""


# --- discovery file ---------------------------------------------------------------------------------


def test_discovery_file_is_private_and_names_the_engine(tmp_path: Path) -> None:
    where = discovery_path({"HEADRACE_HOME": str(tmp_path / "home")})
    info = EngineInfo("http://127.0.0.1:1234", os.getpid(), 1.5, "secret-token")
    write_info(info, where)
    assert stat.S_IMODE(where.stat().st_mode) == 0o600
    assert read_info(where) == info
    assert live_info(where) == info
    remove_info(where, pid=os.getpid() + 1)  # not ours: kept
    assert where.exists()
    remove_info(where, pid=os.getpid())
    assert not where.exists()


def test_a_file_left_by_a_dead_server_is_ignored(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    env = {"HEADRACE_HOME": str(tmp_path)}
    write_info(EngineInfo("http://127.0.0.1:9", int(dead.stdout), 0.0, "t"), discovery_path(env))
    assert live_info(discovery_path(env)) is None
    assert find_engine(None, env) is None


def test_a_file_whose_url_does_not_answer_is_ignored(tmp_path: Path) -> None:
    env = {"HEADRACE_HOME": str(tmp_path)}
    # this process is alive, but nothing listens on port 9 (discard) of loopback
    write_info(EngineInfo("http://127.0.0.1:9", os.getpid(), 0.0, "t"), discovery_path(env))
    assert live_info(discovery_path(env)) is not None
    assert find_engine(None, env) is None


def test_an_explicit_engine_that_does_not_answer_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"no headrace engine answers at http://127\.0\.0\.1:9"):
        find_engine("http://127.0.0.1:9", {"HEADRACE_HOME": str(tmp_path)})


# --- compile cache ----------------------------------------------------------------------------------


def test_the_compile_cache_checks_a_file_once_and_a_changed_file_again(tmp_path: Path) -> None:
    cache = CompileCache()
    first = cache.check("p.yaml", PIPELINE.encode(), overrides=(), env={}, cwd=str(tmp_path))
    again = cache.check("p.yaml", PIPELINE.encode(), overrides=(), env={}, cwd=str(tmp_path))
    assert again is first
    assert cache.stats().hits == 1 and cache.stats().misses == 1
    changed = cache.check(
        "p.yaml",
        PIPELINE.replace("name: cached", "name: changed").encode(),
        overrides=(),
        env={},
        cwd=str(tmp_path),
    )
    assert changed.checked.plan.name == "changed" and cache.stats().misses == 2
    overridden = cache.check(
        "p.yaml", PIPELINE.encode(), overrides=("name=other",), env={}, cwd=str(tmp_path)
    )
    assert overridden.checked.plan.name == "other"


def test_the_compile_cache_keys_on_the_environment_values_the_file_uses(tmp_path: Path) -> None:
    cache = CompileCache()
    a = cache.check("p.yaml", PIPELINE.encode(), overrides=(), env={"OUT_DIR": "/a", "OTHER": "1"}, cwd=None)
    unrelated = cache.check(
        "p.yaml", PIPELINE.encode(), overrides=(), env={"OUT_DIR": "/a", "OTHER": "2"}, cwd=None
    )
    assert unrelated is a  # OTHER is not referenced: same entry
    b = cache.check("p.yaml", PIPELINE.encode(), overrides=(), env={"OUT_DIR": "/b"}, cwd=None)
    assert b is not a
    assert b.checked.loaded.spec.nodes["output"].path == "/b/x"  # type: ignore[union-attr]
    unset = cache.check("p.yaml", PIPELINE.encode(), overrides=(), env={}, cwd=None)
    assert unset.checked.loaded.spec.nodes["output"].path == "out/x"  # type: ignore[union-attr]


def test_the_compile_cache_keeps_refusals_with_their_locations() -> None:
    cache = CompileCache()
    for _ in range(2):
        with pytest.raises(ConfigError) as caught:
            cache.check("bad.yaml", BROKEN.encode(), overrides=(), env={}, cwd=None)
        assert caught.value.errors[0].path == "bad.yaml" and caught.value.errors[0].line == 5
    assert cache.stats().hits == 1


def test_set_paths_are_relative_to_the_clients_directory(tmp_path: Path) -> None:
    checked = CompileCache().check(
        "p.yaml", PIPELINE.encode(), overrides=("nodes.input.path=in/d.csv",), env={}, cwd=str(tmp_path)
    )
    resolve = checked.checked.resolver()
    assert resolve("input", "in/d.csv") == str(tmp_path / "in" / "d.csv")
    assert checked.checked.base_dir() == str(tmp_path)


# --- the API without an engine ------------------------------------------------------------------------


@pytest.fixture
def api() -> TestClient:
    loop = asyncio.new_event_loop()
    runs = ServedRuns(engine=None, cache=CompileCache(), loop=loop)  # type: ignore[arg-type]
    return TestClient(create_app(runs, LocalToken("good-token")))


def test_every_route_but_health_needs_the_token(api: TestClient) -> None:
    assert api.get("/healthz").status_code == 200
    assert api.get("/readyz").status_code == 200
    for method, url in (("GET", "/v1/runs/x"), ("POST", "/v1/runs/x/cancel"), ("GET", "/v1/runs/x/events")):
        response = api.request(method, url)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert api.request(method, url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = api.post("/v1/runs", json={"pipeline": PIPELINE})
    assert response.status_code == 401
    good = {"Authorization": "Bearer good-token"}
    assert api.get("/v1/runs/x", headers=good).status_code == 404


def test_an_invalid_pipeline_gets_422_with_file_line_col(api: TestClient, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BROKEN)
    good = {"Authorization": "Bearer good-token"}
    response = api.post("/v1/runs", json={"path": "bad.yaml", "cwd": str(tmp_path)}, headers=good)
    assert response.status_code == 422
    problem = next(p for p in response.json()["problems"] if p["severity"] == "error")
    assert (problem["path"], problem["line"]) == ("bad.yaml", 5)
    assert "nowhere" in problem["message"]
    # a body that is not a run request is refused by the schema (FastAPI's own 422)
    assert api.post("/v1/runs", json={"overrides": []}, headers=good).status_code == 422


def test_the_openapi_document_describes_v1(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    assert {"/v1/runs", "/v1/runs/{run_id}", "/v1/runs/{run_id}/events", "/v1/runs/{run_id}/cancel"} <= set(
        doc["paths"]
    )
    assert "RunRequest" in doc["components"]["schemas"]


# --- the client path stays light ----------------------------------------------------------------------


def test_run_through_an_engine_imports_neither_ray_nor_pyarrow_nor_the_models() -> None:
    code = (
        "import sys, click\n"
        "from engine.cli import cli\n"
        "cli.get_command(click.Context(cli), 'run')\n"
        "import engine.cli.run_remote, engine.service.client\n"
        "print(sorted(m for m in ('ray', 'pyarrow', 'pydantic', 'engine.spec.models') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_the_policy_is_the_servers_whatever_the_client_sends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_ALLOWED_ROOTS", str(tmp_path / "only-here"))
    cache = CompileCache()
    widened = {"HEADRACE_ALLOWED_ROOTS": "/", "HEADRACE_POLICY": "open"}
    with pytest.raises(ConfigError) as caught:
        cache.check("p.yaml", PIPELINE.encode(), overrides=(), env=widened, cwd=str(tmp_path))
    assert any(d.code == "policy" for d in caught.value.errors)
    monkeypatch.setenv("HEADRACE_ALLOWED_ROOTS", str(tmp_path))
    # the server's policy changed: the cached refusal no longer applies
    cache.check("p.yaml", PIPELINE.encode(), overrides=(), env=widened, cwd=str(tmp_path))
