"""``headrace serve`` as a real process and ``headrace run`` against it as another: same outputs,
records, exit codes and ``--json`` as a run with its own Ray; Ctrl-C and SIGTERM cancel; tokens; 422s.

One server (2 CPUs, a 200 MB object store, its own ``$HEADRACE_HOME``) serves the module; the last
test stops it with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from engine.service.discovery import EngineInfo, discovery_path, read_info
from tests.cli import HEADRACE, ROOT, run_headrace

pytestmark = pytest.mark.integration

EXAMPLES = ROOT / "configs" / "examples"
TICKETS = EXAMPLES / "data" / "tickets.csv"
_START_S = 300


@dataclass
class Served:
    """A running ``headrace serve`` and the environment its clients share with it."""

    proc: subprocess.Popen[bytes]
    home: Path
    info: EngineInfo
    env: dict[str, str]

    def api(self, method: str, path: str, *, token: bool = True, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.info.token}"} if token else {}
        return httpx.request(method, self.info.url + path, headers=headers, timeout=60, **kwargs)

    def run(
        self, *args: str | Path, out: Path | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, **({"HEADRACE_OUT": str(out)} if out else {}))
        return run_headrace(*args, env=env, timeout=timeout)

    def log_text(self) -> str:
        """What the server has printed so far (its terminal, for a user)."""
        return (self.home / "serve.log").read_text(errors="replace")

    def records(self) -> dict[str, str]:
        listed = run_headrace("runs", "list", "--limit", "100", "--json", env=self.env)
        assert listed.returncode == 0, listed.stderr
        return {r["run_id"]: r["status"] for r in json.loads(listed.stdout)}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("engine-home")
    env = {
        "HEADRACE_HOME": str(home),
        "HEADRACE_CHECKPOINTS": f"sqlite:///{home}/runs.db",
        "HEADRACE_OBJECT_STORE_BYTES": str(200 * 1024 * 1024),
        "HEADRACE_ENGINE": "",
        "PYTHONPATH": str(ROOT),  # the server's workers import the tests' UDFs
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    }
    full = {k: v for k, v in os.environ.items() if k != "HEADRACE_DEBUG"} | env
    log = (home / "serve.log").open("wb")
    proc: subprocess.Popen[bytes] | None = None
    try:
        for attempt in range(3):
            proc = subprocess.Popen(
                [*HEADRACE, "serve", "--port", "0", "--num-cpus", "2"],
                env=full,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its Ray is its own: stopped with it, whatever happens here
            )
            info = _wait_for_engine(proc, home)
            if info is not None:
                break
            # Ray gives its raylet 30 s to register, which a crowded machine can miss: start again
            assert "timed out during startup" in (home / "serve.log").read_text() and attempt < 2, (
                home / "serve.log"
            ).read_text()
        assert proc is not None and info is not None
        yield Served(proc, home, info, env)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        log.close()


def _wait_for_engine(proc: subprocess.Popen[bytes], home: Path) -> EngineInfo | None:
    """The discovery file's engine once it is written; None when the server exited first."""
    deadline = time.monotonic() + _START_S
    where = discovery_path({"HEADRACE_HOME": str(home)})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        info = read_info(where)
        if info is not None:
            return info
        time.sleep(0.5)
    raise AssertionError(f"no discovery file after {_START_S}s: {(home / 'serve.log').read_text()}")


def _held_pipeline(tmp_path: Path, marker: Path) -> Path:
    """Tickets to Parquet through a step that waits while ``marker`` exists."""
    path = tmp_path / "held.yaml"
    path.write_text(
        f"""version: 1
name: held
nodes:
  input: {{op: read_csv, path: "{TICKETS}"}}
  hold:
    op: map_batches
    input: input
    fn: "tests.integration.udfs:hold_while"
    kwargs: {{marker: "{marker}", from_id: 0}}
  output: {{op: write_parquet, input: hold, path: out/held, overwrite: true}}
"""
    )
    return path


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _wait_status(served: Served, run_id: str, want: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = served.api("GET", f"/v1/runs/{run_id}")
        if response.status_code == 200 and response.json()["status"] == want:
            return dict(response.json())
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} never became {want}")


def _row_key(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def _comparable(summary: dict[str, Any], out: Path) -> dict[str, Any]:
    """A --json summary without what differs between any two runs (ids, timings, the output folder)."""
    text = json.dumps(summary).replace(str(out), "OUT")
    view = json.loads(text)
    view.pop("run_id")
    view.pop("seconds")
    for node in view["nodes"].values():
        node.pop("seconds")
    return dict(view)


def test_the_discovery_file_is_private_and_the_api_needs_its_token(served: Served) -> None:
    where = discovery_path({"HEADRACE_HOME": str(served.home)})
    assert where.stat().st_mode & 0o777 == 0o600
    assert served.info.pid == served.proc.pid and served.info.url.startswith("http://127.0.0.1:")
    assert served.api("GET", "/healthz", token=False).status_code == 200
    assert served.api("GET", "/readyz", token=False).status_code == 200
    assert served.api("GET", "/v1/runs/nope", token=False).status_code == 401
    refused = served.api("POST", "/v1/runs", token=False, json={"path": str(EXAMPLES / "quickstart.yaml")})
    assert refused.status_code == 401
    assert served.api("GET", "/v1/runs/nope").status_code == 404
    assert "/v1/runs" in served.api("GET", "/openapi.json", token=False).json()["paths"]


@pytest.mark.parametrize("example", ["csv_to_parquet.yaml", "quickstart.yaml"])
def test_a_run_through_the_engine_matches_a_run_with_its_own_ray(
    served: Served, tmp_path: Path, example: str
) -> None:
    pipeline = EXAMPLES / example
    warm, cold = tmp_path / "warm", tmp_path / "cold"
    through = served.run("run", pipeline, "--json", out=warm)
    alone = served.run("run", pipeline, "--json", "--no-engine", out=cold)
    assert through.returncode == alone.returncode == 0, through.stderr + alone.stderr
    for noise in ("Token authentication is enabled", "RAW: Lock"):  # Ray's and abseil's (issue 17)
        assert noise not in through.stderr + alone.stderr + served.log_text()
    warm_summary, cold_summary = json.loads(through.stdout), json.loads(alone.stdout)
    assert _comparable(warm_summary, warm) == _comparable(cold_summary, cold)
    # the first ran on the engine, the second did not
    assert served.api("GET", f"/v1/runs/{warm_summary['run_id']}").json()["status"] == "succeeded"
    assert served.api("GET", f"/v1/runs/{cold_summary['run_id']}").status_code == 404
    # the same rows in the same outputs, and both runs recorded as succeeded in the one store
    for node, url in warm_summary["outputs"].items():
        warm_rows = pq.read_table(Path(url).parent).to_pylist()
        cold_rows = pq.read_table(Path(cold_summary["outputs"][node]).parent).to_pylist()
        assert sorted(warm_rows, key=_row_key) == sorted(cold_rows, key=_row_key)
    records = served.records()
    assert records[warm_summary["run_id"]] == records[cold_summary["run_id"]] == "succeeded"
    # the text summary is the same table as well
    text = served.run("run", pipeline, out=tmp_path / "text")
    assert text.returncode == 0 and text.stdout.startswith("run ") and "output output:" in text.stdout


def test_an_invalid_pipeline_is_refused_as_validate_refuses_it(served: Served, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nname: bad\nnodes:\n  input: {op: read_csv, path: x.csv}\n"
        "  out: {op: write_parquet, input: nowhere, path: o}\n"
    )
    validated = run_headrace("validate", bad)
    through = served.run("run", bad)
    assert validated.returncode == through.returncode == 1
    assert through.stderr.splitlines() == validated.stdout.splitlines()
    assert f"{bad}:5:" in through.stderr
    response = served.api("POST", "/v1/runs", json={"path": str(bad)})
    assert response.status_code == 422
    assert any(p["line"] == 5 and p["severity"] == "error" for p in response.json()["problems"])


def test_bench_on_the_engine_measures_the_servers_process_tree(served: Served, tmp_path: Path) -> None:
    once = ("--repeats", "1", "--warmup", "0", "--reruns", "0", "--json")
    proc = served.run("bench", EXAMPLES / "csv_to_parquet.yaml", *once, out=tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["where"]["mode"] == "served" and doc["where"]["engine"] == served.info.url
    figures = doc["variants"][0]["figures"]
    # the server's tree (its Ray included, found by the pid in its discovery file) did the work
    assert figures["tree_cpu_s"]["max"] > 0 and figures["peak_memory_mb"]["median"] > 100
    assert figures["nodes"]["output"]["rows_per_s"]["median"] > 0 and figures["rows_per_s"]["median"] > 0
    assert not (tmp_path / "out").exists()  # outputs went to bench's scratch folder


def test_ctrl_c_cancels_the_run_on_the_engine_and_resume_finishes_it(served: Served, tmp_path: Path) -> None:
    marker = tmp_path / "hold"
    marker.touch()
    pipeline = _held_pipeline(tmp_path, marker)
    full = {k: v for k, v in os.environ.items() if k != "HEADRACE_DEBUG"} | served.env
    client = subprocess.Popen(
        [*HEADRACE, "run", pipeline, "--run-id", "held-1", "--json"],
        env=full,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Ctrl-C as a terminal delivers it: with SIGINT's default disposition, whatever the test runner's
        # worker process inherited (the client ignored it in two full two-lane runs, never alone)
        preexec_fn=_sigint_default,
    )
    try:
        _wait_status(served, "held-1", "running")
        time.sleep(1.0)  # into the run's loop
        client.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = client.communicate(timeout=180)
        elapsed = time.monotonic() - sent
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 130, (err, out[-500:], signal.getsignal(signal.SIGINT), elapsed)
    summary = json.loads(out)
    assert summary["status"] == "cancelled" and summary["run_id"] == "held-1"
    assert _wait_status(served, "held-1", "cancelled")["exit_code"] == 130
    assert served.records()["held-1"] == "cancelled"
    marker.unlink()
    resumed = served.run("run", pipeline, "--resume", "held-1", "--json")
    assert resumed.returncode == 0, resumed.stderr
    done = json.loads(resumed.stdout)
    assert done["status"] == "succeeded" and done["run_id"] == "held-1"
    assert pq.read_table(Path(done["outputs"]["output"]).parent).num_rows == 200
    assert served.records()["held-1"] == "succeeded"


def test_sigterm_stops_the_engine_and_cancels_its_runs(served: Served, tmp_path: Path) -> None:
    """Last: it stops the module's server."""
    marker = tmp_path / "hold"
    marker.touch()
    pipeline = _held_pipeline(tmp_path, marker)
    full = {k: v for k, v in os.environ.items() if k != "HEADRACE_DEBUG"} | served.env
    client = subprocess.Popen(
        [*HEADRACE, "run", pipeline, "--run-id", "held-2", "--json"],
        env=full,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_status(served, "held-2", "running")
        time.sleep(1.0)
        served.proc.send_signal(signal.SIGTERM)
        out, err = client.communicate(timeout=180)
        assert served.proc.wait(180) == 0
    finally:
        if client.poll() is None:
            client.kill()
        marker.unlink(missing_ok=True)
    assert client.returncode == 130, err
    assert json.loads(out)["status"] == "cancelled"
    assert not discovery_path({"HEADRACE_HOME": str(served.home)}).exists()
    assert served.records()["held-2"] == "cancelled"
    # with the engine gone, `headrace run` finds no engine and runs with its own Ray
    alone = served.run("run", EXAMPLES / "csv_to_parquet.yaml", "--json", out=tmp_path / "alone")
    assert alone.returncode == 0 and json.loads(alone.stdout)["status"] == "succeeded"
