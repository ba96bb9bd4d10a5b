"""A dataflow's ``pipeline`` node: its file is inlined when loaded, located, checked and drawn."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.check import check_file
from engine.cli.main import cli
from engine.compile import compile_pipeline
from engine.errors import ConfigError
from engine.spec.loader import load_pipeline

CHILD = """version: 1
name: triage
params: {min_length: 5}
budget: {max_cost_usd: 2}
providers:
  offline:
    config:
      answers: {"min 5)": other, crash: bug, charged: billing, refund: billing}
nodes:
  rows:
    op: read_csv
    path: ../data.csv
  clean:
    op: filter
    input: rows
    where: "length(body) >= 5"
  label:
    op: llm_classify
    input: clean
    provider: offline
    prompt: "Team (min {{ params.min_length }}): {{ body }}"
    labels: [bug, billing, other]
    output: team
  out:
    op: write_parquet
    input: label
    path: out/triage
"""
PARENT = """version: 1
name: parent
nodes:
  tickets:
    op: read_csv
    path: data.csv
  triage:
    op: pipeline
    path: parts/triage.yaml
    input: tickets
    params: {min_length: 3}
  keep:
    op: sql
    input: triage
    query: "SELECT id, team FROM batch"
  output:
    op: write_csv
    input: keep
    path: ${HEADRACE_OUT:-out}/result
    overwrite: true
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "parts").mkdir()
    (tmp_path / "data.csv").write_text(
        "id,body\n1,the app crashes on start\n2,I was charged twice\n3,ok\n4,please refund me\n"
    )
    (tmp_path / "parts" / "triage.yaml").write_text(CHILD)
    (tmp_path / "parent.yaml").write_text(PARENT)
    return tmp_path


def test_the_sub_pipeline_is_inlined_between_the_input_and_the_readers_of_the_node(files: Path) -> None:
    loaded = load_pipeline(str(files / "parent.yaml"))
    nodes = loaded.spec.nodes
    assert list(nodes) == ["tickets", "triage.clean", "triage.label", "keep", "output"]
    assert nodes["triage.clean"].inputs() == ("tickets",)  # its source is the node's input
    assert nodes["triage.label"].inputs() == ("triage.clean",)
    assert nodes["keep"].inputs() == ("triage.label",)  # what the sub-pipeline's sink read
    assert loaded.spec.params == {"min_length": 3}  # the node's params override the file's
    assert "offline" in loaded.spec.providers  # its providers come along
    assert loaded.groups == {"triage": "parts/triage.yaml"}
    # its run-wide settings are the root's: a warning at the sub-file's line says so
    (warning,) = loaded.warnings
    assert (Path(warning.path).name, warning.line, warning.severity) == ("triage.yaml", 4, "warning")
    assert "`budget` of sub-pipeline 'parts/triage.yaml' does not apply" in warning.message
    compiled = compile_pipeline(check_file(str(files / "parent.yaml")), credentials="warning")
    assert not [p for p in compiled.problems if p.severity == "error"]


def test_errors_in_the_sub_pipeline_keep_its_file_and_line(files: Path) -> None:
    child = files / "parts" / "triage.yaml"
    # found when the sub-file is loaded (schema)
    child.write_text(CHILD.replace('    where: "length(body) >= 5"', "    where: 5"))
    with pytest.raises(ConfigError) as schema:
        load_pipeline(str(files / "parent.yaml"))
    (problem,) = schema.value.diagnostics
    assert (problem.path, problem.line) == (str(child), 16)
    # found at compile time, on the parent's plan: still located in the sub-file
    child.write_text(CHILD.replace("provider: offline", "provider: no_such_provider"))
    compiled = compile_pipeline(check_file(str(files / "parent.yaml")), credentials="warning")
    errors = [p for p in compiled.problems if p.severity == "error"]
    assert errors and all(p.path == str(child) for p in errors), [p.format() for p in errors]
    assert any("no_such_provider" in p.message and p.line == 20 for p in errors)


def test_a_pipeline_that_inlines_itself_is_an_error_naming_the_chain(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(files)
    child = files / "parts" / "triage.yaml"
    child.write_text(
        CHILD.replace(
            "  out:\n",
            "  again:\n    op: pipeline\n    path: ../parent.yaml\n    input: label\n  out:\n",
        ).replace("    input: label\n    path: out", "    input: again\n    path: out")
    )
    with pytest.raises(ConfigError) as exc:
        load_pipeline(str(files / "parent.yaml"))
    (problem,) = exc.value.diagnostics
    assert problem.path == str(child) and problem.line == 26
    assert "pipeline cycle:" in problem.message
    assert problem.message == "pipeline cycle: parent.yaml -> parts/triage.yaml -> parent.yaml"


@pytest.mark.parametrize(
    ("child", "expected"),
    [
        (
            CHILD.replace("  out:\n    op: write_parquet\n    input: label\n    path: out/triage\n", ""),
            "0 sink(s)",
        ),
        (
            "version: 1\nname: g\nnodes:\n  a: {op: call, fn: m:f}\nedges:\n  - {from: START, to: a}\n",
            "state graph",
        ),
    ],
)
def test_a_sub_pipeline_that_is_not_one_source_to_one_sink_is_refused_at_the_node(
    files: Path, child: str, expected: str
) -> None:
    (files / "parts" / "triage.yaml").write_text(child)
    with pytest.raises(ConfigError) as exc:
        load_pipeline(str(files / "parent.yaml"))
    (problem,) = exc.value.diagnostics
    assert problem.path == str(files / "parent.yaml") and expected in problem.message


def test_a_param_the_parent_gives_another_value_is_an_error(files: Path) -> None:
    (files / "parent.yaml").write_text(
        PARENT.replace("name: parent\n", "name: parent\nparams: {min_length: 9}\n")
    )
    with pytest.raises(ConfigError) as exc:
        load_pipeline(str(files / "parent.yaml"))
    (problem,) = exc.value.diagnostics
    assert problem.line == 12 and "param 'min_length' is 3 in the sub-pipeline and 9 here" in problem.message


def test_graph_draws_the_inlined_sub_pipeline_as_a_cluster(files: Path) -> None:
    dot = CliRunner().invoke(cli, ["graph", str(files / "parent.yaml"), "--format", "dot"])
    assert dot.exit_code == 0, dot.output
    assert (
        '    subgraph "cluster_triage" {\n'
        '        label="triage: pipeline parts/triage.yaml";\n'
        '        "triage.clean" [shape=box, label="triage.clean\\nfilter"];\n'
        '        "triage.label" [shape=box, label="triage.label\\nllm_classify"];\n'
        "    }\n"
    ) in dot.output
    assert '"tickets" -> "triage.clean";' in dot.output and '"triage.label" -> "keep";' in dot.output
    mermaid = CliRunner().invoke(cli, ["graph", str(files / "parent.yaml")])
    assert '    subgraph group_triage ["triage: pipeline parts/triage.yaml"]' in mermaid.output


def test_a_misspelt_field_of_the_node_is_an_error_at_its_line(files: Path) -> None:
    (files / "parent.yaml").write_text(
        PARENT.replace("    params: {min_length: 3}\n", "    parms: {min_length: 3}\n")
    )
    with pytest.raises(ConfigError) as exc:
        load_pipeline(str(files / "parent.yaml"))
    (problem,) = exc.value.diagnostics
    assert (problem.line, problem.json_path) == (11, "nodes.triage.parms")
    assert "node 'triage': Extra inputs are not permitted" in problem.message
