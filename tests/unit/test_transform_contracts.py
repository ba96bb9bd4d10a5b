"""Column contracts and load-time checks of flat_map, explode, sample and chunk_text, and the pure
chunking function behind chunk_text (no Ray)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.check import check_file
from engine.errors import ConfigError, Diagnostic
from operators.text import chunk_spans


def _errors(content: str) -> list[Diagnostic]:
    with pytest.raises(ConfigError) as err:
        check_file("pipeline.yaml", content=content)
    return [d for d in err.value.diagnostics if d.severity == "error"]


def _columns(content: str, node: str) -> dict[str, str] | None:
    columns = check_file("pipeline.yaml", content=content).plan.nodes[node].columns  # type: ignore[index]
    return None if columns is None else dict(columns)


def test_a_wrong_column_is_refused_at_the_line_that_names_it() -> None:
    (explode,) = _errors(
        """version: 1
name: t
nodes:
  input: {op: read_text, path: docs.txt}
  words: {op: explode, input: input, column: txt}
  output: {op: write_parquet, input: words, path: out}
"""
    )
    assert (explode.line, explode.col) == (5, 46)
    assert explode.message == "column 'txt' is not in the input of 'words'"
    assert explode.hint == "did you mean 'text'?"
    (chunks,) = _errors(
        """version: 1
name: t
nodes:
  input: {op: read_text, path: docs.txt, column: body}
  chunks:
    op: chunk_text
    input: input
    column: text
  output: {op: write_parquet, input: chunks, path: out}
"""
    )
    assert (chunks.line, chunks.col) == (8, 13)
    assert chunks.message == "column 'text' is not in the input of 'chunks'"


def test_output_columns_flow_to_the_next_node() -> None:
    pipeline = """version: 1
name: t
nodes:
  input:
    op: read_jsonl
    path: in.jsonl
    columns: [id, tags]
    column_types: {id: int64, tags: "list<item: string>"}
  tags: {op: explode, input: input, column: tags}
  kept: {op: sample, input: tags, fraction: 0.5}
  chunks: {op: chunk_text, input: kept, column: tags, chunk_chars: 10, overlap_chars: 2}
  output: {op: write_parquet, input: chunks, path: out}
"""
    assert _columns(pipeline, "tags") == {"id": "int64", "tags": "string"}
    assert _columns(pipeline, "kept") == {"id": "int64", "tags": "string"}
    assert _columns(pipeline, "chunks") == {
        "id": "int64",
        "tags": "string",
        "chunk": "string",
        "chunk_index": "int64",
    }
    # a column made by chunk_text can be named downstream; a misspelt one is refused where it is written
    (diag,) = _errors(
        pipeline.replace(
            "  output: {op: write_parquet, input: chunks, path: out}\n",
            "  pick: {op: select, input: chunks, columns: [chunk, chunk_idx]}\n"
            "  output: {op: write_parquet, input: pick, path: out}\n",
        )
    )
    assert (diag.line, diag.col) == (12, 54)
    assert diag.message == "column 'chunk_idx' is not in the input of 'pick'"
    assert diag.hint == "did you mean 'chunk_index'?"


def test_flat_map_columns_are_unknown_so_later_names_are_not_checked() -> None:
    pipeline = """version: 1
name: t
nodes:
  input: {op: read_text, path: docs.txt}
  rows: {op: flat_map, input: input, fn: "mypkg.rows:split", kwargs: {sep: " "}}
  pick: {op: select, input: rows, columns: [anything]}
  output: {op: write_parquet, input: pick, path: out}
"""
    assert _columns(pipeline, "rows") is None
    (diag,) = _errors(pipeline.replace('"mypkg.rows:split"', '"not a path"'))
    assert (diag.line, diag.col) == (5, 42)
    assert "should match pattern" in diag.message


def test_overlap_must_be_below_chunk_size() -> None:
    written = """version: 1
name: t
nodes:
  input: {op: read_text, path: docs.txt}
  chunks:
    op: chunk_text
    input: input
    column: text
    chunk_chars: 100
    overlap_chars: 100
  output: {op: write_parquet, input: chunks, path: out}
"""
    (diag,) = _errors(written)
    assert (diag.line, diag.col) == (10, 20)
    assert diag.message == "overlap_chars must be less than chunk_chars (100) (got 100)"
    # with the default overlap (200) the whole node is at fault
    (diag,) = _errors(written.replace("    overlap_chars: 100\n", ""))
    assert (diag.line, diag.col) == (6, 5)
    assert diag.message == (
        "overlap_chars (200, its default) must be less than chunk_chars (100); set overlap_chars lower"
    )
    (diag,) = _errors(written.replace("overlap_chars: 100", "overlap_chars: 0\n    index_column: chunk"))
    assert "`output` and `index_column` are both 'chunk'" in diag.message


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("fraction", "0", "greater than 0"),
        ("fraction", "1.5", "less than or equal to 1"),
        ("seed", "x", "expected a whole number"),
    ],
)
def test_sample_fields_are_checked(field: str, value: str, message: str) -> None:
    (diag,) = _errors(
        f"""version: 1
name: t
nodes:
  input: {{op: read_text, path: docs.txt}}
  kept: {{op: sample, input: input, fraction: 0.5, {field}: {value}}}
  output: {{op: write_parquet, input: kept, path: out}}
""".replace("fraction: 0.5, fraction", "fraction")
    )
    assert diag.line == 5 and message in diag.message


def _rebuild(text: str, spans: list[tuple[int, int]], overlap: int) -> str:
    chunks = [text[s:e] for s, e in spans]
    return "".join(c if i == 0 else c[overlap:] for i, c in enumerate(chunks))


_TEXT = st.text(alphabet=st.sampled_from("ab \n\t\u00e9\u4e2d\U0001f600"), max_size=400)


@settings(max_examples=300, deadline=None)
@given(_TEXT, st.integers(1, 60), st.data())
def test_chunks_without_their_overlaps_rebuild_the_text(text: str, size: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, size - 1))
    spans = chunk_spans(text, size, overlap)
    assert _rebuild(text, spans, overlap) == text
    assert all(0 < e - s <= size for s, e in spans)
    # consecutive chunks share exactly `overlap` characters
    assert all(b[0] == a[1] - overlap for a, b in itertools.pairwise(spans))
    assert (spans == []) == (text == "")


def test_chunks_prefer_to_end_at_whitespace_in_their_last_tenth() -> None:
    text = "x" * 95 + " " + "y" * 200
    assert chunk_spans(text, 100, 10)[0] == (0, 96)  # the space at 95 is in the last 10 characters
    text = "x" * 80 + " " + "y" * 200
    assert chunk_spans(text, 100, 10)[0] == (0, 100)  # the space at 80 is too early: a hard cut
    words = "alpha beta gamma delta " * 40
    for _, e in chunk_spans(words, 50, 5)[:-1]:
        assert words[e - 1] == " " or words[e] == " "


def test_chunk_spans_refuses_bad_sizes() -> None:
    with pytest.raises(ValueError, match="overlap_chars"):
        chunk_spans("abc", 3, 3)
    with pytest.raises(ValueError, match="chunk_chars"):
        chunk_spans("abc", 0, 0)


def test_a_column_of_the_wrong_type_is_refused_where_the_op_names_it() -> None:
    errors = _errors(
        """version: 1
name: types
nodes:
  input: {op: read_csv, path: x.csv, columns: [id, body], column_types: {id: int64, body: string}}
  chunks: {op: chunk_text, input: input, column: id}
  flat: {op: explode, input: chunks, column: body}
  agg: {op: aggregate, input: flat, aggregations: {t: {fn: sum, column: chunk}, ok: {fn: max, column: chunk}}}
  out: {op: write_parquet, input: agg, path: o}
"""
    )
    found = [(d.line, d.col, d.message) for d in errors]
    assert found == [
        (5, 50, "column 'id' is int64; op 'chunk_text' needs a string column here"),
        (6, 46, "column 'body' is string; op 'explode' needs a list column here"),
        (7, 73, "column 'chunk' is string; op 'aggregate' needs a number column here"),
    ]


def test_an_unknown_type_gets_the_benefit_of_the_doubt() -> None:
    checked = check_file(
        "pipeline.yaml",
        content="""version: 1
name: types
nodes:
  input: {op: read_csv, path: x.csv, columns: [id, body], column_types: {id: int64, body: string}}
  shaped: {op: select, input: input, columns: [id, body]}
  chunks: {op: chunk_text, input: shaped, column: body}
  out: {op: write_parquet, input: chunks, path: o}
""",
    )
    assert checked.plan.nodes["chunks"].columns is not None  # type: ignore[index]
