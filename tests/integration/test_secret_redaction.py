"""A secret interpolated into a plain field is shown nowhere a run writes (issue 18.6).

The pipeline puts the values of secret variables (:data:`SECRETS`: a provider key, and variables named
*PASSWORD*, *TOKEN*, *SECRET*, *KEY*) into its name, a label and an input path that does not exist, so the
run fails with the path in its error. Everything the run leaves behind is then searched for each value:
the summary (text and ``--json``), ``runs list`` (text and JSON), ``runs show``, the audit log, the runs
store's bytes and the logs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import run_headrace

pytestmark = pytest.mark.integration

SECRETS = {
    "ANTHROPIC_API_KEY": "plainkey-0d9c8b7a6f5e",  # not shaped like sk-ant-..., so only the name finds it
    "DB_PASSWORD": "correct-horse-battery",
    "SERVICE_TOKEN": "tok9f8e7d6c5b4a",
    "my_client_secret": "s3cr3t-v4lu3-x",
    "SIGNING_KEY_B64": "a2V5LWZvci1zaWduaW5n",
}


def test_secret_values_are_redacted_wherever_they_end_up(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("n\n1\n", encoding="utf-8")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        """version: 1
name: "run-${DB_PASSWORD}-${ANTHROPIC_API_KEY}"
labels: {team: "${SERVICE_TOKEN}", owner: "${my_client_secret}"}
nodes:
  input: {op: read_csv, path: "missing-${SIGNING_KEY_B64}.csv"}
  output: {op: write_parquet, input: input, path: out/}
""",
        encoding="utf-8",
    )
    home = tmp_path / "home"
    env = {
        **SECRETS,
        "HEADRACE_HOME": str(home),
        "HEADRACE_LOG_LEVEL": "info",
        "HEADRACE_LOG_FORMAT": "json",
        "HEADRACE_OBJECT_STORE_BYTES": str(256 * 1024 * 1024),
    }
    runs = [
        run_headrace("run", pipeline, "--json", env=env, cwd=tmp_path),
        run_headrace("run", pipeline, env=env, cwd=tmp_path),
    ]
    summary = json.loads(runs[0].stdout)
    assert summary["status"] == "failed" and "missing-[redacted].csv" in json.dumps(summary), summary
    listed = run_headrace("runs", "list", env=env, cwd=tmp_path)
    listed_json = run_headrace("runs", "list", "--json", env=env, cwd=tmp_path)
    assert "run-[redacted]-[redacted]" in listed.stdout, listed.stdout + listed.stderr
    shown = run_headrace("runs", "show", summary["run_id"], env=env, cwd=tmp_path)
    written = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "audit.jsonl" for p in written) and any(p.suffix == ".db" for p in written)
    texts = {
        "run --json": runs[0].stdout,
        "run summary": runs[1].stdout,
        "logs": runs[0].stderr + runs[1].stderr,
        "runs list": listed.stdout,
        "runs list --json": listed_json.stdout,
        "runs show": shown.stdout,
        **{str(p): p.read_bytes().decode("utf-8", "replace") for p in written},
    }
    assert '"level"' in texts["logs"]  # the logs were written, and searched
    for where, text in texts.items():
        for name, value in SECRETS.items():
            assert value not in text, f"{name}'s value is in {where}"
