"""``pii.mask_before_llm`` masks every value a prompt renders, whatever its Arrow type (issue 18.3).

Each payload of :data:`LEAKS` is a batch column, read as a reader would type it (a struct, a list, an
int64 column parsed from CSV text, a card glued to a word, a name with no "Dr." before it in a declared
``pii.columns`` column) and a prompt that renders it. The pipeline's own inserted mask node runs on the
batch, the prompt is rendered from the masked row as the LLM step would, and the secret value must not
be in the prompt.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import yaml

from engine.check import check_file
from engine.spec.expressions import render
from engine.spec.registry import pipeline_model
from operators.batch import batch_fn
from operators.pii import find_pii, insert_pii_masks, readable_type_name
from tests.unit.helpers import invoke

CSV = b"id,card,phone,name,note\n1,4012888888881881,4155552671,Jane Roe,card4012888888881881 please\n"


def _csv() -> pa.Table:
    table = pacsv.read_csv(io.BytesIO(CSV))
    assert table.schema.field("card").type == pa.int64()  # as a CSV reader types it
    return table


LEAKS: dict[str, tuple[Any, str, str]] = {
    "a struct field": (
        lambda: pa.table({"contact": [{"email": "ann.lee@example.com", "tier": 2}]}),
        "Write to {{ contact.email }}",
        "ann.lee@example.com",
    ),
    "a list element": (
        lambda: pa.table({"tags": [["call +14155552671", "vip"]]}),
        "First tag: {{ tags[0] }}",
        "4155552671",
    ),
    "a map value": (
        lambda: pa.table({"attrs": pa.array([[("ssn", "123-45-6789")]], pa.map_(pa.string(), pa.string()))}),
        "{{ attrs }}",
        "123-45-6789",
    ),
    "an int64 card column from CSV": (_csv, "Card {{ card }}", "4012888888881881"),
    "a card glued to a word": (_csv, "Note: {{ note }}", "4012888888881881"),
    "a declared name column without a cue": (_csv, "Customer {{ name }} asks", "Jane Roe"),
    "a declared int64 phone column": (_csv, "Phone {{ phone }}", "4155552671"),
    "a list of structs": (
        lambda: pa.table({"people": [[{"mail": "x.y@example.org"}, {"mail": "ok"}]]}),
        "{% for p in people %}{{ p.mail }} {% endfor %}",
        "x.y@example.org",
    ),
    "binary": (
        lambda: pa.table({"blob": pa.array([b"mail bob@example.com"], pa.binary())}),
        "{{ blob }}",
        "bob@",
    ),
}


def _pipeline(prompt: str, columns: list[str]) -> Any:
    text = f"""version: 1
name: pii
pii: {{mask_before_llm: true, columns: [name, phone]}}
defaults: {{provider: offline, model: m}}
nodes:
  input: {{op: read_parquet, path: in.parquet}}
  ask: {{op: llm_map, input: input, prompt: {yaml.safe_dump(prompt, default_style='"').strip()}}}
  output: {{op: write_parquet, input: ask, path: out}}
"""
    return insert_pii_masks(pipeline_model().model_validate(yaml.safe_load(text)))


@pytest.mark.parametrize("case", list(LEAKS), ids=list(LEAKS))
def test_no_value_reaches_the_prompt_unmasked(case: str) -> None:
    make, prompt, secret = LEAKS[case]
    table = make()
    pipeline = _pipeline(prompt, table.column_names)
    masked = batch_fn(pipeline.nodes["ask__pii_mask"])(table)
    rendered = render(prompt)({**masked.to_pylist()[0], "params": {}})
    assert secret not in rendered, rendered
    assert "[" in rendered  # something was masked, not dropped


def test_numbers_inside_words_are_found() -> None:
    for text, kind in [
        ("card4012888888881881", "CREDIT_CARD"),
        ("tel+14155552671", "PHONE"),
        ("ssn123-45-6789x", "US_SSN"),
    ]:
        assert [f.type for f in find_pii(text)] == [kind], text
    assert find_pii("ORD4111111111111112") == []  # a Luhn-invalid number glued to a word stays


def test_types_the_detectors_read() -> None:
    for name in (
        "string",
        "int64",
        "double",
        "binary",
        "bool",
        "timestamp[ms]",
        "struct<a: int64>",
        "decimal128(9, 2)",
    ):
        assert readable_type_name(name), name
    assert not readable_type_name("dense_union<a: int32=0>")


def test_validate_strict_warns_about_a_prompt_input_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    body = """version: 1
name: pii
{pii}
defaults: {{provider: offline, model: m}}
nodes:
  input:
    op: read_jsonl
    path: in.jsonl
    columns: [body, odd]
    column_types: {{body: string, odd: "dense_union<a: int32=0>"}}
  ask: {{op: llm_map, input: input, prompt: "{{{{ body }}}} {{{{ odd }}}}"}}
  output: {{op: write_parquet, input: ask, path: out}}
"""
    path.write_text(body.format(pii="pii: {mask_before_llm: true}"), encoding="utf-8")
    warnings = [d for d in _diagnostics(path) if d.code == "pii_unreadable"]
    assert len(warnings) == 1 and "'odd'" in warnings[0].message and warnings[0].line == 11
    result = invoke("validate", "--strict", str(path))
    assert result.exit_code == 1 and "warning: pii.mask_before_llm cannot read column 'odd'" in result.output
    path.write_text(body.format(pii=""), encoding="utf-8")
    assert not [d for d in _diagnostics(path) if d.code == "pii_unreadable"]


def _diagnostics(path: Path) -> list[Any]:
    from engine.errors import ConfigError

    try:
        return check_file(str(path)).warnings
    except ConfigError as exc:
        return exc.diagnostics
