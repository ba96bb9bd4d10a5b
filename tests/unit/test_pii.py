"""PII ops: detectors and their checks, mask/hash/drop, the findings column, the models, the
``mask_before_llm`` plan rewrite, and precision/recall on the labelled set in tests/data/pii."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from engine.check import check_file
from engine.errors import ConfigError, RunError
from engine.spec.models import PII_TYPES
from engine.spec.registry import pipeline_model
from operators.batch import batch_fn
from operators.pii import (
    FINDINGS_TYPE,
    PiiDetect,
    PiiMask,
    find_pii,
    iban_valid,
    insert_pii_masks,
    luhn_valid,
    ssn_valid,
)
from operators.pii_batch import FINDINGS_ARROW_TYPE, hash_tag
from tests.unit.helpers import write

DATA = Path(__file__).resolve().parents[1] / "data" / "pii"
KEY = "k" * 8 + "-test-key-0123"
RESULTS_ENV = "HEADRACE_WRITE_PII_RESULTS"
"""Set to 1 to rewrite tests/data/pii/RESULTS.md with the measured table (never written otherwise)."""


def found(text: str, *types: Any) -> list[tuple[str, str]]:
    return [(f.type, text[f.start : f.end]) for f in find_pii(text, types or PII_TYPES)]


# --- detectors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("write to jane.doe+x@mail.example.co.uk.", "EMAIL", "jane.doe+x@mail.example.co.uk"),
        ("call +44 20 7946 0958 now", "PHONE", "+44 20 7946 0958"),
        ("call +14155552671", "PHONE", "+14155552671"),
        ("call (415) 555-2671", "PHONE", "(415) 555-2671"),
        ("call 415.555.2671", "PHONE", "415.555.2671"),
        ("appelle 06 12 34 56 78", "PHONE", "06 12 34 56 78"),
        ("ruf 030 1234 5678 an", "PHONE", "030 1234 5678"),
        ("card 4111 1111 1111 1111", "CREDIT_CARD", "4111 1111 1111 1111"),
        ("card 3782-822463-10005", "CREDIT_CARD", "3782-822463-10005"),
        ("card 5555555555554444.", "CREDIT_CARD", "5555555555554444"),
        ("iban DE89 3704 0044 0532 0130 00 THANKS", "IBAN", "DE89 3704 0044 0532 0130 00"),
        ("iban GB82WEST12345698765432", "IBAN", "GB82WEST12345698765432"),
        ("ssn 123-45-6789", "US_SSN", "123-45-6789"),
        ("from 192.168.1.10.", "IP_ADDRESS", "192.168.1.10"),
        ("from 2001:db8::8a2e:370:7334 today", "IP_ADDRESS", "2001:db8::8a2e:370:7334"),
        ("from ::ffff:192.0.2.1", "IP_ADDRESS", "::ffff:192.0.2.1"),
        ("Dear Jane O'Brien,\nhi", "PERSON", "Jane O'Brien"),
        ("Dr. Anna Meyer-Lang will call", "PERSON", "Anna Meyer-Lang"),
        ("Regards,\nAlice Walker", "PERSON", "Alice Walker"),
    ],
)
def test_each_type_is_found_at_its_exact_span(text: str, kind: str, value: str) -> None:
    assert found(text) == [(kind, value)]


@pytest.mark.parametrize(
    "text",
    [
        "order 5829301744 and ORD-0012-3456-7890 shipped",
        "dates 2024-03-15, 15.03.2024, 03/15/2024 at 10:30:00",
        "version 2.4.1.0, v1.12.3, release 10.0.19041.1",
        "price $1,299.99 or € 2.499,00 for 1,000,000 units",
        "card 4111 1111 1111 1112 declined",  # Luhn fails
        "iban DE88 3704 0044 0532 0130 00",  # check digits fail
        "ids 987-65-4321, 666-12-3456, 000-12-3456, 123-00-4567, 123-45-0000",
        "ISBN 978-3-16-148410-0 and 1Z999AA10123456784",
        "Hi Team, the Monday report; Dear Customer,",
        "ratio 3:2:1, deadbeef::",
    ],
)
def test_hard_negatives_are_not_pii(text: str) -> None:
    assert found(text) == []


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and iban_valid("GB82WEST12345698765432")
    assert not iban_valid("DE88370400440532013000")
    assert not iban_valid("DE89370400440532013")  # Germany's IBANs have 22 characters
    assert ssn_valid("123-45-6789")
    for bad in ("000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000", "078-05-1120"):
        assert not ssn_valid(bad), bad


def test_overlapping_candidates_keep_the_more_specific_type() -> None:
    # the IBAN's digit groups also look like a national phone number and could pass as a card
    text = "pay to DE89 3704 0044 0532 0130 00 or 0044 0532 0130"
    assert found(text)[0] == ("IBAN", "DE89 3704 0044 0532 0130 00")
    assert found("mail 4111111111111111@example.com") == [("EMAIL", "4111111111111111@example.com")]


def test_types_restrict_what_is_found() -> None:
    text = "jane@example.com, 123-45-6789"
    assert found(text, "US_SSN") == [("US_SSN", "123-45-6789")]


# --- batch functions ------------------------------------------------------------------------------


def mask(table: pa.Table, **fields: Any) -> pa.Table:
    return batch_fn(PiiMask(op="pii_mask", input="x", **fields))(table)


BODY = pa.table(
    {
        "id": pa.array([1, 2, 3, 4], pa.int64()),
        "body": ["mail jane@example.com or 123-45-6789", "nothing here", None, "ip 10.0.0.1 twice 10.0.0.1"],
        "email": ["a@example.com", "b@example.com", "a@example.com", None],
    }
)


def test_mask_replaces_each_finding_with_its_type() -> None:
    out = mask(BODY, columns=["body"])
    assert out["body"].to_pylist() == [
        "mail [EMAIL] or [US_SSN]",
        "nothing here",
        None,
        "ip [IP_ADDRESS] twice [IP_ADDRESS]",
    ]
    assert out["email"] == BODY["email"] and out.schema == BODY.schema


def test_hash_is_keyed_stable_and_equal_for_equal_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_PII_KEY", KEY)
    out = mask(BODY, columns={"email": "hash", "body": "hash"})
    again = mask(BODY, columns={"email": "hash", "body": "hash"})
    assert out.equals(again)  # same input, same output: reruns and the LLM cache see the same text
    emails = out["email"].to_pylist()
    assert emails[0] == emails[2] == hash_tag("EMAIL", "a@example.com", KEY.encode())
    assert (
        emails[0] != emails[1] and emails[0].startswith("[EMAIL:") and len(emails[0]) == len("[EMAIL:]") + 12
    )
    body = out["body"].to_pylist()[3]
    assert body.count(hash_tag("IP_ADDRESS", "10.0.0.1", KEY.encode())) == 2
    monkeypatch.setenv("HEADRACE_PII_KEY", KEY + "-other")
    assert mask(BODY, columns={"email": "hash"})["email"].to_pylist()[0] != emails[0]


@pytest.mark.parametrize("value", [None, "", "too-short"])
def test_hash_without_a_usable_key_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    monkeypatch.delenv("MY_PII_KEY", raising=False)
    if value is not None:
        monkeypatch.setenv("MY_PII_KEY", value)
    with pytest.raises(RunError, match="environment variable MY_PII_KEY"):
        mask(BODY, columns=["email"], mode="hash", key_env="MY_PII_KEY")


def test_mask_mode_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADRACE_PII_KEY", raising=False)
    assert mask(BODY, columns=["email"])["email"].to_pylist()[0] == "[EMAIL]"


def test_drop_nulls_every_cell_holding_a_finding() -> None:
    out = mask(BODY, columns={"body": "drop", "email": "mask"})
    assert out["body"].to_pylist() == [None, "nothing here", None, None]
    assert out["email"].to_pylist() == ["[EMAIL]", "[EMAIL]", "[EMAIL]", None]
    assert out.schema == BODY.schema


def test_star_masks_every_string_column_and_leaves_others() -> None:
    out = mask(BODY, columns="*")
    assert out["email"].to_pylist()[0] == "[EMAIL]" and out["body"].to_pylist()[0].startswith("mail [EMAIL]")
    assert out["id"] == BODY["id"]


def test_masking_keeps_large_string_and_tolerates_null_columns() -> None:
    table = pa.table({"t": pa.array(["x 123-45-6789"], pa.large_string()), "n": pa.nulls(1)})
    out = mask(table, columns=["t", "n"])
    assert out["t"].type == pa.large_string() and out["t"].to_pylist() == ["x [US_SSN]"]
    assert out["n"].type == pa.null()


def test_a_missing_column_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="column 'nope' is not in the batch"):
        mask(BODY, columns=["nope"])


def test_detect_adds_a_typed_findings_column() -> None:
    out = batch_fn(PiiDetect(op="pii_detect", input="x", columns=["body", "email"]))(BODY)
    assert out.schema.field("pii_findings").type == FINDINGS_ARROW_TYPE
    assert str(FINDINGS_ARROW_TYPE) == FINDINGS_TYPE
    rows = out["pii_findings"].to_pylist()
    assert rows[0] == [
        {"type": "EMAIL", "column": "body", "start": 5, "end": 21},
        {"type": "US_SSN", "column": "body", "start": 25, "end": 36},
        {"type": "EMAIL", "column": "email", "start": 0, "end": 13},
    ]
    assert rows[1][0]["column"] == "email" and rows[3][0]["type"] == "IP_ADDRESS"
    assert out.select(BODY.column_names).equals(BODY)


def test_screening_in_arrow_loses_no_finding() -> None:
    texts = [json.loads(x)["text"] for x in (DATA / "labelled.jsonl").read_text().splitlines()]
    texts += [t.lower() for t in texts] + [t.upper() for t in texts]
    out = batch_fn(PiiDetect(op="pii_detect", input="x", columns=["t"]))(pa.table({"t": texts}))
    batched = [[(f["type"], f["start"], f["end"]) for f in row] for row in out["pii_findings"].to_pylist()]
    assert batched == [[(f.type, f.start, f.end) for f in find_pii(t)] for t in texts]
    assert sum(map(len, batched)) > 500


_PIECES = st.sampled_from(
    [
        *("4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00", "123-45-6789", "10.0.0.1", "fe80::1"),
        *("Dr. Ann Lee", "Dear Bo Li,", "+44 20 7946 0958", "030 1234 5678", "(415) 555-2671", "a@b.io"),
        *(" ", "-", ".", ":", "0", "7", "x", "Hi", "Regards,\n"),
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_PIECES, max_size=8).map("".join), min_size=1, max_size=5))
def test_screening_never_hides_a_finding_of_any_text(texts: list[str]) -> None:
    out = batch_fn(PiiDetect(op="pii_detect", input="x", columns=["t"]))(pa.table({"t": texts}))
    batched = [[(f["type"], f["start"], f["end"]) for f in row] for row in out["pii_findings"].to_pylist()]
    assert batched == [[(f.type, f.start, f.end) for f in find_pii(t)] for t in texts]


def test_detect_on_an_empty_batch() -> None:
    empty = BODY.slice(0, 0)
    out = batch_fn(PiiDetect(op="pii_detect", input="x", columns=["body"], output="f"))(empty)
    assert out.num_rows == 0 and out.schema.field("f").type == FINDINGS_ARROW_TYPE


# --- models -----------------------------------------------------------------------------------------


def test_models_validate_and_default_to_every_type() -> None:
    m = PiiMask(op="pii_mask", input="x", columns={"body": "mask", "email": "hash", "ssn": "drop"})
    assert m.modes() == {"body": "mask", "email": "hash", "ssn": "drop"} and m.types == list(PII_TYPES)
    assert [c for c, _ in m.column_refs()] == ["body", "email", "ssn"]
    assert PiiMask(op="pii_mask", input="x", columns="*").column_refs() == []
    d = PiiDetect(op="pii_detect", input="x", columns=["a"])
    assert d.output_columns([{"a": "string"}]) == {"a": "string", "pii_findings": FINDINGS_TYPE}


@pytest.mark.parametrize(
    "fields",
    [
        {"columns": {"body": "blur"}},
        {"columns": []},
        {"columns": ["body"], "types": ["PASSPORT"]},
        {"columns": ["body"], "key_env": "not a name"},
        {"columns": ["body"], "detector": "presidio"},  # presidio-analyzer is not installed here
        {"columns": ["body"], "secret": "x"},
    ],
)
def test_models_refuse_bad_fields(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        PiiMask(op="pii_mask", input="x", **fields)


def test_presidio_missing_at_run_time_is_a_clear_error() -> None:
    # validation refuses it when the pipeline is checked; a worker without the package says so too
    spec = PiiMask.model_construct(
        op="pii_mask", input="x", columns=["body"], detector="presidio", presidio_model="en_core_web_lg"
    )
    spec = spec.model_copy(update={"types": list(PII_TYPES), "mode": "mask", "key_env": "K"})
    with pytest.raises(RunError, match="pip install presidio-analyzer"):
        batch_fn(spec)


def test_presidio_without_the_package_is_a_located_config_error(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", pipeline_text("pii: {mask_before_llm: true, detector: presidio}"))
    with pytest.raises(ConfigError) as err:
        check_file(str(path))
    (diag,) = err.value.errors
    assert diag.line == 3 and "pip install presidio-analyzer" in diag.message


# --- mask_before_llm ------------------------------------------------------------------------------


def pipeline_text(top: str = "", prompt: str = "Ticket {{ id }}: {{ body }}", extra: str = "") -> str:
    return f"""\
version: 1
name: pii
{top}
defaults: {{provider: offline, model: m}}
nodes:
  input:
    {{op: read_csv, path: rows.csv, columns: [id, body, email],
      column_types: {{id: int64, body: string, email: string}}}}
  pick: {{op: select, input: input, columns: [id, body, email]}}
  classify:
    op: llm_classify
    input: pick
    prompt: "{prompt}"
    labels: [a, b]
{extra}
  output: {{op: write_parquet, input: classify, path: out}}
"""


def load(text: str) -> Any:
    return pipeline_model().model_validate(yaml.safe_load(text))


def test_mask_before_llm_inserts_a_mask_of_the_prompt_columns(tmp_path: Path) -> None:
    text = pipeline_text(
        "pii: {mask_before_llm: true, mode: hash, types: [EMAIL, PHONE], key_env: K}",
        extra='    system: "Reply for {{ email }}"',
    )
    checked = check_file(str(write(tmp_path / "p.yaml", text)))
    plan = checked.plan
    mask_node = plan.nodes["classify__pii_mask"]  # type: ignore[index]
    spec = mask_node.spec
    assert isinstance(spec, PiiMask)
    assert mask_node.inputs == ("pick",) and plan.nodes["classify"].inputs == ("classify__pii_mask",)  # type: ignore[index]
    assert spec.columns == ["body", "id", "email"] and spec.mode == "hash" and spec.key_env == "K"
    assert spec.types == ["EMAIL", "PHONE"]
    assert [c for c, _ in spec.column_refs()] == ["body", "id", "email"]
    # every value a prompt reads is scanned as text, numbers too (issue 18)
    assert mask_node.columns == {"id": "string", "body": "string", "email": "string"}
    assert "classify__pii_mask" not in checked.loaded.spec.nodes  # the user's pipeline is untouched


def test_a_template_reading_the_whole_row_masks_every_string_column() -> None:
    pipeline = load(pipeline_text("pii: {mask_before_llm: true}", prompt="Row: {{ row }}"))
    spec = insert_pii_masks(pipeline).nodes["classify__pii_mask"]
    assert isinstance(spec, PiiMask) and spec.columns == "*"


def test_without_the_setting_the_pipeline_is_unchanged() -> None:
    for top in ("", "pii: {mask_before_llm: false}"):
        pipeline = load(pipeline_text(top))
        assert insert_pii_masks(pipeline) is pipeline


def test_an_existing_node_name_is_not_taken_over() -> None:
    text = pipeline_text("pii: {mask_before_llm: true}").replace(
        "  output:", "  classify__pii_mask: {op: select, input: pick, columns: [id]}\n  output:"
    )
    nodes = insert_pii_masks(load(text)).nodes
    assert nodes["classify__pii_mask"].op == "select"
    assert nodes["classify__pii_mask_2"].op == "pii_mask"
    assert nodes["classify"].inputs() == ("classify__pii_mask_2",)


def test_problems_still_point_at_the_users_nodes(tmp_path: Path) -> None:
    text = pipeline_text("pii: {mask_before_llm: true}", prompt="Ticket {{ bdy }}")
    with pytest.raises(ConfigError) as err:
        check_file(str(write(tmp_path / "p.yaml", text)))
    (diag,) = err.value.errors
    assert "column 'bdy' is not in the input of 'classify'" in diag.message
    assert diag.json_path == "nodes.classify.prompt" and diag.line == 13


# --- precision and recall on the labelled set -----------------------------------------------------

FLOORS = {t: (0.95, 0.9) for t in PII_TYPES if t != "PERSON"} | {"PERSON": (0.9, 0.6)}
"""(precision, recall) each type must reach; names are found by cues only, so their recall is lower."""


def measure() -> dict[str, tuple[int, int, int]]:
    """(true positives, false positives, false negatives) per type; a hit needs the exact span."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for line in (DATA / "labelled.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        gold = {(s["type"], s["start"], s["end"]) for s in row["spans"]}
        got = {(f.type, f.start, f.end) for f in find_pii(row["text"])}
        for kind, counter in ((gold & got, tp), (got - gold, fp), (gold - got, fn)):
            counter.update(t for t, _, _ in kind)
    return {t: (tp[t], fp[t], fn[t]) for t in PII_TYPES}


def _ratio(a: int, b: int) -> float:
    return a / b if b else 1.0


def test_the_labelled_set_is_what_its_script_writes(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_labelled", DATA / "make_labelled.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write(tmp_path / "labelled.jsonl")
    assert (tmp_path / "labelled.jsonl").read_text() == (DATA / "labelled.jsonl").read_text()
    rows = [json.loads(x) for x in (DATA / "labelled.jsonl").read_text().splitlines()]
    assert len(rows) >= 300 and {s["type"] for r in rows for s in r["spans"]} == set(PII_TYPES)
    for row in rows:
        assert all(0 <= s["start"] < s["end"] <= len(row["text"]) for s in row["spans"])


def test_precision_and_recall_reach_their_floors() -> None:
    figures = measure()
    lines = [
        "# PII detectors on tests/data/pii/labelled.jsonl",
        "",
        "Written by `HEADRACE_WRITE_PII_RESULTS=1 pytest tests/unit/test_pii.py`; detector `patterns`;",
        "a hit needs the exact type and span.",
        "",
        "| type | true pos. | false pos. | false neg. | precision | recall |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    failures = []
    for kind, (tp, fp, fn) in figures.items():
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        lines.append(f"| {kind} | {tp} | {fp} | {fn} | {precision:.3f} | {recall:.3f} |")
        floor_p, floor_r = FLOORS[kind]
        if precision < floor_p or recall < floor_r:
            failures.append(
                f"{kind}: precision {precision:.3f} (floor {floor_p}), recall {recall:.3f} (floor {floor_r})"
            )
    if os.environ.get(RESULTS_ENV) == "1":
        (DATA / "RESULTS.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert failures == [], "\n".join(lines)
