"""Composition of pipeline files: ``include:`` fragments, ``extends:`` a base, errors across files."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli.main import cli
from engine.errors import ConfigError
from engine.spec.loader import load_pipeline

FN = "configs.examples.review_loop:publish"
BASE = f"""version: 1
name: base
params: {{target: 3}}
state:
  fields:
    published: {{type: boolean, default: false}}
    notes: {{type: array, default: [], reducer: append}}
nodes:
  write:
    op: call
    fn: {FN}
  old:
    op: call
    fn: {FN}
edges:
  - {{from: START, to: write}}
"""


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")


def _errors(path: Path) -> list[str]:
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    return result.output.strip().splitlines()


def test_extends_overrides_fields_removes_with_null_and_appends_edges(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "base.yaml": BASE,
            "child.yaml": "extends: base.yaml\nname: child\nparams: {target: 5}\n"
            "nodes:\n  old: null\n  write: {kwargs: {}, description: overridden}\n"
            "edges:\n  - {from: write, to: END}\n",
        },
    )
    spec = load_pipeline(str(tmp_path / "child.yaml")).spec
    assert spec.name == "child" and spec.params == {"target": 5}
    assert list(spec.nodes) == ["write"]
    assert spec.nodes["write"].description == "overridden"
    assert spec.nodes["write"].model_dump()["fn"] == FN  # the base's field is kept
    assert [(e.from_, e.to) for e in spec.edges] == [("START", "write"), ("write", "END")]


def test_an_override_is_checked_against_the_schema_at_its_own_line(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "base.yaml": BASE,
            "child.yaml": "extends: base.yaml\nnodes:\n  write:\n    retry: {max_attempts: 0}\n",
        },
    )
    errors = _errors(tmp_path / "child.yaml")
    assert errors == [
        f"{tmp_path / 'child.yaml'}:4:27: error: Input should be greater than or equal to 1 (got 0) "
        "[at nodes.write.retry.max_attempts]"
    ]


def test_include_brings_nodes_and_settings_with_their_file_and_line(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "base.yaml": BASE,
            "parts/nodes.yaml": f"# a fragment\nnodes:\n  publish:\n    op: call\n    fn: {FN}\n"
            "edges:\n  - {from: write, to: publish}\n  - {from: publish, to: END}\n",
            "parts/settings.yaml": "defaults: {retry: {max_attempts: 2}}\nmax_steps: 9\n",
            "main.yaml": "extends: base.yaml\ninclude: [parts/nodes.yaml, parts/settings.yaml]\nname: main\n",
        },
    )
    loaded = load_pipeline(str(tmp_path / "main.yaml"))
    assert set(loaded.spec.nodes) == {"write", "old", "publish"}
    assert loaded.spec.max_steps == 9 and loaded.spec.defaults.retry is not None
    span = loaded.document.source_map.locate(("nodes", "publish"), prefer="key")
    assert (loaded.document.file_of(span), span.line, span.col) == (str(tmp_path / "parts/nodes.yaml"), 3, 3)
    base_span = loaded.document.source_map.locate(("nodes", "write"), prefer="key")
    assert (loaded.document.file_of(base_span), base_span.line) == (str(tmp_path / "base.yaml"), 9)


def test_an_error_in_an_included_file_is_located_in_that_file(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "base.yaml": BASE,
            "bad.yaml": f"nodes:\n  extra:\n    op: call\n    fn: {FN}\n    kwarg: {{}}\n",
            "main.yaml": "extends: base.yaml\ninclude: [bad.yaml]\n",
        },
    )
    errors = _errors(tmp_path / "main.yaml")
    assert len(errors) == 1
    assert errors[0].startswith(
        f"{tmp_path / 'bad.yaml'}:5:5: error: unknown key 'kwarg' [at nodes.extra.kwarg]"
    )


def test_an_include_cycle_is_an_error_naming_the_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(
        tmp_path,
        {
            "a.yaml": "include: [b.yaml]\nversion: 1\nname: a\n",
            "b.yaml": "include:\n  - c.yaml\n",
            "c.yaml": "include:\n  - a.yaml\n",
        },
    )
    with pytest.raises(ConfigError) as info:
        load_pipeline("a.yaml")
    (diag,) = info.value.diagnostics
    assert (diag.path, diag.line, diag.col) == ("c.yaml", 2, 5)
    assert diag.message == "include cycle: a.yaml -> b.yaml -> c.yaml -> a.yaml"


def test_a_missing_include_is_an_error_at_the_include(tmp_path: Path) -> None:
    _write(tmp_path, {"main.yaml": "version: 1\nname: m\ninclude:\n  - nowhere.yaml\nnodes: {}\n"})
    (line,) = _errors(tmp_path / "main.yaml")
    assert line.startswith(
        f"{tmp_path / 'main.yaml'}:4:5: error: include[0] names 'nowhere.yaml', which is not a file"
    )


def test_paths_of_included_nodes_stay_relative_to_their_file(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "io/source.yaml": "nodes:\n  input: {op: read_csv, path: data/in.csv}\n",
            "main.yaml": "version: 1\nname: m\ninclude: [io/source.yaml]\n"
            "nodes:\n  out: {op: write_parquet, input: input, path: out/}\n",
        },
    )
    spec = load_pipeline(str(tmp_path / "main.yaml")).spec
    assert spec.nodes["input"].model_dump()["path"] == "io/data/in.csv"


def test_run_records_name_the_file_an_included_node_was_written_in(tmp_path: Path) -> None:
    """``runs show`` and the report locate a node of an included file in that file, not the root's."""
    from engine.check import check_file
    from engine.cli.run_records import render
    from engine.records import RunView, open_records
    from engine.records.report import _location
    from engine.runtime.recording import RunRecording

    _write(
        tmp_path,
        {
            "base.yaml": BASE,
            "parts/nodes.yaml": f"# a fragment\nnodes:\n  publish:\n    op: call\n    fn: {FN}\n"
            "edges:\n  - {from: write, to: publish}\n  - {from: publish, to: END}\n",
            "main.yaml": "extends: base.yaml\ninclude: [parts/nodes.yaml]\nname: main\n",
        },
    )
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    recording = RunRecording(url, "r1")
    recording.started(check_file(str(tmp_path / "main.yaml")), kind="graph", tenant="t", resume_of=None)
    recording.close()
    view = RunView.of(open_records(url).events("r1"))
    assert view.nodes["publish"].file == str(tmp_path / "parts/nodes.yaml")
    assert _location(view, "publish", None) == f"{tmp_path / 'parts/nodes.yaml'}:3:3"
    assert _location(view, "write", None) == f"{tmp_path / 'base.yaml'}:9:3"
    assert "nodes.yaml:3" in render(view) and "base.yaml:9" in render(view)
