"""Hostile input files: each is read, or refused with an error naming the node and the file, never a
traceback, and nothing is written outside the run's own output folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.check import check_file
from engine.runtime import run_checked

pytestmark = pytest.mark.usefixtures("ray_cluster")

HOSTILE_CSV: dict[str, bytes] = {
    "invalid_utf8": b"id,text\n1,caf\xe9\n2,ok\n",
    "nul_bytes": b"id,text\n1,a\x00b\n2,ok\n",
    "unclosed_quote_at_eof": b'id,text\n1,"never closed\n2,ok\n',
    "ragged_rows": b"id,text\n1,a,extra,fields\n2\n3,ok\n",
    "only_header": b"id,text\n",
    "empty_file": b"",
    "crlf_and_bom": b"\xef\xbb\xbfid,text\r\n1,a\r\n2,b\r\n",
    "huge_field": b"id,text\n1," + b"x" * 3_000_000 + b"\n2,ok\n",
    "formula_injection": b'id,text\n1,"=HYPERLINK(""http://evil"")"\n2,@SUM(A1)\n',
}
HOSTILE_JSONL: dict[str, bytes] = {
    "deep_nesting": b'{"a": ' * 5_000 + b"1" + b"}" * 5_000 + b"\n",
    "not_objects": b'[1, 2]\n"text"\n{"id": 1}\n',
    "truncated_last_line": b'{"id": 1}\n{"id": 2, "te',
    "invalid_utf8": b'{"id": 1, "text": "\xff\xfe"}\n',
}


def run(tmp_path: Path, name: str, data: bytes, op: str) -> tuple[str, str | None, Path]:
    src = tmp_path / f"{name}.{'csv' if op == 'read_csv' else 'jsonl'}"
    src.write_bytes(data)
    out = tmp_path / "out" / name
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""version: 1
name: hostile
nodes:
  input: {{op: {op}, path: "{src}"}}
  output: {{op: write_jsonl, input: input, path: "{out}"}}
""",
        encoding="utf-8",
    )
    summary = run_checked(check_file(str(path)), progress=False)
    return summary.status, summary.error, out


@pytest.mark.parametrize(
    ("name", "op"), [(n, "read_csv") for n in HOSTILE_CSV] + [(n, "read_jsonl") for n in HOSTILE_JSONL]
)
def test_hostile_files_are_read_or_refused_clearly(tmp_path: Path, name: str, op: str) -> None:
    data = (HOSTILE_CSV if op == "read_csv" else HOSTILE_JSONL)[name]
    before = set(tmp_path.rglob("*"))
    status, error, out = run(tmp_path, name, data, op)
    assert status in ("succeeded", "failed")
    if status == "failed":
        assert error and "Traceback" not in error
        assert "node 'input'" in error and name in error  # the node and the file are named
    else:
        rows = [
            json.loads(line)
            for part in sorted(out.glob("part-*.jsonl"))
            for line in part.read_text().splitlines()
        ]
        assert all(isinstance(r, dict) for r in rows)
    inputs = {tmp_path / f"{name}.yaml", tmp_path / f"{name}.{'csv' if op == 'read_csv' else 'jsonl'}"}
    written = set(tmp_path.rglob("*")) - before - inputs
    assert all(p == out or out in p.parents or p == out.parent for p in written)  # only the run's output
