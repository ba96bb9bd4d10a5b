"""``headrace import pipeline-ex``: conversion of pipeline_ex workflows, validation, and offline runs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.check import check_file
from engine.cli.main import cli
from engine.compile import compile_pipeline
from engine.graph.spec import graph_from_spec, recursion_limit_of
from engine.importers import import_pipeline_ex
from engine.importers.pipeline_ex.expressions import Scope, build_prompt, evaluate_condition, interpolate
from engine.importers.pipeline_ex.transforms import apply_operations
from engine.spec.loader import load_pipeline

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "pipeline_ex"
EXAMPLES = sorted((FIXTURES / "examples").glob("*.yaml"))
OWN = ["loops_and_variables", "switch_and_checkpoint", "nested_parent", "structured_and_transform"]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("PIPELINE_EX_CLAUDE_PROVIDER", "offline")
    monkeypatch.setenv("PIPELINE_EX_GEMINI_PROVIDER", "offline")
    work = tmp_path / "work"
    shutil.copytree(FIXTURES / "own", work)
    monkeypatch.chdir(work)
    return work


def _convert_and_write(source: Path, out: Path) -> Path:
    result = import_pipeline_ex(str(source), base_dir=str(source.parent))
    assert result.ok, [p.format() for p in result.problems]
    assert result.text is not None
    out.write_text(result.text, encoding="utf-8")
    for name, text in result.nested.items():
        (out.parent / name).parent.mkdir(parents=True, exist_ok=True)
        (out.parent / name).write_text(text, encoding="utf-8")
    return out


def _run(path: Path, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = load_pipeline(str(path)).spec
    final = graph_from_spec(spec).compile().invoke(inputs or {}, recursion_limit=recursion_limit_of(spec))
    return dict(final.steps)


# -- the corpus: pipeline_ex's own examples and workflows in their style ------------------------------


def test_the_corpus_has_at_least_20_workflows() -> None:
    assert len(EXAMPLES) + len(OWN) >= 20


@pytest.mark.parametrize(
    "source", EXAMPLES + [FIXTURES / "own" / f"{n}.yaml" for n in OWN], ids=lambda p: p.stem
)
def test_each_workflow_converts_and_passes_validate(source: Path, tmp_path: Path) -> None:
    out = _convert_and_write(source, tmp_path / source.name)
    checked = check_file(str(out))  # raises ConfigError with located problems when invalid
    errors = [d for d in compile_pipeline(checked, credentials="warning").problems if d.severity == "error"]
    assert errors == []


def test_share_without_warnings_is_reported_and_stable() -> None:
    clean = [p.stem for p in EXAMPLES if not import_pipeline_ex(str(p), base_dir=str(p.parent)).problems]
    # pipeline_ex's examples lean on agent tools, Claude session options and documented-only fields:
    # 8 of its 25 workflow examples convert without a warning (the others name each field they lose)
    assert len(clean) == 8, clean
    assert "simple_test" in clean and "claude_batch_example" in clean


def test_comments_above_steps_and_at_the_top_are_kept(tmp_path: Path) -> None:
    out = _convert_and_write(FIXTURES / "own" / "loops_and_variables.yaml", tmp_path / "l.yaml").read_text()
    assert "# A v2 workflow in the style of pipeline_ex's examples" in out
    assert "  # seed the list the loop walks over\n  seed:" in out


# -- problems: located, one per line, no traceback ---------------------------------------------------


def test_a_file_that_cannot_be_converted_gets_one_located_line_per_problem() -> None:
    result = CliRunner().invoke(cli, ["import", "pipeline-ex", str(FIXTURES / "own" / "broken.yaml")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == [
        f"{FIXTURES / 'own' / 'broken.yaml'}:8:11: error: step 'first': previous_response names step "
        "'missing_step', which does not run before it",
        f"{FIXTURES / 'own' / 'broken.yaml'}:10:7: error: step 'second': unknown step type 'teleport'; "
        "pipeline_ex runs none by that name either",
    ]
    assert "Traceback" not in result.output


def test_agent_steps_become_calls_of_the_extension_point_with_a_warning_at_their_line() -> None:
    source = FIXTURES / "examples" / "claude_session_example.yaml"
    result = import_pipeline_ex(str(source))
    assert result.ok and result.text is not None
    assert result.text.count("fn: engine.importers.pipeline_ex.runtime:agent") == 3
    first = result.problems[0]
    assert (first.line, first.col, first.severity) == (8, 7, "warning")
    assert "step 'session_start': step type claude_session needs an agent with tools" in first.message


def test_the_cli_writes_the_pipeline_and_its_sub_workflows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(FIXTURES / "own")
    out = tmp_path / "parent.yaml"
    result = CliRunner().invoke(cli, ["import", "pipeline-ex", "nested_parent.yaml", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pipelines" / "research.headrace.yaml").is_file()
    assert CliRunner().invoke(cli, ["validate", str(out)]).exit_code == 0


# -- runs: the outputs pipeline_ex would have produced ------------------------------------------------


def test_loops_variables_and_conditions_run_offline(offline: Path) -> None:
    steps = _run(_convert_and_write(offline / "loops_and_variables.yaml", offline / "out.yaml"))
    assert steps["seed"] == {
        "success": True,
        "variables_set": ["items", "counter", "threshold"],
        "scope": "global",
        "variable_count": 3,
    }
    assert steps["each_item"] == {"success": True, "total_items": 3, "completed_items": 3}
    assert steps["count_up"] == {"success": True, "iterations": 1, "condition_met": False}
    assert steps["never_runs"]["skipped"] is True  # seed.variable_count > 5 does not hold
    assert steps["only_if_greeted"]["success"] is True
    assert (offline / "outputs" / "greeted.json").is_file()


def test_switch_checkpoint_and_presets_run_offline(offline: Path) -> None:
    steps = _run(_convert_and_write(offline / "switch_and_checkpoint.yaml", offline / "out.yaml"))
    assert steps["route"] == {"success": True, "value": "python", "case": "python"}
    assert "lint_python" in steps and "lint_js" not in steps and "generic" not in steps
    assert steps["saved"] == {"success": True, "checkpoint": "after_lint"}
    assert steps["summary"]["model"] == "claude-opus-4-5"  # the analysis preset's model
    assert steps["summary"]["claude_smart_metadata"]["preset_applied"] == "analysis"


def test_a_nested_pipeline_runs_with_inputs_and_returns_its_outputs(offline: Path) -> None:
    steps = _run(_convert_and_write(offline / "nested_parent.yaml", offline / "out.yaml"))
    assert set(steps["research"]) == {"result"}
    assert steps["research"]["result"]["summary"].startswith("Offline answer")


def test_output_schema_fields_are_readable_and_transforms_apply(offline: Path) -> None:
    steps = _run(_convert_and_write(offline / "structured_and_transform.yaml", offline / "out.yaml"))
    assert len(steps["scores"]["items"]) >= 3
    ranked = [i["score"] for i in steps["top"]["ranked"]]
    assert ranked == sorted(ranked, reverse=True)
    assert steps["total"] == {"total": len(steps["scores"]["items"]), "success": True}
    assert set(steps["parallel_views"]["individual_results"]) == {"pro", "con"}


def test_pipeline_ex_examples_run_offline(offline: Path) -> None:
    for name in ("simple_test", "claude_batch_example", "claude_robust_example", "claude_smart_example"):
        steps = _run(_convert_and_write(FIXTURES / "examples" / f"{name}.yaml", offline / f"{name}.yaml"))
        assert all(r.get("success") is not False for r in steps.values()), name
    assert steps  # the last one ran


# -- pipeline_ex's expression languages -------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("a.score > 7", True),
        ("a.score >= 9", False),
        ("a.name == 'x'", True),
        ("a.tags contains 'red'", True),
        ("a.name matches '^x$'", True),
        ("a.score between 1 and 8", True),
        ("a.tags.length == 2", True),
        ("length(a.tags) > 5", False),
        ("missing.field", False),
        ("a.score > 'text'", False),  # pipeline_ex compares numbers with numbers only
        ({"and": ["a.score > 1", {"not": "a.empty"}]}, True),
        ({"or": ["a.score > 100", "a.name"]}, True),
        (["a.score > 1", "a.score < 2"], False),
    ],
)
def test_conditions_follow_pipeline_ex(condition: Any, expected: bool) -> None:
    results = {"a": {"score": 8, "name": "x", "tags": ["red", "blue"], "empty": ""}}
    assert evaluate_condition(condition, results) is expected


def test_templates_and_prompt_parts() -> None:
    scope = Scope(
        {"s": {"text": "hi", "data": {"n": [1, 2]}}},
        {"who": "Ada"},
        {"topic": "t"},
        {"iterator": "file", "item": {"path": "a.py"}, "index": 0},
    )
    assert interpolate("{{steps.s.data.n}}", scope) == [1, 2]  # a whole template keeps its type
    assert interpolate("Hi {{who}} on {{inputs.topic}}, {{file.path}}", scope) == "Hi Ada on t, a.py"
    assert interpolate("{{nope}}", scope) == "{{nope}}"  # unresolved stays as written
    parts = [
        {"type": "static", "content": "A"},
        {"type": "previous_response", "step": "s", "extract": "text"},
        {"type": "previous_response", "step": "s"},
    ]
    assert (
        build_prompt(parts, scope, ".")
        == 'A\nhi\n{\n  "text": "hi",\n  "data": {\n    "n": [\n      1,\n      2\n    ]\n  }\n}'
    )
    with pytest.raises(KeyError, match="field 'nope' not found in the result of step 's'"):
        build_prompt([{"type": "previous_response", "step": "s", "extract": "nope"}], scope, ".")


def test_data_transform_operations() -> None:
    rows = [{"k": "a", "v": 3}, {"k": "b", "v": 9}, {"k": "a", "v": 5}]
    assert (
        apply_operations(rows, [{"operation": "filter", "field": "v", "condition": "value > 4"}], {})
        == rows[1:]
    )
    assert (
        apply_operations(rows, [{"operation": "aggregate", "field": "v", "function": "average"}], {})
        == 17 / 3
    )
    assert list(apply_operations(rows, [{"operation": "group_by", "field": "k"}], {})) == ["a", "b"]
    mapped = apply_operations(rows, [{"operation": "map", "field": "k", "expression": "uppercase"}], {})
    assert [r["k"] for r in mapped] == ["A", "B", "A"]


def test_sub_workflows_that_include_each_other_are_an_error_naming_the_chain(tmp_path: Path) -> None:
    step = "  steps:\n    - name: sub\n      type: pipeline\n      pipeline_file: {}\n"
    (tmp_path / "a.yaml").write_text("workflow:\n  name: a\n" + step.format("b.yaml"))
    (tmp_path / "b.yaml").write_text("workflow:\n  name: b\n" + step.format("a.yaml"))
    result = import_pipeline_ex(str(tmp_path / "a.yaml"), base_dir=str(tmp_path))
    assert not result.ok
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    cycle = [p for p in result.problems if "include each other" in p.message]
    assert [(p.path, p.line, p.col, p.message) for p in cycle] == [
        (str(b), 6, 7, f"sub-workflows include each other: {a} -> {b} -> {a}")
    ]
