"""Errors that say why: a failing user function, a failing provider and a malformed input row each
stop the run with a message naming the node, its line in the pipeline file and the place in the input,
with a next step; the run's record says the same, and ``headrace runs show`` reports it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.check import check_file
from engine.records import RunView, open_records
from engine.runtime import RunSummary, run_checked
from tests.cli import run_headrace
from tests.loopback import ErrorReply, LLMServer

pytestmark = pytest.mark.usefixtures("ray_cluster")
KEY = "sk-ant-test-SECRET-1a2b3c"


@pytest.fixture(autouse=True)
def _store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's runs go to its own runs store; the key is read as ${HEADRACE_TEST_KEY}."""
    monkeypatch.setenv("HEADRACE_CHECKPOINTS", f"sqlite:///{tmp_path}/runs.db")
    monkeypatch.setenv("HEADRACE_TEST_KEY", KEY)
    return tmp_path / "runs.db"


def write_csv(path: Path, rows: int, bad_at: int | None = None) -> None:
    lines = ["id,text"]
    for i in range(rows):
        lines.append(f"{i},row {i},one field too many" if i == bad_at else f"{i},row {i}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def line_of(path: Path, needle: str) -> int:
    """The 1-based line of the pipeline file where ``needle`` (a node's key) is."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith(needle):
            return number
    raise AssertionError(f"{needle} not in {path}")


def run(path: Path) -> RunSummary:
    summary = run_checked(check_file(str(path)), progress=False)
    assert isinstance(summary, RunSummary)
    return summary


def record_of(summary: RunSummary) -> RunView:
    import os

    store = open_records(os.environ["HEADRACE_CHECKPOINTS"])
    return RunView.of(store.events(summary.run_id))


def check_said_why(summary: RunSummary, path: Path, node: str, op: str, where: str) -> dict[str, Any]:
    """The summary's message and the record's error event name node, file:line:col, input and a next step."""
    line = line_of(path, f"{node}:")
    assert summary.status == "failed" and summary.exit_code == 3
    error = summary.error or ""
    assert error.startswith(f"{path}:{line}:3: node '{node}' ({op}): "), error
    assert re.search(where, error), error
    assert f"--resume {summary.run_id}" in error and "on_error" in error, error
    view = record_of(summary)
    assert view.status == "failed" and len(view.errors) == 1
    event = view.errors[0]
    assert event["node"] == node and event["location"] == {"file": str(path), "line": line, "col": 3}
    assert event["hint"] and event["code"] == "data_invalid"
    return event


def test_a_failing_user_function_names_node_line_split_and_byte_range(tmp_path: Path) -> None:
    write_csv(tmp_path / "in.csv", 20)
    path = tmp_path / "udf.yaml"
    path.write_text(
        f"""version: 1
name: failing-udf
nodes:
  input: {{op: read_csv, path: {tmp_path}/in.csv}}
  explode:
    op: map_batches
    input: input
    fn: tests.integration.udfs:explode_on_seven
  output: {{op: write_parquet, input: explode, path: {tmp_path}/out}}
""",
        encoding="utf-8",
    )
    summary = run(path)
    event = check_said_why(summary, path, "explode", "map_batches", r"in\.csv \(split 0, bytes 0-\d+\)")
    assert event["input"]["url"].endswith("in.csv") and event["input"]["start"] == 0


def test_a_malformed_input_row_names_the_source_and_the_byte_range(tmp_path: Path) -> None:
    write_csv(tmp_path / "in.csv", 50, bad_at=31)
    path = tmp_path / "bad_row.yaml"
    path.write_text(
        f"""version: 1
name: malformed-row
nodes:
  input: {{op: read_csv, path: {tmp_path}/in.csv}}
  output: {{op: write_parquet, input: input, path: {tmp_path}/out}}
""",
        encoding="utf-8",
    )
    summary = run(path)
    event = check_said_why(
        summary, path, "input", "read_csv", r"in\.csv \(bytes 0-\d+\): .*Expected 2 columns"
    )
    assert "fix the input at that place" in event["hint"]


@pytest.fixture
def refusing_server() -> Iterator[LLMServer]:
    def refuse(request: dict[str, Any]) -> Any:
        # a 400 is about the request, so about the row (401/403/404 stop the run: test_fail_fast.py)
        raise ErrorReply(400, "this prompt is not allowed")

    with LLMServer(responder=refuse) as srv:
        yield srv


def test_a_failing_provider_names_the_node_the_row_and_the_status(
    tmp_path: Path, refusing_server: LLMServer
) -> None:
    write_csv(tmp_path / "in.csv", 5)
    path = tmp_path / "llm.yaml"
    path.write_text(
        f"""version: 1
name: failing-provider
providers:
  anthropic:
    config: {{base_url: "{refusing_server.url}", api_key: "${{HEADRACE_TEST_KEY}}"}}
nodes:
  input: {{op: read_csv, path: {tmp_path}/in.csv}}
  classify:
    op: llm_classify
    input: input
    provider: anthropic
    prompt: "Classify {{{{ text }}}}"
    labels: [a, b]
    retry: {{max_attempts: 2, initial_backoff_s: 0.01}}
  output: {{op: write_parquet, input: classify, path: {tmp_path}/out}}
""",
        encoding="utf-8",
    )
    summary = run(path)
    event = check_said_why(
        summary, path, "classify", "llm_classify", r"in\.csv \(split 0, bytes 0-\d+\): row \d+: "
    )
    assert "400" in (summary.error or "") and "check the provider's answer" in event["hint"]
    assert KEY not in (summary.error or "")
    assert isinstance(event["input"]["row"], int)

    # `headrace runs show` reports the same, from the record alone
    import os

    shown = run_headrace(
        "runs", "show", summary.run_id, env={"HEADRACE_CHECKPOINTS": os.environ["HEADRACE_CHECKPOINTS"]}
    )
    assert shown.returncode == 0, shown.stderr
    assert f"run {summary.run_id}: failed" in shown.stdout
    assert f"error: {path}:{line_of(path, 'classify:')}:3: node 'classify' [data_invalid]" in shown.stdout
    assert "next: check the provider's answer" in shown.stdout
    as_json = json.loads(
        run_headrace(
            "runs",
            "show",
            summary.run_id,
            "--json",
            env={"HEADRACE_CHECKPOINTS": os.environ["HEADRACE_CHECKPOINTS"]},
        ).stdout
    )
    assert as_json["status"] == "failed" and as_json["record"]["errors"][0]["input"] == event["input"]
    # the failed split committed nothing: no rows are claimed for it
    assert as_json["record"]["nodes"]["output"]["rows"] == 0
