"""`headrace schema`: a real draft 2020-12 schema that documents every field and agrees with validate."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from engine.spec.document import read_document
from engine.spec.schema import op_models
from tests.unit.helpers import CONFIG_FILES, CONFIGS, invoke, write


@cache
def _schema() -> dict[str, Any]:
    result = invoke("schema")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_schema())


def _properties(node: Any, where: str = "#") -> Iterator[tuple[str, Any]]:
    """Every (location, subschema) named under a `properties` keyword, anywhere in the schema (but in
    `if`/`then`/`else` conditions, which restate fields described where they are declared)."""
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            yield f"{where}/properties/{name}", sub
        for key, value in node.items():
            if key not in ("if", "then", "else"):
                yield from _properties(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _properties(value, f"{where}/{i}")


def _quickstart() -> dict[str, Any]:
    data = read_document(str(CONFIGS / "examples" / "quickstart.yaml")).data
    assert isinstance(data, dict)
    return copy.deepcopy(data)


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = _schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_every_property_has_a_description() -> None:
    props = list(_properties(_schema()))
    defs = _schema()["$defs"]
    # the walk covers the pipeline's own fields and every op's model under $defs
    assert any(where.startswith("#/$defs/ReadCsv/") for where, _ in props)
    assert {"ReadCsv", "WriteParquet", "LlmClassify", "Call", "Resources", "Edge"} <= set(defs)
    missing = [where for where, sub in props if not str(sub.get("description", "")).strip()]
    assert missing == []


def test_schema_lists_every_op_in_the_node_union() -> None:
    nodes = _schema()["properties"]["nodes"]["additionalProperties"]
    ops = set(nodes["properties"]["op"]["enum"])
    assert set(op_models(_schema())) == ops  # one `if op == X then X's model` per op
    assert {
        "read_csv",
        "sql",
        "filter",
        "select",
        "write_parquet",
        "llm_classify",
        "llm_extract",
        "call",
    } <= ops


def test_schema_output_option_writes_the_same_text(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"
    result = invoke("schema", "-o", str(target))
    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text(encoding="utf-8")) == _schema()


def test_there_are_configs_to_check() -> None:
    names = {p.name for p in CONFIG_FILES}
    assert {"quickstart.yaml", "csv_to_parquet.yaml", "state-graph.yaml", "llm-classify.yaml"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_bundled_config_matches_the_schema_and_validates(path: Path) -> None:
    data = read_document(str(path)).data
    errors = [e.message for e in _validator().iter_errors(data)]
    assert errors == []
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output
    assert "error:" not in result.output


BROKEN: dict[str, tuple[str, Any]] = {
    # name: (dotted path to set, value); "<del>" deletes the key
    "unknown-node-key": ("nodes.input.delimeter", ";"),
    "unknown-top-level-key": ("budgte", {"max_cost_usd": 1}),
    "unknown-op": ("nodes.input.op", "read_cvs"),
    "wrong-type": ("nodes.output.overwrite", "maybe"),
    "future-version": ("version", 2),
    "missing-name": ("name", "<del>"),
    "negative-cpus": ("nodes.clean.resources", {"num_cpus": -1}),
    "bad-node-name": ("nodes.2bad", {"op": "read_csv", "path": "x.csv"}),
    "bad-memory-size": ("nodes.clean.resources", {"memory": "lots"}),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_schema_rejects_what_validate_rejects(tmp_path: Path, name: str) -> None:
    dotted, value = BROKEN[name]
    data = _quickstart()
    *parents, last = dotted.split(".")
    target = data
    for part in parents:
        target = target[part]
    if value == "<del>":
        del target[last]
    else:
        target[last] = value
    assert not _validator().is_valid(data), f"the schema accepts {name}"
    path = write(tmp_path / "broken.json", json.dumps(data))
    assert invoke("validate", str(path)).exit_code == 1
