"""The published schema checked by ajv, a JSON Schema validator independent of headrace (pydantic).

ajv (node, ``tests/schema_ajv``, pinned by its package-lock; ``.ci/run`` installs it with ``npm ci``)
must compile the schema in strict mode, report a typo as one error, and agree with ``headrace validate``'s
loading on every document: what one refuses the other refuses. Checks a schema cannot express (node
references, cycles, columns, templates, registries, paths) are listed in the README and not tried here.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.errors import ConfigError
from engine.spec.loader import load_pipeline
from engine.spec.schema import json_schema
from tests.unit.helpers import CONFIGS

AJV = Path(__file__).resolve().parents[2] / "schema_ajv"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="ajv runs on node")


@pytest.fixture(scope="module")
def ajv() -> Any:
    """``check(documents)``: ajv's verdict on each document, against the current schema."""
    if not (AJV / "node_modules" / "ajv").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=AJV, check=True, capture_output=True)
    schema = json_schema()

    def check(documents: list[Any]) -> dict[str, Any]:
        proc = subprocess.run(
            ["node", str(AJV / "validate.js")],
            input=json.dumps({"schema": schema, "documents": documents}),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    return check


def _headrace_accepts(document: Any, tmp_path: Path) -> bool:
    try:
        load_pipeline(str(tmp_path / "p.json"), content=json.dumps(document))
    except ConfigError:
        return False
    return True


def _configs() -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted(CONFIGS.rglob("*.yaml"))]


def _base() -> dict[str, Any]:
    return {
        "version": 1,
        "name": "t",
        "budget": {"max_cost_usd": 1.5},
        "nodes": {
            "input": {"op": "read_csv", "path": "in.csv", "batch_rows": 1000},
            "c": {
                "op": "llm_classify",
                "input": "input",
                "provider": "offline",
                "prompt": "x {{ body }}",
                "labels": ["a", "b"],
                "output": "label",
                "on_error": {"mode": "dead_letter", "dead_letter_path": "dl/"},
            },
            "agg": {
                "op": "aggregate",
                "input": "c",
                "group_by": ["label"],
                "aggregations": {"n": {"fn": "count"}},
            },
            "out": {"op": "write_parquet", "input": "agg", "path": "o/", "overwrite": True},
        },
    }


def _mutated(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_base())
    *parents, last = path
    target = doc
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


_DELETE = object()

REFUSED = {
    "overwrite-yes": (("nodes", "out", "overwrite"), "yes"),
    "overwrite-1": (("nodes", "out", "overwrite"), 1),
    "max-cost-as-string": (("budget", "max_cost_usd"), "1.5"),
    "batch-rows-as-string": (("nodes", "input", "batch_rows"), "1000"),
    "batch-rows-as-float": (("nodes", "input", "batch_rows"), 1000.5),
    "path-as-number": (("nodes", "out", "path"), 3),
    "typo-in-a-field": (("nodes", "input", "pathh"), "x.csv"),
    "unknown-op": (("nodes", "input", "op"), "read_csvv"),
    "missing-required-field": (("nodes", "input", "path"), _DELETE),
    "dead-letter-without-path": (("nodes", "c", "on_error"), {"mode": "dead_letter"}),
    "sum-without-column": (("nodes", "agg", "aggregations"), {"n": {"fn": "sum"}}),
    "repeated-labels": (("nodes", "c", "labels"), ["a", "a"]),
    "version-2": (("version",), 2),
    "bad-node-name": (("nodes", "in put"), {"op": "read_csv", "path": "x.csv"}),
}


def test_ajv_compiles_the_schema_in_strict_mode(ajv: Any) -> None:
    result = ajv([])
    assert result["compiled"], result["error"]


def test_every_bundled_config_is_valid_for_ajv_and_headrace(ajv: Any, tmp_path: Path) -> None:
    documents = [*_configs(), _base()]
    results = ajv(documents)["results"]
    for document, result in zip(documents, results, strict=True):
        assert result["valid"], (document["name"], result["errors"])
        assert _headrace_accepts(document, tmp_path), document["name"]


def test_ajv_and_headrace_refuse_the_same_documents(ajv: Any, tmp_path: Path) -> None:
    cases = sorted(REFUSED)
    results = ajv([_mutated(*REFUSED[c]) for c in cases])["results"]
    accepted_by_ajv = [c for c, r in zip(cases, results, strict=True) if r["valid"]]
    accepted_by_headrace = [c for c in cases if _headrace_accepts(_mutated(*REFUSED[c]), tmp_path)]
    assert accepted_by_ajv == [] and accepted_by_headrace == []


def test_one_mistake_is_one_error_not_one_per_op(ajv: Any) -> None:
    cases = ["typo-in-a-field", "unknown-op", "overwrite-yes", "missing-required-field"]
    results = ajv([_mutated(*REFUSED[c]) for c in cases])["results"]
    for case, result in zip(cases, results, strict=True):
        # an `if`/`then` reports that its `then` failed beside the error itself: not a second problem
        errors = [e for e in result["errors"] if e["keyword"] != "if"]
        assert len(errors) == 1, (case, result["errors"])
