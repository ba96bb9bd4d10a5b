"""Capacity is judged node by node (issue 25, point 2): Ray places a task or an actor on one node, so a
request that only the sum of the nodes could hold is refused at compile time, at its line, for tasks and
for LLM pool actors alike."""

from __future__ import annotations

from pathlib import Path

from engine.capacity import describe_nodes, fits_somewhere, needs
from engine.check import check_file
from engine.compile import capacity_problems, compile_pipeline
from tests.unit.helpers import write

TWO_ONE_CPU_NODES = [{"CPU": 1.0, "memory": 2.0 * 2**30}, {"CPU": 1.0, "llm_gateway": 2.0}]

PIPE = """\
version: 1
name: t
nodes:
  input: {{op: read_csv, path: in.csv}}
  work:
    op: map_batches
    input: input
    fn: tests.integration.udfs:slow
    resources: {work}
  c:
    op: llm_classify
    input: work
    provider: offline
    prompt: "{{{{ body }}}}"
    labels: [a, b]
    resources: {llm}
  out: {{op: write_parquet, input: c, path: out/}}
"""


def _problems(
    tmp_path: Path, work: str = "{num_cpus: 1}", llm: str = "{concurrency: 1}"
) -> list[tuple[int, str]]:
    (tmp_path / "in.csv").write_text("id,body\n1,hello\n")
    checked = check_file(str(write(tmp_path / "p.yaml", PIPE.format(work=work, llm=llm))))
    compiled = compile_pipeline(checked)
    assert compiled.errors == []
    return [(d.line, d.message) for d in capacity_problems(compiled, TWO_ONE_CPU_NODES)]


def test_a_task_that_only_the_sum_of_the_nodes_could_hold_is_refused_at_its_line(tmp_path: Path) -> None:
    ((line, message),) = _problems(tmp_path, work="{num_cpus: 2}")
    assert line == 9
    assert "node 'work' needs, per task, 2 CPU; no node has 2 CPU" in message
    assert "2 nodes: {1 CPU, 2 GiB memory}, {1 CPU, 2 llm_gateway}" in message


def test_a_task_needing_resources_that_no_one_node_has_together_is_refused(tmp_path: Path) -> None:
    ((line, message),) = _problems(tmp_path, work="{memory: 1GiB, custom: {llm_gateway: 1}}")
    assert line == 9 and "no single node has all of it at once" in message


def test_an_llm_pool_actor_asking_for_what_no_node_has_is_refused_at_its_line(tmp_path: Path) -> None:
    ((line, message),) = _problems(tmp_path, llm="{custom: {gpu_gateway: 1}}")
    assert line == 16
    assert "LLM node 'c' needs, per pool actor, 1 gpu_gateway; no node has 1 gpu_gateway" in message


def test_requests_one_node_can_hold_pass(tmp_path: Path) -> None:
    assert _problems(tmp_path, work="{num_cpus: 1, memory: 1GiB}", llm="{custom: {llm_gateway: 2}}") == []


def test_the_fit_ignores_resources_nobody_asks_for_and_names_nodes_plainly() -> None:
    need = needs({"num_cpus": 0, "resources": {"llm_gateway": 1}})
    assert need == {"llm_gateway": 1.0}
    assert fits_somewhere(need, TWO_ONE_CPU_NODES)
    assert not fits_somewhere({"CPU": 1.0, "llm_gateway": 1.0, "memory": 1.0}, TWO_ONE_CPU_NODES)
    assert (
        describe_nodes([{"CPU": 2.0, "node:127.0.0.1": 1.0, "object_store_memory": 1e8}]) == "1 node: {2 CPU}"
    )
    assert describe_nodes([]) == "no alive node"
