"""The closed policy: nothing but what the operator lists; `headrace validate` reports what a policy
refuses at its line, as `run` does (issue 18.2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.policy import Policy, PolicyViolation
from engine.policy_config import load_policy
from tests.unit.helpers import invoke

# What any pipeline file could do with no policy set: the nodes between a CSV source (line 4) and a
# Parquet sink, the word the refusal names, and the line it is reported at.
HOSTILE_NODES = [
    ("steal", 'ok: {op: read_text, path: "/etc/passwd"}', "/etc/passwd", 4),
    ("fetch", 'ok: {op: read_csv, path: "http://192.0.2.1/x.csv"}', "http", 4),
    (
        "shell",
        'src: {op: read_csv, path: in.csv}\n  ok: {op: flat_map, input: src, fn: "subprocess:run"}',
        "subprocess",
        5,
    ),
]


def _pipeline(tmp_path: Path, nodes: str) -> Path:
    (tmp_path / "in.csv").write_text("n\n1\n", encoding="utf-8")
    path = tmp_path / "pipe.yaml"
    path.write_text(
        f"""version: 1
name: hostile
nodes:
  {nodes}
  out: {{op: write_parquet, input: ok, path: out/}}
""",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(("name", "nodes", "word", "line"), HOSTILE_NODES)
def test_validate_refuses_what_the_closed_policy_forbids_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, nodes: str, word: str, line: int
) -> None:
    path = _pipeline(tmp_path, nodes)
    monkeypatch.delenv("HEADRACE_POLICY", raising=False)
    for var in ("HEADRACE_ALLOWED_ROOTS", "HEADRACE_ALLOWED_SCHEMES", "HEADRACE_ALLOWED_MODULES"):
        monkeypatch.delenv(var, raising=False)
    assert invoke("validate", str(path)).exit_code == 0  # the open default: one person's laptop
    monkeypatch.setenv("HEADRACE_POLICY", "closed")
    monkeypatch.setenv("HEADRACE_ALLOWED_ROOTS", str(tmp_path))
    result = invoke("validate", str(path))
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ": error: " in ln]
    assert len(lines) == 1 and lines[0].startswith(f"{path}:{line}:"), result.output
    assert word in lines[0] and "policy" in lines[0]


def test_validate_reports_a_path_outside_the_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _pipeline(tmp_path, 'ok: {op: read_csv, path: "/etc/hosts"}')
    monkeypatch.setenv("HEADRACE_ALLOWED_ROOTS", str(tmp_path))
    result = invoke("validate", str(path))
    assert result.exit_code == 1
    assert f"{path}:4:" in result.output and "outside the allowed roots" in result.output


def test_validate_reports_a_state_graph_call_the_policy_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        """version: 1
name: g
state: {fields: {n: {type: integer, default: 0}}}
nodes:
  step: {op: call, fn: "subprocess:run"}
edges: [{from: START, to: step}, {from: step, to: END}]
""",
        encoding="utf-8",
    )
    monkeypatch.setenv("HEADRACE_POLICY", "closed")
    result = invoke("validate", str(path))
    assert result.exit_code == 1 and f"{path}:5:" in result.output and "subprocess" in result.output


def test_the_closed_policy_allows_exactly_what_is_listed(tmp_path: Path) -> None:
    closed = Policy.closed(roots=[tmp_path, "s3://team/"], modules=["mycompany"])
    assert closed.path_problem(str(tmp_path / "a.csv")) is None
    assert closed.path_problem("s3://team/x.parquet") is None
    assert closed.path_problem("s3://other/x.parquet") is not None
    assert closed.path_problem("https://team/x") is not None  # no root made https allowed
    assert closed.path_problem("/etc/passwd") is not None
    assert closed.module_problem("mycompany.etl:fn") is None
    assert closed.module_problem("subprocess:run") is not None
    nothing = Policy.closed()
    assert nothing.path_problem(str(tmp_path)) is not None and nothing.module_problem("tests:x") is not None
    assert Policy.from_env(closed.environ()) == closed  # how a service hands its policy to workers
    env = {"HEADRACE_POLICY": "closed", "HEADRACE_ALLOWED_ROOTS": str(tmp_path)}
    assert Policy.from_env(env) == Policy.closed(roots=[tmp_path])
    assert Policy.from_env({}) == Policy.open()


def test_a_policy_mapping_is_checked_with_its_problems_at_their_lines(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(
        """listen: 127.0.0.1:8000
policy:
  name: shut
  roots: [/data]
  modulez: [mycompany]
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        load_policy(str(config))
    where = sorted((d.line, d.col) for d in err.value.diagnostics)
    assert where == [(3, 9), (5, 3)], err.value
    assert "modulez" in str(err.value) and "closed" in str(err.value)
    config.write_text("policy:\n  roots: [/data]\n  modules: [mycompany]\n", encoding="utf-8")
    assert load_policy(str(config)) == Policy.closed(roots=["/data"], modules=["mycompany"])
    assert Policy.from_mapping({"name": "open"}) == Policy.open()


def test_an_unknown_policy_name_in_the_environment_is_an_error() -> None:
    with pytest.raises(PolicyViolation, match=r"open.*closed"):
        Policy.from_env({"HEADRACE_POLICY": "lax"})
