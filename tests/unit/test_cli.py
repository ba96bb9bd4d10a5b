"""The `headrace` command line: help, validate, new, graph, migrate, and the loader's variables."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import click
import pytest

from engine.cli import cli
from engine.errors import ConfigError
from engine.spec.document import read_document
from engine.spec.loader import load_pipeline
from engine.spec.migrate_file import migrate_file
from engine.spec.migrations import Migration, VersionProblem, migrate
from tests.unit.helpers import (
    CONFIGS,
    TEMPLATES,
    VALID_PIPELINE,
    assert_no_traceback,
    diagnostic_lines,
    invoke,
    write,
)

QUICKSTART = CONFIGS / "examples" / "quickstart.yaml"
STATE_GRAPH = CONFIGS / "templates" / "state-graph.yaml"

# --- help -------------------------------------------------------------------------------------------


def test_top_level_help_lists_every_subcommand() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("validate", "schema", "convert", "graph", "migrate", "new", "run"):
        assert name in cli.list_commands(click.Context(cli))
        assert f"  {name} " in result.stdout


@pytest.mark.parametrize("name", cli.list_commands(click.Context(cli)))
def test_every_subcommand_has_help(name: str) -> None:
    for flag in ("--help", "-h"):
        result = invoke(name, flag)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"Usage: cli {name}") or result.stdout.startswith(
            f"Usage: headrace {name}"
        )
        assert len(result.stdout.splitlines()) > 3


def test_a_usage_mistake_exits_2_without_traceback() -> None:
    result = invoke("validate")
    assert result.exit_code == 2
    assert "Missing argument" in result.stderr
    assert_no_traceback(result.stdout, result.stderr)


# --- validate ---------------------------------------------------------------------------------------


def test_validate_several_files_with_one_bad(tmp_path: Path, valid_file: Path) -> None:
    bad = write(tmp_path / "bad.yaml", VALID_PIPELINE.replace("op: read_csv", "op: read_cvs"))
    result = invoke("validate", str(QUICKSTART), str(valid_file), str(bad), str(STATE_GRAPH))
    assert result.exit_code == 1
    (line,) = diagnostic_lines(result.stdout)
    assert line["path"] == str(bad)
    assert (line["line"], line["col"]) == ("5", "9")
    assert "unknown op 'read_cvs'" in line["message"]


def test_validate_of_good_files_prints_nothing_and_exits_0(valid_file: Path) -> None:
    result = invoke("validate", str(QUICKSTART), str(valid_file))
    assert result.exit_code == 0
    assert result.output == ""


def test_validate_format_json(tmp_path: Path, valid_file: Path) -> None:
    bad = write(tmp_path / "bad.yaml", VALID_PIPELINE + "    colour: blue\n")
    result = invoke("validate", "--format", "json", str(valid_file), str(bad))
    assert result.exit_code == 1
    good_report, bad_report = (json.loads(line) for line in result.stdout.splitlines())
    assert good_report == {"path": str(valid_file), "valid": True, "diagnostics": []}
    assert bad_report["path"] == str(bad)
    assert bad_report["valid"] is False
    (diag,) = bad_report["diagnostics"]
    assert (diag["line"], diag["col"], diag["severity"]) == (11, 5, "error")
    assert diag["message"] == "unknown key 'colour'"
    assert diag["json_path"] == "nodes.output.colour"


def test_validate_reads_stdin_with_dash() -> None:
    result = invoke("validate", "-", input=VALID_PIPELINE)
    assert result.exit_code == 0, result.output


def test_validate_set_override_makes_a_file_valid(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", VALID_PIPELINE.replace("op: read_csv", "op: read_cvs"))
    assert invoke("validate", str(path)).exit_code == 1
    assert invoke("validate", str(path), "--set", "nodes.input.op=read_csv").exit_code == 0


# --- new --------------------------------------------------------------------------------------------


def test_new_list_shows_every_template() -> None:
    result = invoke("new", "--list")
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert set(TEMPLATES) <= listed
    for line in result.stdout.splitlines():
        assert len(line.split(maxsplit=1)) == 2, f"a template without a summary: {line!r}"


@pytest.mark.parametrize("template", TEMPLATES)
def test_new_writes_a_valid_pipeline_named_as_asked(tmp_path: Path, template: str) -> None:
    target = tmp_path / "my_flow.yaml"
    result = invoke("new", template, "my_flow", "-o", str(target))
    assert result.exit_code == 0, result.output
    assert read_document(str(target)).data["name"] == "my_flow"
    check = invoke("validate", str(target))
    assert check.exit_code == 0, check.output
    # comments of the template survive
    source = (CONFIGS / "templates" / f"{template}.yaml").read_text(encoding="utf-8")
    for line in source.splitlines():
        if "  # " in line:
            assert line[line.index("#") :] in target.read_text(encoding="utf-8")


def test_new_defaults_to_name_dot_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("new", "csv-transform", "orders")
    assert result.exit_code == 0, result.output
    assert read_document(str(tmp_path / "orders.yaml")).data["name"] == "orders"


def test_new_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    target = write(tmp_path / "mine.yaml", "# my own work\n")
    result = invoke("new", "csv-transform", "mine", "-o", str(target))
    assert result.exit_code == 2
    assert "--force" in result.stderr
    assert target.read_text(encoding="utf-8") == "# my own work\n"
    forced = invoke("new", "csv-transform", "mine", "-o", str(target), "--force")
    assert forced.exit_code == 0, forced.output
    assert read_document(str(target)).data["name"] == "mine"


def test_new_with_an_unknown_template_lists_the_real_ones(tmp_path: Path) -> None:
    result = invoke("new", "csv-transfrom", "x", "-o", str(tmp_path / "x.yaml"))
    assert result.exit_code == 1
    assert "no template 'csv-transfrom'" in result.stderr
    assert "csv-transform" in result.stderr
    assert not (tmp_path / "x.yaml").exists()


# --- graph ------------------------------------------------------------------------------------------


def test_graph_mermaid_of_a_state_graph() -> None:
    result = invoke("graph", str(STATE_GRAPH), "--format", "mermaid")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("flowchart")
    assert "write" in out and "review" in out
    assert "START((start)) -.-> write" in out
    assert "write -.-> review" in out
    assert 'review -. "score >= 8" .-> END((end))' in out
    assert 'review -. "otherwise" .-> write' in out


def test_graph_dot_of_a_state_graph() -> None:
    result = invoke("graph", str(STATE_GRAPH), "--format", "dot")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith('digraph "state-graph" {') and out.rstrip().endswith("}")
    for node in ("write", "review"):
        assert f'"{node}" [shape=' in out
    assert '"START" -> "write" [style=dashed];' in out
    assert '"write" -> "review" [style=dashed];' in out
    assert '"review" -> "END" [style=dashed, label="score >= 8"];' in out
    assert '"review" -> "write" [style=dashed, label="otherwise"];' in out


@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_graph_shows_every_node_and_data_edge(fmt: str) -> None:
    result = invoke("graph", str(QUICKSTART), "--format", fmt)
    assert result.exit_code == 0, result.output
    nodes = read_document(str(QUICKSTART)).data["nodes"]
    for name, spec in nodes.items():
        assert name in result.stdout
        assert spec["op"] in result.stdout
    arrows = {"mermaid": "{src} --> {dst}", "dot": '"{src}" -> "{dst}";'}[fmt]
    for name, spec in nodes.items():
        if "input" in spec:
            assert arrows.format(src=spec["input"], dst=name) in result.stdout


def test_graph_of_a_broken_file_is_located(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", VALID_PIPELINE.replace("input: input", "input: inptu"))
    result = invoke("graph", str(path))
    assert result.exit_code == 1
    errors = [m for m in diagnostic_lines(result.stderr) if m["severity"] == "error"]
    assert [(m["line"], m["col"]) for m in errors] == [("9", "12")]


# --- migrate ----------------------------------------------------------------------------------------


def test_migrate_a_current_file_says_so_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "quickstart.yaml"
    original = QUICKSTART.read_bytes()
    path.write_bytes(original)
    result = invoke("migrate", str(path))
    assert result.exit_code == 0, result.output
    assert "already at the current format" in result.stderr
    assert result.stdout == original.decode("utf-8")
    in_place = invoke("migrate", str(path), "--in-place")
    assert in_place.exit_code == 0, in_place.output
    assert path.read_bytes() == original


def test_migrate_refuses_a_future_version(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", VALID_PIPELINE.replace("version: 1", "version: 9"))
    result = invoke("migrate", str(path))
    assert result.exit_code == 1
    (line,) = diagnostic_lines(result.stderr)
    assert (line["line"], line["col"]) == ("1", "10")
    assert "format v9; this headrace reads up to v1" in line["message"]


def _rename_workflow(doc: Any) -> Any:
    doc["nodes"] = doc.pop("workflow")
    return doc


V0_TO_V1 = (Migration(0, "rename `workflow` to `nodes`", _rename_workflow),)

OLD_FILE = """\
# an old pipeline
version: 0   # the first format
name: legacy
workflow:
  # the source
  input: {op: read_csv, path: data.csv}
  output: {op: write_parquet, input: input, path: out}  # the sink
"""


def test_migrate_applies_a_chain_and_is_pure() -> None:
    data = {"version": 0, "name": "legacy", "workflow": {"a": {"op": "read_csv", "path": "x"}}}
    before = copy.deepcopy(data)
    out, taken = migrate(data, V0_TO_V1)
    assert taken == list(V0_TO_V1)
    assert out == {"version": 1, "name": "legacy", "nodes": {"a": {"op": "read_csv", "path": "x"}}}
    assert data == before, "migrate changed its input"
    out["nodes"]["a"]["path"] = "changed"
    assert data == before, "the result shares containers with the input"


def test_migrate_of_a_current_document_takes_no_step() -> None:
    data = {"version": 1, "name": "x", "nodes": {}}
    out, taken = migrate(data, V0_TO_V1)
    assert taken == []
    assert out == {"version": 1, "name": "x", "nodes": {}}


def test_migrate_runs_steps_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.spec.migrations as migrations

    monkeypatch.setattr(migrations, "FORMAT_VERSION", 3)
    seen: list[int] = []

    def step(n: int) -> Migration:
        def apply(doc: Any) -> Any:
            seen.append(n)
            doc.setdefault("trail", []).append(n)
            return doc

        return Migration(n, f"step {n}", apply)

    out, taken = migrate({"version": 1}, (step(2), step(1)))
    assert seen == [1, 2]
    assert [m.source for m in taken] == [1, 2]
    assert out == {"version": 3, "trail": [1, 2]}


def test_migrate_without_a_path_explains_which_formats_it_knows() -> None:
    with pytest.raises(VersionProblem) as info:
        migrate({"version": -1}, V0_TO_V1)
    assert "format v-1 is not one this headrace can read or migrate" in info.value.message
    assert "v0 to v1" in info.value.hint


def test_migrate_file_keeps_comments_and_order(tmp_path: Path) -> None:
    path = write(tmp_path / "old.yaml", OLD_FILE)
    text, taken = migrate_file(str(path), V0_TO_V1)
    assert [m.source for m in taken] == [0]
    assert path.read_text(encoding="utf-8") == OLD_FILE, "migrate_file must not write the file"
    for comment in ("# an old pipeline", "# the first format", "# the source", "# the sink"):
        assert comment in text
    data = read_document("new.yaml", text).data
    assert data["version"] == 1
    assert "workflow" not in data
    assert list(data["nodes"]) == ["input", "output"]
    assert list(data) == ["version", "name", "nodes"]
    loaded = load_pipeline("new.yaml", content=text, env={})
    assert set(loaded.spec.nodes) == {"input", "output"}


def test_migrate_file_on_json(tmp_path: Path) -> None:
    path = write(tmp_path / "old.json", json.dumps({"version": 0, "name": "legacy", "workflow": {"a": 1}}))
    text, taken = migrate_file(str(path), V0_TO_V1)
    assert len(taken) == 1
    assert json.loads(text) == {"version": 1, "name": "legacy", "nodes": {"a": 1}}


def test_migrate_file_of_a_current_file_returns_its_text(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", VALID_PIPELINE + "# trailing comment\n")
    text, taken = migrate_file(str(path), V0_TO_V1)
    assert taken == []
    assert text == VALID_PIPELINE + "# trailing comment\n"


# --- variables ----------------------------------------------------------------------------------------


def test_variables_defaults_and_literal_dollar_braces() -> None:
    text = VALID_PIPELINE.replace("path: data.csv", "path: ${DATA_DIR}/${FILE:-data.csv}").replace(
        "path: out", "path: $${NOT_A_VAR}/out-${SUFFIX:-}"
    )
    loaded = load_pipeline("p.yaml", content=text, env={"DATA_DIR": "/srv/in"})
    assert loaded.spec.nodes["input"].path == "/srv/in/data.csv"
    assert loaded.spec.nodes["output"].path == "${NOT_A_VAR}/out-"
    again = load_pipeline("p.yaml", content=text, env={"DATA_DIR": "d", "FILE": "f.csv", "SUFFIX": "x"})
    assert again.spec.nodes["input"].path == "d/f.csv"
    assert again.spec.nodes["output"].path == "${NOT_A_VAR}/out-x"


def test_every_missing_variable_is_reported_where_it_is_used() -> None:
    text = VALID_PIPELINE.replace("path: data.csv", "path: ${A}/${B:-ok}").replace("path: out", "path: ${C}")
    with pytest.raises(ConfigError) as info:
        load_pipeline("p.yaml", content=text, env={})
    found = [(d.line, d.col, d.message) for d in info.value.diagnostics]
    assert found == [
        (6, 11, "environment variable A is not set"),
        (10, 11, "environment variable C is not set"),
    ]


def test_a_set_value_can_use_a_variable() -> None:
    loaded = load_pipeline(
        "p.yaml",
        content=VALID_PIPELINE,
        overrides=["nodes.output.path=${OUT:-fallback}/x"],
        env={"OUT": "/o"},
    )
    assert loaded.spec.nodes["output"].path == "/o/x"
