"""Running against an existing multi-node Ray cluster with ``--address``: headrace ships its own code
to the cluster and nodes land on the machines that offer the resources they ask for."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ray.cluster_utils import Cluster

from tests.cli import HEADRACE, run_headrace
from tests.loopback import LLMServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_node_cluster() -> Iterator[Cluster]:
    # the cluster's workers import the tests' user functions from the repository
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 128 * 1024 * 1024, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, resources={"llm_gateway": 1}, object_store_memory=128 * 1024 * 1024)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()
    if previous is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = previous


def test_run_on_an_existing_cluster_places_nodes_by_custom_resource(
    two_node_cluster: Cluster, tmp_path: Path
) -> None:
    src = tmp_path / "in.csv"
    src.write_text("n\n" + "".join(f"{i}\n" for i in range(500)), encoding="utf-8")
    path = tmp_path / "pipe.yaml"
    path.write_text(
        f"""version: 1
name: placed
nodes:
  input: {{op: read_csv, path: {src}, split_bytes: 512}}
  where:
    op: map_batches
    input: input
    fn: tests.integration.udfs_cluster:tag_node
    resources: {{custom: {{llm_gateway: 0.5}}}}
  output: {{op: write_parquet, input: where, path: {tmp_path / "out"}}}
""",
        encoding="utf-8",
    )
    proc = run_headrace(
        "run", path, "--json", "--address", two_node_cluster.address, env={"PYTHONPATH": str(ROOT)}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["status"] == "succeeded"
    table = pq.read_table(tmp_path / "out")
    assert sorted(table["n"].to_pylist()) == list(range(500))
    (gateway,) = [node.node_id for node in two_node_cluster.worker_nodes]
    assert set(table["node_id"].to_pylist()) == {gateway}  # only the machine with the resource ran them


def test_llm_pool_on_a_cluster_gets_the_key_from_the_driver_environment(
    two_node_cluster: Cluster, tmp_path: Path
) -> None:
    key = "sk-ant-cluster-test-7a6b"
    src = tmp_path / "in.csv"
    src.write_text("id,text\n" + "".join(f"{i},message {i}\n" for i in range(40)), encoding="utf-8")
    path = tmp_path / "pipe.yaml"
    path.write_text(
        f"""version: 1
name: llm-on-cluster
nodes:
  input: {{op: read_csv, path: {src}}}
  classify:
    op: llm_classify
    input: input
    provider: anthropic
    prompt: "{{{{ text }}}}"
    labels: [a, b]
    resources: {{custom: {{llm_gateway: 1}}}}
  output: {{op: write_parquet, input: classify, path: {tmp_path / "out"}}}
""",
        encoding="utf-8",
    )
    # the server refuses any other key: an answer proves the key reached the pool's machine
    with LLMServer(api_key=key) as server:
        env = {
            "PYTHONPATH": str(ROOT),
            "ANTHROPIC_API_KEY": key,
            "ANTHROPIC_BASE_URL": server.url,
            "HEADRACE_CACHE_DIR": str(tmp_path / "cache"),
        }
        proc = run_headrace("run", path, "--json", "--address", two_node_cluster.address, env=env)
        answered = [r for r in server.requests if r.status == 200]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["status"] == "succeeded"
    assert len(answered) == 40 and all(r.api_key_present for r in answered)
    assert key not in proc.stdout + proc.stderr
    assert pq.read_table(tmp_path / "out").num_rows == 40


def test_losing_a_worker_machine_mid_run_costs_retries_not_rows(tmp_path: Path) -> None:
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 128 * 1024 * 1024, "include_dashboard": False},
    )
    try:
        doomed = cluster.add_node(num_cpus=2, resources={"worker": 1}, object_store_memory=128 * 1024 * 1024)
        cluster.add_node(num_cpus=2, resources={"worker": 1}, object_store_memory=128 * 1024 * 1024)
        cluster.wait_for_nodes()
        src = tmp_path / "in.csv"
        src.write_text("n\n" + "".join(f"{i}\n" for i in range(4_000)), encoding="utf-8")
        path = tmp_path / "pipe.yaml"
        path.write_text(
            f"""version: 1
name: survives
nodes:
  input: {{op: read_csv, path: {src}, split_bytes: 1KiB}}
  where:
    op: map_batches
    input: input
    fn: tests.integration.udfs_cluster:tag_node_slowly
    resources: {{custom: {{worker: 0.25}}}}
    retry: {{max_attempts: 5, initial_backoff_s: 0.1}}
  output: {{op: write_parquet, input: where, path: {tmp_path / "out"}}}
""",
            encoding="utf-8",
        )
        proc = subprocess.Popen(
            [*HEADRACE, "run", str(path), "--json", "--address", cluster.address],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out = tmp_path / "out"
        deadline = time.monotonic() + 120
        while len(list(out.glob("part-*.parquet"))) < 3:  # work is under way on both machines
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        cluster.remove_node(doomed)  # the machine goes away with tasks on it
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        summary = json.loads(stdout)
        assert summary["status"] == "succeeded"
        assert summary["retries"] >= 1  # the splits lost with the machine were retried, and counted
        table = pq.read_table(out)
        assert sorted(table["n"].to_pylist()) == list(range(4_000))  # none lost, none twice
        assert doomed.node_id in set(table["node_id"].to_pylist())  # it did work before it went
    finally:
        cluster.shutdown()
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous


def test_bench_on_a_cluster_gives_each_machines_figures(two_node_cluster: Cluster, tmp_path: Path) -> None:
    example = ROOT / "configs" / "examples" / "csv_to_parquet.yaml"
    once = ("--repeats", "1", "--warmup", "0", "--reruns", "0", "--json")
    env = {"PYTHONPATH": str(ROOT), "HEADRACE_HOME": str(tmp_path)}
    proc = run_headrace("bench", example, "--address", two_node_cluster.address, *once, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["where"] == {"mode": "cluster", "nodes": 2, "address": two_node_cluster.address}
    machines = doc["variants"][0]["figures"]["machines"]
    nodes = {two_node_cluster.head_node.node_id, *(n.node_id for n in two_node_cluster.worker_nodes)}
    assert set(machines) == nodes  # one probe per Ray node, each with its own figures
    assert all(m["peak_memory_mb"]["median"] > 0 and m["tree_cpu_s"] is not None for m in machines.values())
