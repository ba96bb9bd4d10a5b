"""Ray Jobs run headrace: a real head started with `ray start` (its own temp dir, loopback, stopped by
PID), jobs submitted with the `ray job submit` CLI, and the RayJob manifest's entry point as written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


@dataclass(frozen=True)
class Head:
    dashboard: str
    gcs: str
    env: dict[str, str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pids(temp_dir: str) -> list[int]:
    """Every process whose command line names the head's own temp dir (raylet, GCS, dashboard, workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if temp_dir.encode() in cmdline:
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    if not Path(RAY).exists():
        pytest.skip(f"the ray CLI is not beside this interpreter ({RAY})")
    # a short path: Ray's Unix sockets live under it
    temp_dir = tempfile.mkdtemp(prefix="hrj-", dir="/tmp")
    port, dashboard = _free_port(), _free_port()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    env.pop("RAY_ADDRESS", None)
    # Ray 2.60's job server asks for a token: the head and every client of this test share one
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex)
    start = [
        RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
        "--num-cpus=2", f"--object-store-memory={256 * 1024 * 1024}", f"--temp-dir={temp_dir}",
        # Ray's default ports for the client server (10001) and the dashboard agent (52365) collide with
        # any other Ray on the machine, such as the suite's own: the agent then never registers and the
        # job server answers "No available agent to submit job"
        "--disable-usage-stats", f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
    ]  # fmt: skip
    try:
        for _attempt in range(3):
            # `ray start` gives its raylet 30 s to register, which a loaded machine can miss
            started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
            if started.returncode == 0:
                break
            _kill(temp_dir)
        assert started.returncode == 0, f"ray start failed:\n{started.stdout[-2000:]}{started.stderr[-2000:]}"
        url = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 120
        while True:  # the job server answers a little after `ray start` returns
            probe = subprocess.run(
                [RAY, "job", "list", "--address", url], env=env, capture_output=True, timeout=60
            )
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the job server never answered: {probe.stderr.decode()[-2000:]}")
            time.sleep(2)
        yield Head(url, f"127.0.0.1:{port}", env)
    finally:
        _kill(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _kill(temp_dir: str) -> None:
    for pid in _pids(temp_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _submit(head: Head, entrypoint: str, runtime_env: dict[str, object]) -> subprocess.CompletedProcess[str]:
    argv = [
        RAY, "job", "submit", "--address", head.dashboard,
        "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint.split(),
    ]  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        done = subprocess.run(argv, env=head.env, capture_output=True, text=True, timeout=300)
        # the job server answers before the node's agent has registered with it: Ray says to retry
        if "No available agent to submit job" not in done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(3)


def _summary(stdout: str) -> dict[str, object]:
    """The run's `--json` object among the job's log lines."""
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{") and '"run_id"' in line:
            return dict(json.loads(line))
    raise AssertionError(f"no JSON summary in the job's log:\n{stdout[-3000:]}")


def _rayjob_manifest() -> dict[str, object]:
    return dict(yaml.safe_load((ROOT / "cluster" / "kuberay-rayjob.yaml").read_text(encoding="utf-8")))


def test_the_rayjob_entrypoint_as_written_runs_in_a_ray_job(head: Head, tmp_path: Path) -> None:
    spec = _rayjob_manifest()["spec"]
    assert isinstance(spec, dict)
    # the image keeps the repository at /home/ray/headrace; here it is this checkout
    entrypoint = str(spec["entrypoint"]).replace("/home/ray/headrace/", f"{ROOT}/")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    runtime_env["env_vars"]["HEADRACE_OUT"] = str(tmp_path / "out")  # the manifest's /home/ray/headrace-out
    runtime_env["env_vars"]["HEADRACE_HOME"] = str(tmp_path / "home")
    done = _submit(head, entrypoint, runtime_env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = _summary(done.stdout)
    assert summary["status"] == "succeeded"
    table = pq.read_table(tmp_path / "out" / "quickstart")
    assert table.num_rows == summary["nodes"]["output"]["rows"] > 0  # type: ignore[index]


def test_a_job_whose_runtime_env_shares_the_drivers_variables_and_ships_code(
    head: Head, tmp_path: Path
) -> None:
    """The job sets a variable the driver would also ship, and asks headrace to ship its packages too:
    Ray merges both environments without a conflict."""
    runtime_env = {
        "env_vars": {
            "HEADRACE_OUT": str(tmp_path / "out"),
            "HEADRACE_HOME": str(tmp_path / "home"),
            "HEADRACE_CACHE_DIR": str(tmp_path / "cache"),
            "HEADRACE_SHIP_CODE": "always",
        }
    }
    entrypoint = f"headrace run {ROOT}/configs/examples/csv_to_parquet.yaml --address auto --json"
    done = _submit(head, entrypoint, runtime_env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _summary(done.stdout)["status"] == "succeeded"


def test_a_driver_outside_jobs_joins_the_same_head_and_ships_its_code(head: Head, tmp_path: Path) -> None:
    env = dict(head.env, HEADRACE_OUT=str(tmp_path / "out"), HEADRACE_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [sys.executable, "-c", "from engine.cli import main; main()", "run",
         str(ROOT / "configs/examples/csv_to_parquet.yaml"), "--address", head.gcs, "--json"],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(done.stdout)["status"] == "succeeded"


def test_a_driver_without_the_clusters_token_is_told_what_to_set(head: Head, tmp_path: Path) -> None:
    env = {k: v for k, v in head.env.items() if not k.startswith("RAY_AUTH")}
    env.update(HEADRACE_OUT=str(tmp_path / "out"), HEADRACE_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [sys.executable, "-c", "from engine.cli import main; main()", "run",
         str(ROOT / "configs/examples/csv_to_parquet.yaml"), "--address", head.gcs],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    assert "token authentication" in done.stderr
    assert "RAY_AUTH_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_successful_llm_run_leaves_no_failed_pool_task_in_rays_task_list(
    head: Head, tmp_path: Path
) -> None:
    """Issue 25, point 6: how pools end their calls leaves no FAILED (WORKER_DIED) `process` task."""
    env = dict(head.env, HEADRACE_OUT=str(tmp_path / "out"), HEADRACE_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [sys.executable, "-c", "from engine.cli import main; main()", "run",
         str(ROOT / "configs/examples/quickstart.yaml"), "--address", head.gcs, "--json", "--no-cache"],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(done.stdout)["nodes"]["triage"]["rows"] > 0

    def tasks(state: str) -> list[tuple[str, str | None]]:
        listed = subprocess.run(
            [RAY, "list", "tasks", "--address", head.dashboard, "--filter", f"state={state}",
             "--format", "json", "--limit", "10000"],
            env=head.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr[-3000:]
        text = listed.stdout[listed.stdout.find("[") :] if "[" in listed.stdout else "[]"  # after any notice
        return [(t["name"], t.get("error_type")) for t in json.loads(text)]

    assert any(name == "PoolWorker.process" for name, _ in tasks("FINISHED"))  # the list sees the pool
    assert [t for t in tasks("FAILED") if "PoolWorker" in t[0]] == []
