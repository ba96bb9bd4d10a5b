"""A corpus of user mistakes, each refused with exit 1 or 3 (never 70, "a bug in headrace") and a message
naming the file: a truncated Parquet file, a file that is not Parquet, an HTTP input answering an error
status, an output folder that cannot be created."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.check import check_file
from engine.errors import HeadraceError
from engine.runtime import RunSummary, run_checked

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]


def _outcome(path: Path) -> tuple[int, str]:
    """The exit code and message of running ``path`` (a refusal before the run counts as its error)."""
    try:
        summary = run_checked(check_file(str(path)), progress=False)
    except HeadraceError as exc:
        return exc.exit_code, str(exc)
    assert isinstance(summary, RunSummary)
    return summary.exit_code, summary.error or ""


def _pipeline(tmp_path: Path, source: str, output: str | None = None) -> Path:
    path = tmp_path / "pipe.yaml"
    out = output or str(tmp_path / "out")
    path.write_text(
        f"version: 1\nname: mistakes\nnodes:\n  input: {source}\n"
        f"  output: {{op: write_jsonl, input: input, path: {out}}}\n"
    )
    return path


@pytest.fixture
def http_500() -> Iterator[str]:
    class Missing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(500, "the server broke")

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Missing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/data.csv"
    finally:
        server.shutdown()
        server.server_close()


def test_a_truncated_parquet_file_is_named(tmp_path: Path) -> None:
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"id": list(range(1000))}), whole)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    code, message = _outcome(_pipeline(tmp_path, f"{{op: read_parquet, path: {cut}}}"))
    assert code in (1, 3), message
    assert f"{cut} is not a readable Parquet file" in message and "node 'input'" in message


def test_a_file_that_is_not_parquet_is_named(tmp_path: Path) -> None:
    fake = tmp_path / "fake.parquet"
    fake.write_text("id,text\n1,a\n")
    code, message = _outcome(_pipeline(tmp_path, f"{{op: read_parquet, path: {fake}}}"))
    assert code in (1, 3) and f"{fake} is not a readable Parquet file" in message, message


def test_an_http_input_answering_500_is_named(tmp_path: Path, http_500: str) -> None:
    code, message = _outcome(_pipeline(tmp_path, f"{{op: read_csv, path: '{http_500}'}}"))
    assert code in (1, 3), message
    assert http_500 in message and "500" in message, message


def test_an_output_folder_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,a\n")
    code, message = _outcome(_pipeline(tmp_path, f"{{op: read_csv, path: {src}}}", "/proc/headrace-out"))
    assert code in (1, 3), message
    assert "/proc/headrace-out" in message, message


def test_an_output_folder_holding_an_earlier_run_says_what_to_do_and_nothing_else(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,a\n")
    path = _pipeline(tmp_path, f"{{op: read_csv, path: {src}}}")
    assert _outcome(path)[0] == 0
    code, message = _outcome(path)
    assert code == 3 and "already holds the output of an earlier run" in message, message
    assert "set `overwrite: true` on the node" in message
    assert "dead-letter" not in message and "max_failed" not in message  # no unrelated hint
    assert (tmp_path / "out" / "_manifest.json").exists()  # the earlier run's output is intact


def test_a_source_nodes_dead_letters_are_named_after_the_source(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,a\n2,b,one too many\n3,c\n")
    dead = tmp_path / "dead"
    source = f"{{op: read_csv, path: {src}, on_error: {{mode: dead_letter, dead_letter_path: {dead}}}}}"
    code, message = _outcome(_pipeline(tmp_path, source))
    assert code == 0, message
    assert [p.name for p in dead.glob("*.jsonl")] == ["dead-input-00000.jsonl"]


def test_an_invalid_utf8_cell_is_dead_lettered_and_every_valid_cell_is_written_as_text(
    tmp_path: Path,
) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(b"id,text\n1,caf\xe9\n2,x0\n3,\xc3\xa9t\xc3\xa9\n")
    dead = tmp_path / "dead"
    source = f"{{op: read_csv, path: {src}, on_error: {{mode: dead_letter, dead_letter_path: {dead}}}}}"
    code, message = _outcome(_pipeline(tmp_path, source))
    assert code == 0, message
    written = [json.loads(line) for p in sorted((tmp_path / "out").glob("part-*.jsonl")) for line in p.open()]
    assert written == [{"id": 2, "text": "x0"}, {"id": 3, "text": "été"}]  # not "b'x0'"
    (record,) = [json.loads(line) for p in dead.glob("dead-input-*.jsonl") for line in p.open()]
    assert record["node"] == "input" and "invalid UTF-8" in record["error"]
    assert record["row"] == {"row": {"id": 1, "text": "caf\\xe9"}}
