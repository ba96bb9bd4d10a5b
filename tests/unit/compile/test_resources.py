"""`Resources` is a value: it combines and scales, converts to Ray options in one place used by tasks,
LLM pools and graph nodes; `concurrency` bounds a node's tasks whatever its op; GPUs reach LLM pools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connectors.readers import Split
from engine.check import check_file
from engine.compile import compile_pipeline
from engine.graph.remote import _options as graph_node_options
from engine.runtime.scheduler import Scheduler, StageRun
from engine.runtime.summary import RunSummary
from engine.spec.models import Resources
from tests.unit.helpers import write


def test_combine_takes_the_most_of_each_amount_and_the_tightest_concurrency() -> None:
    a = Resources(num_cpus=1, memory=2**30, custom={"ssd": 1}, concurrency=4)
    b = Resources(num_cpus=0.5, num_gpus=1, custom={"ssd": 2, "net": 1}, concurrency=2)
    assert a.combine(b) == Resources(
        num_cpus=1, num_gpus=1, memory=2**30, custom={"ssd": 2, "net": 1}, concurrency=2
    )
    assert Resources().combine(a) == a and a.combine(Resources()) == a


def test_scale_multiplies_every_amount() -> None:
    one = Resources(num_cpus=0.5, num_gpus=1, memory=100, custom={"ssd": 1}, concurrency=3)
    assert one.scale(4) == Resources(num_cpus=2, num_gpus=4, memory=400, custom={"ssd": 4}, concurrency=3)


def test_one_conversion_to_ray_options() -> None:
    full = Resources(num_cpus=2, num_gpus=1, memory=2**30, custom={"ssd": 1})
    assert full.ray_options() == {"num_cpus": 2, "num_gpus": 1, "memory": 2**30, "resources": {"ssd": 1}}
    assert Resources().ray_options() == {"num_cpus": 1.0}
    assert Resources().ray_options(default_cpus=0.0) == {"num_cpus": 0.0}


def _compiled(tmp_path: Path, text: str) -> Any:
    (tmp_path / "in.csv").write_text("id,body\n1,hello\n")
    compiled = compile_pipeline(check_file(str(write(tmp_path / "p.yaml", text))))
    assert compiled.errors == [], compiled.errors
    return compiled


def test_num_gpus_reaches_an_llm_pool_and_concurrency_sizes_it(tmp_path: Path) -> None:
    compiled = _compiled(
        tmp_path,
        """version: 1
name: t
nodes:
  input: {op: read_csv, path: in.csv}
  c:
    op: llm_map
    input: input
    provider: offline
    prompt: "{{ body }}"
    resources: {num_gpus: 1, memory: 1GiB, concurrency: 3}
  out: {op: write_parquet, input: c, path: out/}
""",
    )
    (pool,) = compiled.pools
    assert dict(pool.ray_options) == {"num_cpus": 0.0, "num_gpus": 1, "memory": 2**30}
    assert pool.size == 3
    # the pooled node's resources are its actors', not the fused task's
    assert compiled.physical[0].ray_options == {"num_cpus": 1.0}


def test_concurrency_of_a_plain_node_bounds_its_stage(tmp_path: Path) -> None:
    compiled = _compiled(
        tmp_path,
        """version: 1
name: t
nodes:
  input: {op: read_csv, path: in.csv}
  f: {op: filter, input: input, where: "id > 0", resources: {concurrency: 2}}
  out: {op: write_parquet, input: f, path: out/}
""",
    )
    assert compiled.physical[0].concurrency == 2


def test_graph_nodes_use_the_same_conversion() -> None:
    class Node:
        resources = Resources(num_cpus=2, num_gpus=1)

    assert graph_node_options(Node()) == {"num_cpus": 2, "num_gpus": 1, "max_retries": 0}  # type: ignore[arg-type]


@pytest.mark.parametrize(("concurrency", "started"), [(None, 5), (2, 2)])
def test_the_scheduler_starts_no_more_heads_than_the_stage_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, concurrency: int | None, started: int
) -> None:
    limit = f", resources: {{concurrency: {concurrency}}}" if concurrency else ""
    text = (
        "version: 1\nname: t\nnodes:\n  input: {op: read_csv, path: in.csv}\n"
        f"  f: {{op: filter, input: input, where: 'id > 0'{limit}}}\n"
        "  out: {op: write_parquet, input: f, path: out/}\n"
    )
    stage = _compiled(tmp_path, text).physical[0]
    splits = [Split("input", i, "in.csv", 0, 1) for i in range(5)]
    scheduler = Scheduler(RunSummary("r", "t", "succeeded", 0.0, {}), 8, lambda run, result: None)
    submitted: list[int] = []
    monkeypatch.setattr(scheduler, "head", lambda run, split, emit: submitted.append(split.index) or object())
    scheduler._fill([_fused(scheduler, StageRun(stage, splits))])
    assert len(submitted) == started and scheduler.heads == started


def _fused(scheduler: Scheduler, run: StageRun) -> Any:
    from engine.runtime.scheduler import _FusedDriver

    return _FusedDriver(scheduler, run)
