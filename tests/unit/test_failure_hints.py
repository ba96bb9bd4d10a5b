"""A failure's hint never suggests what the pipeline already does: a node that sets bad rows aside is
not told to set them aside (issue 17: the hint suggested dead letters when they were already set)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.check import check_file
from engine.errors import DataError
from engine.runtime.failures import explain


@pytest.mark.parametrize("on_error", ["", ", on_error: {mode: dead_letter, dead_letter_path: dead}"])
def test_a_source_error_hints_at_dead_letters_only_when_the_node_has_none(
    tmp_path: Path, on_error: str
) -> None:
    (tmp_path / "in.csv").write_text("id\n1\n")
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nname: hints\nnodes:\n"
        f"  input: {{op: read_csv, path: in.csv{on_error}}}\n"
        "  output: {op: write_jsonl, input: input, path: out}\n"
    )
    error = DataError("node 'input': in.csv (bytes 0-5): something no row caused", node="input")
    message = explain(error, check_file(str(path)), "run-1").message
    assert "--resume run-1" in message
    if on_error:
        assert "already sets bad rows aside with `on_error: dead_letter`" in message, message
        assert "give node 'input' `on_error" not in message
    else:
        assert "give node 'input' `on_error: {mode: dead_letter" in message, message
