"""A two-node cluster of real `ray start` processes (issue 25), as an operator starts one: a 1-CPU head
and a 1-CPU worker offering ``llm_gateway: 2``, on loopback, each node in its own temp dir and stopped
by PID (also when a test fails). Capacity is judged per node (a 2-CPU task fits on neither node, though
the cluster has 2 CPUs), a run uses both nodes and an LLM pool asking for more actors than the gateway
admits, and a run whose work's only node dies stops in seconds, naming what it lacks, instead of
waiting for ever."""

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

from tests.cli import HEADRACE, run_headrace
from tests.loopback import LLMServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
_MB = 1024 * 1024


@dataclass(frozen=True)
class Nodes:
    address: str
    env: dict[str, str]
    head_dir: str
    worker_dir: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pids(temp_dir: str) -> list[int]:
    """Every process whose command line names the node's own temp dir (raylet, GCS, agents, workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if temp_dir.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def _kill(temp_dir: str) -> None:
    for pid in _pids(temp_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _ray_start(argv: list[str], env: dict[str, str], temp_dir: str) -> None:
    for _attempt in range(
        3
    ):  # `ray start` gives its raylet 30 s to register, which a loaded machine can miss
        started = subprocess.run([RAY, "start", *argv], env=env, capture_output=True, text=True, timeout=180)
        if started.returncode == 0:
            return
        _kill(temp_dir)
    pytest.fail(f"ray start failed:\n{started.stdout[-2000:]}{started.stderr[-2000:]}")


@pytest.fixture(scope="module")
def nodes() -> Iterator[Nodes]:
    if not Path(RAY).exists():
        pytest.skip(f"the ray CLI is not beside this interpreter ({RAY})")
    # short paths: Ray's Unix sockets live under them
    head_dir = tempfile.mkdtemp(prefix="hrh-", dir="/tmp")
    worker_dir = tempfile.mkdtemp(prefix="hrw-", dir="/tmp")
    port = _free_port()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)  # the workers import the tests' user functions
    env["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    env.pop("RAY_ADDRESS", None)
    # both nodes and every driver of this test share one token, as on a cluster with token auth
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex)
    # a dead node is noticed in a few seconds, not Ray's default half a minute
    env.update(RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3")
    common = [
        "--node-ip-address=127.0.0.1", "--num-cpus=1", f"--object-store-memory={96 * _MB}",
        "--disable-usage-stats", f"--dashboard-agent-listen-port={_free_port()}",
    ]  # fmt: skip
    try:
        _ray_start(
            ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={head_dir}",
             f"--ray-client-server-port={_free_port()}", *common],
            env, head_dir,
        )  # fmt: skip
        _ray_start(
            [f"--address=127.0.0.1:{port}", f"--temp-dir={worker_dir}",
             '--resources={"llm_gateway": 2}', *common],
            env, worker_dir,
        )  # fmt: skip
        yield Nodes(f"127.0.0.1:{port}", env, head_dir, worker_dir)
    finally:
        _kill(worker_dir)
        _kill(head_dir)
        shutil.rmtree(head_dir, ignore_errors=True)
        shutil.rmtree(worker_dir, ignore_errors=True)


def _write(tmp_path: Path, text: str, rows: int = 400) -> Path:
    src = tmp_path / "in.csv"
    src.write_text("n,text\n" + "".join(f"{i},message {i}\n" for i in range(rows)), encoding="utf-8")
    path = tmp_path / "pipe.yaml"
    path.write_text(
        f"version: 1\nname: nodes\nnodes:\n  input: {{op: read_csv, path: {src}, split_bytes: 1KiB}}\n" + text
    )
    return path


def test_what_only_the_sum_of_the_nodes_could_hold_is_refused_at_its_line(
    nodes: Nodes, tmp_path: Path
) -> None:
    path = _write(
        tmp_path,
        f"""  big:
    op: map_batches
    input: input
    fn: tests.integration.udfs_cluster:tag_node
    resources: {{num_cpus: 2}}
  classify:
    op: llm_classify
    input: big
    provider: offline
    prompt: "{{{{ text }}}}"
    labels: [a, b]
    resources: {{custom: {{gpu_gateway: 1}}}}
  output: {{op: write_parquet, input: classify, path: {tmp_path / "out"}}}
""",
    )
    started = time.monotonic()
    done = run_headrace("run", path, "--address", nodes.address, env=nodes.env, timeout=150)
    assert done.returncode == 1, done.stderr[-3000:]
    assert time.monotonic() - started < 120  # refused, not hung (a run of it would wait for ever)
    assert f"{path}:9:" in done.stderr and "needs, per task, 2 CPU; no node has 2 CPU" in done.stderr
    assert f"{path}:16:" in done.stderr and "per pool actor, 1 gpu_gateway; no node has" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_run_uses_both_nodes_and_a_pool_larger_than_its_gateway_writes_every_row(
    nodes: Nodes, tmp_path: Path
) -> None:
    path = _write(
        tmp_path,
        f"""  where:
    op: map_batches
    input: input
    fn: tests.integration.udfs_cluster:tag_node_slowly
    kwargs: {{seconds: 0.3}}
    resources: {{memory: 16MiB}}
  classify:
    op: llm_classify
    input: where
    provider: anthropic
    prompt: "{{{{ text }}}}"
    labels: [a, b]
    resources: {{concurrency: 3, custom: {{llm_gateway: 1}}}}
  output: {{op: write_parquet, input: classify, path: {tmp_path / "out"}}}
""",
        rows=300,
    )
    key = "sk-ant-ray-start-3c1d"
    with LLMServer(api_key=key) as server:
        env = dict(nodes.env, ANTHROPIC_API_KEY=key, ANTHROPIC_BASE_URL=server.url)
        env["HEADRACE_CACHE_DIR"] = str(tmp_path / "cache")
        done = run_headrace("run", path, "--json", "--address", nodes.address, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["status"] == "succeeded"
    table = pq.read_table(tmp_path / "out")
    # every part written although only two of the pool's three actors could be placed
    assert sorted(table["n"].to_pylist()) == list(range(300))
    assert len(set(table["node_id"].to_pylist())) == 2  # each 1-CPU node ran splits


def test_a_cpu_capped_tenant_uses_a_pool_that_needs_a_custom_resource(nodes: Nodes, tmp_path: Path) -> None:
    """Point 3: the tenant's tasks go into its one-CPU placement group; the pool's actors, a cluster
    service asking for ``llm_gateway``, are placed outside it, on the worker."""
    path = _write(
        tmp_path,
        f"""  classify:
    op: llm_classify
    input: input
    provider: offline
    prompt: "{{{{ text }}}}"
    labels: [a, b]
    resources: {{custom: {{llm_gateway: 1}}}}
  output: {{op: write_parquet, input: classify, path: {tmp_path / "out"}}}
""",
        rows=100,
    )
    quota = json.dumps({"max_cpus": 1})
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.tenant_procs", "drive", nodes.address, str(path),
         "capped", quota],
        env=nodes.env, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "succeeded", outcome["error"]
    assert sorted(pq.read_table(tmp_path / "out")["n"].to_pylist()) == list(range(100))


def test_a_run_whose_only_node_for_its_work_dies_stops_naming_what_it_lacks(
    nodes: Nodes, tmp_path: Path
) -> None:
    """Last in the module: it takes the worker node away."""
    path = _write(
        tmp_path,
        f"""  where:
    op: map_batches
    input: input
    fn: tests.integration.udfs_cluster:tag_node_slowly
    resources: {{custom: {{llm_gateway: 1}}}}
    retry: {{max_attempts: 5, initial_backoff_s: 0.1}}
  output: {{op: write_parquet, input: where, path: {tmp_path / "out"}}}
""",
        rows=2_000,
    )
    env = dict(nodes.env, HEADRACE_UNSCHEDULABLE_S="4")
    proc = subprocess.Popen(
        [*HEADRACE, "run", str(path), "--json", "--address", nodes.address],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not list((tmp_path / "out").glob("part-*.parquet")):  # work is under way on the worker
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        _kill(nodes.worker_dir)  # the machine goes away, and with it every llm_gateway
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["status"] == "failed"
    assert "node 'where' (one task) asks for 1 CPU, 1 llm_gateway" in summary["error"]
    assert "no alive Ray node has had it" in summary["error"] and "1 node: {1 CPU" in summary["error"]
    assert f"{path}:5:" in summary["error"]  # the node's place in the file
