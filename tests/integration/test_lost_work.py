"""Work that dies with its process or node (issue 25, points 4 and 6): a split whose worker died is
retried by the driver and counted in the run's retries; an LLM batch whose pool actor keeps dying is sent
to a fresh actor each time, and only when those retries are used up does the run fail, naming the loss
of the actor's process or node rather than the provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from engine.check import check_file
from engine.errors import NodeLostError
from engine.runtime import run_checked
from engine.runtime.llm.director import PoolDirector
from engine.runtime.llm.pool import PoolBatch, PoolClient
from tests.integration.udfs_cluster import DyingPoolWorker

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]


def test_a_split_whose_worker_died_is_retried_and_counted_in_the_runs_retries(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("n\n" + "".join(f"{i}\n" for i in range(200)), encoding="utf-8")
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "out"
    path = tmp_path / "pipe.yaml"
    path.write_text(
        f"""version: 1
name: dies-once
defaults:
  retry: {{max_attempts: 3, initial_backoff_s: 0.05, max_backoff_s: 0.2}}
nodes:
  input: {{op: read_csv, path: "{src}", split_bytes: 400}}
  fragile:
    op: map_batches
    input: input
    fn: tests.integration.udfs_cluster:die_once
    kwargs: {{marker_dir: "{markers}"}}
  output: {{op: write_parquet, input: fragile, path: "{out}"}}
""",
        encoding="utf-8",
    )
    summary = run_checked(check_file(str(path)), progress=False)
    assert summary.status == "succeeded", summary.error
    parts = len(list(out.glob("part-*.parquet")))
    assert parts > 1 and summary.retries == parts  # each split's worker died once: one retry each
    assert summary.as_dict()["retries"] == parts  # what `--json` says
    assert sorted(pq.read_table(out)["n"].to_pylist()) == list(range(200))


def test_a_batch_whose_pool_actor_keeps_dying_fails_naming_the_loss_after_its_retries() -> None:
    options = {"max_concurrency": 10_000, "scheduling_strategy": "DEFAULT", "num_cpus": 0}
    director = ray.remote(PoolDirector).options(**options).remote("test-dying-pool", DyingPoolWorker)
    fields: dict[str, Any] = {
        "spec": None,
        "params": {},
        "settings": None,
        "ledger": None,
        "limiter": None,
        "epoch": 0,
    }
    batch = PoolBatch(run_id="r", node="classify", **fields)
    client = PoolClient("test-dying-pool", batch, director)
    try:
        with pytest.raises(NodeLostError) as caught:
            client.ask(pa.table({"text": ["a", "b"]}))
        status = ray.get(director.status.remote())
    finally:
        ray.kill(director)
    message = str(caught.value)
    assert caught.value.node == "classify"
    assert message.startswith("node 'classify': the LLM pool actor answering this batch was lost 4 times")
    assert "its process or its Ray node having died" in message and "ray status" in message
    assert status["started"] == 4  # a fresh actor for every attempt
