"""The ``pipeline`` op: another pipeline file run as one node of a state graph, checked and drawn."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.check import check_file
from engine.cli.main import cli
from engine.compile import compile_pipeline
from engine.graph.spec import graph_from_spec, graph_to_spec
from engine.runtime.graphs import compile_checked
from engine.spec.loader import load_pipeline

CHILD = """version: 1
name: child
params: {target_score: 3}
max_steps: 30
state:
  fields:
    topic: {type: string, default: ""}
    draft: {type: string, default: ""}
    revisions: {type: integer, default: 0}
    score: {type: integer, default: 0}
    notes: {type: array, default: [], reducer: append}
nodes:
  write: {op: call, fn: configs.examples.review_loop:write_draft}
  review: {op: call, fn: configs.examples.review_loop:review_draft}
edges:
  - {from: START, to: write}
  - {from: write, to: review}
  - from: review
    branches:
      - {when: "score >= params.target_score", to: END}
      - {to: write}
"""
PARENT = """version: 1
name: parent
state:
  fields:
    subject: {type: string, default: "Ray"}
    text: {type: string, default: ""}
    notes: {type: array, default: [], reducer: append}
nodes:
  draft:
    op: pipeline
    path: parts/child.yaml
    params: {target_score: 6}
    in_fields: {topic: subject}
    out_fields: {text: draft, notes: notes}
edges:
  - {from: START, to: draft}
  - {from: draft, to: END}
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "child.yaml").write_text(CHILD)
    (tmp_path / "parent.yaml").write_text(PARENT)
    return tmp_path


def test_a_pipeline_node_runs_the_file_with_params_inputs_and_outputs(files: Path) -> None:
    app = compile_checked(check_file(str(files / "parent.yaml")), f"sqlite:///{files / 'runs.db'}")
    final = app.invoke({"subject": "Ray"})
    # params override the child's target (3): two review rounds of 3 points each reach 6
    assert final.text == "Ray: a clear title one example per claim"
    assert final.notes == ["wrote revision 1", "scored 3", "wrote revision 2", "scored 6"]


def test_without_field_maps_the_shared_fields_go_in_and_out(files: Path) -> None:
    (files / "shared.yaml").write_text(
        PARENT.replace(
            '    subject: {type: string, default: "Ray"}\n', '    topic: {type: string, default: ""}\n'
        )
        .replace("    in_fields: {topic: subject}\n", "")
        .replace("    out_fields: {text: draft, notes: notes}\n", "")
    )
    spec = load_pipeline(str(files / "shared.yaml")).spec
    final = graph_from_spec(spec, base_dir=str(files)).compile().invoke({"topic": "Arrow"})
    assert final.notes[-1] == "scored 6" and final.text == ""  # `text` is not a child field
    assert graph_to_spec(graph_from_spec(spec, base_dir=str(files))) == spec  # written back as read


def test_validate_checks_the_sub_pipeline_at_its_own_lines(files: Path) -> None:
    (files / "parts" / "child.yaml").write_text(CHILD.replace("reducer: append", "reducer: appendx"))
    result = CliRunner().invoke(cli, ["validate", str(files / "parent.yaml")])
    assert result.exit_code == 1
    assert result.output.startswith(
        f"{files / 'parts' / 'child.yaml'}:11:48: error: 'appendx' is not allowed"
    )


def test_a_pipeline_that_runs_itself_is_an_error_naming_the_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    node = (
        "state: {{fields: {{x: {{type: integer, default: 0}}}}}}\nnodes:\n  sub: {{op: pipeline, path: {}}}\n"
    )
    edges = "edges:\n  - {from: START, to: sub}\n"
    (tmp_path / "a.yaml").write_text("version: 1\nname: a\n" + node.format("b.yaml") + edges)
    (tmp_path / "b.yaml").write_text("version: 1\nname: b\n" + node.format("a.yaml") + edges)
    problems = compile_pipeline(check_file("a.yaml"), credentials="warning").problems
    assert [(p.path, p.line, p.col, p.message) for p in problems] == [
        ("b.yaml", 5, 29, "pipeline cycle: a.yaml -> b.yaml -> a.yaml")
    ]


def test_a_missing_or_dataflow_sub_pipeline_is_refused_at_the_node(files: Path) -> None:
    (files / "parts" / "flow.yaml").write_text(
        "version: 1\nname: f\nnodes:\n  a: {op: read_csv, path: in.csv}\n"
        "  b: {op: write_csv, input: a, path: out/}\n"
    )
    for ref, expected in [("parts/nowhere.yaml", "is not a file"), ("parts/flow.yaml", "is a dataflow")]:
        (files / "p.yaml").write_text(PARENT.replace("parts/child.yaml", ref))
        (problem,) = compile_pipeline(check_file(str(files / "p.yaml")), credentials="warning").problems
        assert (problem.line, problem.col) == (11, 11) and expected in problem.message


def test_graph_draws_the_sub_pipeline_as_a_cluster(files: Path) -> None:
    mermaid = CliRunner().invoke(cli, ["graph", str(files / "parent.yaml")]).output
    assert 'subgraph draft ["draft: pipeline parts/child.yaml"]' in mermaid
    assert "draft_write -.-> draft_review" in mermaid
    dot = CliRunner().invoke(cli, ["graph", str(files / "parent.yaml"), "--format", "dot"]).output
    assert 'subgraph "cluster_draft" {' in dot and '"draft/write" -> "draft/review" [style=dashed];' in dot
