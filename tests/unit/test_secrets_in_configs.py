"""Provider secrets come from the environment: a key written into a pipeline (or --set) is refused at its
line, and ``${VAR}`` is the way to name one."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.spec.loader import load_pipeline

BASE = """version: 1
name: secrets
providers:
  anthropic:
    config: {{base_url: "http://127.0.0.1:9", {entry}}}
nodes:
  input: {{op: read_csv, path: in.csv}}
  output: {{op: write_parquet, input: input, path: out}}
"""


def write(tmp_path: Path, entry: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(BASE.format(entry=entry), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "entry",
    ["api_key: sk-ant-123", 'api_key: "${KEY:-sk-ant-123}"', "token: abc", "client_secret: s3cr3t"],
)
def test_a_secret_written_into_the_pipeline_is_refused_at_its_line(tmp_path: Path, entry: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_pipeline(str(write(tmp_path, entry)), env={"KEY": "x"})
    (diag,) = err.value.diagnostics
    assert diag.line == 5 and diag.code == "literal_secret"
    assert "environment" in diag.hint and "sk-ant-123" not in diag.message


def test_a_secret_from_the_environment_is_read(tmp_path: Path) -> None:
    loaded = load_pipeline(str(write(tmp_path, 'api_key: "${TEAM_KEY}"')), env={"TEAM_KEY": "sk-from-env"})
    assert loaded.spec.provider_config("anthropic")["api_key"] == "sk-from-env"


def test_a_secret_given_with_set_is_refused_too(tmp_path: Path) -> None:
    path = write(tmp_path, 'api_key: "${TEAM_KEY}"')
    with pytest.raises(ConfigError) as err:
        load_pipeline(
            str(path), overrides=["providers.anthropic.config.api_key=sk-typed"], env={"TEAM_KEY": "x"}
        )
    (diag,) = err.value.diagnostics
    assert (
        diag.code == "literal_secret" and "providers.anthropic.config.api_key" in diag.origin + diag.message
    )
