"""Compilation without Ray: every problem a run would meet before its first row, located in the file,
and the same refusals from `headrace validate`."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from engine.check import check_file
from engine.compile import Compiled, capacity_problems, compile_pipeline
from engine.errors import ConfigError
from engine.policy import Policy
from tests.unit.helpers import invoke, write

_LLM = """\
version: 1
name: t
{defaults}nodes:
  input: {{op: read_csv, path: in.csv}}
  c:
    op: llm_classify
    input: input
{provider}    prompt: "Ticket: {{{{ body }}}}"
    labels: [a, b]
    output: label
  out: {{op: write_parquet, input: c, path: out/}}
"""


def _llm(provider: str = "", defaults: str = "") -> str:
    return _LLM.format(
        provider=f"    provider: {provider}\n" if provider else "",
        defaults=f"defaults: {{provider: {defaults}}}\n" if defaults else "",
    )


def _compile(tmp_path: Path, text: str, **options: object) -> Compiled:
    (tmp_path / "in.csv").write_text("id,body\n1,hello\n")
    return compile_pipeline(check_file(str(write(tmp_path / "p.yaml", text))), **options)  # type: ignore[arg-type]


def _errors(compiled: Compiled) -> list[tuple[int, int, str]]:
    return [(d.line, d.col, d.message) for d in compiled.errors]


def test_a_valid_pipeline_compiles_to_stages_physical_options_and_pools(tmp_path: Path) -> None:
    compiled = _compile(tmp_path, _llm("offline"))
    assert compiled.errors == [] and compiled.kind == "dataflow"
    assert [n.id for n in compiled.stages[0].nodes] == ["input", "c", "out"]  # one fused stage
    stage = compiled.physical[0]
    assert stage.inputs == (str(tmp_path / "in.csv"),) and stage.job.output == str(tmp_path / "out")
    assert stage.ray_options == {"num_cpus": 1.0}
    (pool,) = compiled.pools
    assert (pool.node, pool.targets[0].provider, pool.targets[0].model) == ("c", "offline", "offline")
    assert compiled.prices is not None and compiled.prices.price("offline", "offline") is not None
    with pytest.raises(dataclasses.FrozenInstanceError):  # the runtime cannot re-plan it
        compiled.pools = ()  # type: ignore[misc]


def test_an_unknown_provider_is_unknown_not_missing_a_default_model(tmp_path: Path) -> None:
    (error,) = _errors(_compile(tmp_path, _llm("no_such_provider")))
    assert error[:2] == (8, 15)  # the node's `provider` value
    assert "unknown provider 'no_such_provider'" in error[2] and "offline" in error[2]
    (error,) = _errors(_compile(tmp_path, _llm(defaults="no_such_provider")))
    assert error[0] == 3 and "unknown provider 'no_such_provider'" in error[2]


def test_an_llm_node_without_a_provider_is_refused(tmp_path: Path) -> None:
    (error,) = _errors(_compile(tmp_path, _llm()))
    assert error[0] == 6 and "has no provider" in error[2]


def test_a_join_an_unknown_arrow_type_and_an_output_inside_its_input_are_all_reported(tmp_path: Path) -> None:
    text = """\
version: 1
name: t
nodes:
  a: {op: read_csv, path: in.csv, column_types: {id: integer64}}
  b: {op: read_csv, path: data/x.csv}
  j: {op: sql, input: [a, b], query: "SELECT * FROM batch"}
  out: {op: write_parquet, input: j, path: out/}
  copy: {op: write_parquet, input: b, path: data/}
  cast: {op: cast, input: a, columns: {id: int65}}
  out2: {op: write_parquet, input: cast, path: out2/}
"""
    errors = _errors(_compile(tmp_path, text))
    found = {(line, message.split(" ")[0]) for line, _, message in errors}
    assert (6, "node") in found  # j reads several inputs
    assert any(line == 4 and "'integer64' is not an Arrow type name" in m for line, _, m in errors)
    assert any(line == 9 and "'int65' is not an Arrow type name" in m for line, _, m in errors)
    assert any(line == 8 and "would write into the input of 'b'" in m for line, _, m in errors)


def test_a_path_outside_the_allowed_roots_is_refused_by_policy(tmp_path: Path) -> None:
    policy = Policy.from_env({"HEADRACE_ALLOWED_ROOTS": str(tmp_path / "elsewhere")})
    errors = _errors(_compile(tmp_path, _llm("offline"), policy=policy))
    assert {line for line, _, _ in errors} >= {4, 12}  # the source's and the sink's paths


def test_a_missing_api_key_is_an_error_for_a_run_and_a_warning_for_validate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    (error,) = _errors(_compile(tmp_path, _llm("anthropic")))
    assert "no API key" in error[2]
    warned = _compile(tmp_path, _llm("anthropic"), credentials="warning")
    assert warned.errors == [] and any("no API key" in d.message for d in warned.problems)


def test_capacity_is_checked_when_given(tmp_path: Path) -> None:
    text = _llm("offline").replace("path: in.csv}", "path: in.csv, resources: {num_cpus: 4}}")
    compiled = _compile(tmp_path, text)
    assert compiled.errors == []
    (problem,) = capacity_problems(compiled, [{"CPU": 2.0}])
    assert problem.line == 4 and "needs, per task, 4 CPU; no node has 4 CPU" in problem.message
    assert _errors(_compile(tmp_path, text, capacity=[{"CPU": 2.0}]))


def test_raise_errors_raises_every_error_located(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _compile(tmp_path, _llm("no_such_provider")).raise_errors()
    assert [(d.line, d.col) for d in caught.value.diagnostics] == [(8, 15)]


def test_a_state_graph_compiles_as_a_graph(tmp_path: Path) -> None:
    from tests.unit.helpers import CONFIGS

    graph = next(p for p in CONFIGS.rglob("*.yaml") if "edges:" in p.read_text())
    compiled = compile_pipeline(check_file(str(graph)))
    assert compiled.kind == "graph" and compiled.stages == () and compiled.errors == []


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (_llm("no_such_provider"), "unknown provider 'no_such_provider'"),
        (_llm(), "has no provider"),
        (
            "version: 1\nname: t\nnodes:\n  a: {op: read_csv, path: in.csv}\n"
            "  b: {op: read_csv, path: in.csv}\n  j: {op: sql, input: [a, b], query: 'SELECT 1'}\n"
            "  o: {op: write_parquet, input: j, path: o/}\n",
            "reads several inputs",
        ),
        (
            "version: 1\nname: t\nnodes:\n  a: {op: read_csv, path: in.csv, column_types: {id: integer64}}\n"
            "  o: {op: write_parquet, input: a, path: o/}\n",
            "'integer64' is not an Arrow type name",
        ),
        (
            "version: 1\nname: t\nnodes:\n  a: {op: read_csv, path: d/in.csv}\n"
            "  o: {op: write_parquet, input: a, path: d}\n",
            "would write into the input",
        ),
    ],
)
def test_validate_refuses_what_run_refuses_without_ray(
    tmp_path: Path, text: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    had_ray = "ray" in sys.modules
    if had_ray:  # an earlier test of this session imported (and started) Ray: validate must not start it
        monkeypatch.setattr(sys.modules["ray"], "init", _no_ray_init)
    path = write(tmp_path / "p.yaml", text)
    result = invoke("validate", str(path))
    assert result.exit_code == 1, result.output
    assert f"{path}:" in result.output and " error: " in result.output and says in result.output
    assert had_ray or "ray" not in sys.modules  # validate never even imports Ray


def _no_ray_init(*args: object, **kwargs: object) -> None:
    raise AssertionError("validate started Ray")


def test_validate_warns_about_a_missing_key_and_strict_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    path = write(tmp_path / "p.yaml", _llm("anthropic"))
    result = invoke("validate", str(path))
    assert result.exit_code == 0 and "warning: anthropic: no API key" in result.output
    assert invoke("validate", "--strict", str(path)).exit_code == 1
