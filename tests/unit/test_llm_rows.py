"""What an LLM node does to a row (``RowTask``): the request it renders (in Jinja2's sandbox), how it reads
an answer for each op, and the Arrow column it adds. Pure functions: no provider, no Ray.
"""

from __future__ import annotations

from typing import Any

import jinja2
import pyarrow as pa
import pytest
from pydantic import ValidationError

from engine.spec.expressions import render
from operators.llm import LlmClassify, LlmExtract, LlmFilter, LlmMap
from operators.llm_rows import (
    MAX_PROMPT_CHARS,
    InvalidAnswer,
    RowTask,
    Target,
    arrow_type,
    arrow_value,
    output_type,
)

TARGET = Target("anthropic", "claude-haiku-4-5")
ROW = {"title": "Dune", "body": "the invoice is wrong", "year": 1965}

TICKET_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "total": {"type": "number"},
        "lines": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                "required": ["sku", "qty"],
            },
        },
    },
    "required": ["name"],
}


def map_task(prompt: str = "Summarise: {{ body }}", **fields: Any) -> RowTask:
    return RowTask(LlmMap(op="llm_map", input="src", prompt=prompt, **fields), {})


def classify_task(labels: list[str]) -> RowTask:
    return RowTask(LlmClassify(op="llm_classify", input="src", prompt="{{ body }}", labels=labels), {})


def extract_task(schema: dict[str, Any] = TICKET_SCHEMA, **fields: Any) -> RowTask:
    spec = LlmExtract(op="llm_extract", input="src", prompt="{{ body }}", output_schema=schema, **fields)
    return RowTask(spec, {})


FILTER = RowTask(LlmFilter(op="llm_filter", input="src", prompt="Is this about money? {{ body }}"), {})


def interpret(task: RowTask, text: str | None, parsed: Any = None, stop_reason: str | None = None) -> Any:
    request = task.request(ROW, TARGET)
    return task.interpret(request, text, parsed, stop_reason)


# -- requests --------------------------------------------------------------------------------------------


def test_the_prompt_renders_columns_params_and_the_row():
    spec = LlmMap(
        op="llm_map",
        input="src",
        prompt="{{ title }} ({{ row.year }}) for {{ params.audience }}",
        system="You write for {{ params.audience }}; the book is {{ title }}.",
        max_tokens=300,
        temperature=0.2,
        timeout_s=12.5,
    )
    task = RowTask(spec, {"audience": "children"})

    request = task.request(ROW, TARGET)

    assert request.prompt == "Dune (1965) for children"
    assert request.system == "You write for children; the book is Dune."
    assert (request.provider, request.model) == ("anthropic", "claude-haiku-4-5")
    assert (request.max_tokens, request.temperature, request.timeout_s) == (300, 0.2, 12.5)
    assert request.labels is None and request.output_schema is None


def test_a_missing_column_fails_instead_of_rendering_empty():
    with pytest.raises(jinja2.exceptions.UndefinedError, match="'author' is undefined"):
        map_task("By {{ author }}").request(ROW, TARGET)


@pytest.mark.parametrize(
    "template",
    [
        "{{ body.__class__ }}",
        "{{ row.__class__.__mro__[1].__subclasses__() }}",
        "{{ params.__class__ }}",
        "{{ body|attr('__class__') }}",
        "{{ '{0.__class__}'.format(body) }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__ }}",
        "{{ self.__init__ }}",
    ],
)
def test_the_sandbox_refuses_python_internals(template):
    # refused when the node is checked (issue 18: validate names the line and column)...
    with pytest.raises(ValidationError, match="sandbox refuses Python internals"):
        map_task(template)
    # ...and by the sandbox itself, should a template reach it unchecked
    with pytest.raises(jinja2.exceptions.SecurityError) as refused:
        render(template)({**ROW, "params": {}})

    assert "unsafe" in str(refused.value)
    assert "<class" not in str(refused.value) and "0x" not in str(refused.value)


def test_a_method_named_without_calling_it_is_not_sent_as_its_repr():
    try:
        prompt = map_task("Shout: {{ body.upper }}").request(ROW, TARGET).prompt
    except Exception as exc:  # refusing the template is a fine answer
        assert "0x" not in str(exc)
    else:
        assert " at 0x" not in prompt


def test_feedback_is_appended_to_the_prompt():
    task = map_task()

    request = task.request(ROW, TARGET, ["name: 5 is not of type 'string'", "the answer has no text"])

    assert request.prompt == (
        "Summarise: the invoice is wrong"
        "\n\nYour previous answer was not accepted: name: 5 is not of type 'string'; the answer has no text"
        "\nAnswer again, following the required format exactly."
    )
    assert task.request(ROW, TARGET, []).prompt == "Summarise: the invoice is wrong"


def test_a_prompt_up_to_the_limit_is_sent_and_one_past_it_fails_the_row():
    task = map_task("{{ body }}")

    assert len(task.request({"body": "x" * MAX_PROMPT_CHARS}, TARGET).prompt) == MAX_PROMPT_CHARS
    with pytest.raises(InvalidAnswer, match=r"2,000,001 characters, more than 2,000,000"):
        task.request({"body": "x" * (MAX_PROMPT_CHARS + 1)}, TARGET)


def test_feedback_that_pushes_a_prompt_past_the_limit_fails_the_row():
    task = map_task("{{ body }}")

    with pytest.raises(InvalidAnswer, match="more than 2,000,000"):
        task.request({"body": "x" * (MAX_PROMPT_CHARS - 10)}, TARGET, ["wrong"])


def test_each_op_asks_for_its_answer_shape():
    classify = classify_task(["billing", "bug"]).request(ROW, TARGET)
    extract = extract_task().request(ROW, TARGET)

    assert classify.labels == ("billing", "bug") and classify.output_schema is None
    assert FILTER.request(ROW, TARGET).labels == ("yes", "no")
    assert extract.output_schema == TICKET_SCHEMA and extract.labels is None


def test_only_extract_retries_a_wrong_answer():
    assert map_task().max_attempts == 1
    assert classify_task(["a", "b"]).max_attempts == 1
    assert FILTER.max_attempts == 1
    assert extract_task(max_attempts=5).max_attempts == 5


# -- reading answers -------------------------------------------------------------------------------------


def test_a_map_answer_is_its_text():
    assert interpret(map_task(), "A short summary.", stop_reason="end_turn") == "A short summary."


def test_a_map_answer_cut_at_max_tokens_is_refused():
    with pytest.raises(InvalidAnswer, match=r"cut at max_tokens \(64\); raise `max_tokens`"):
        interpret(map_task(max_tokens=64), "A summary that stops mid", stop_reason="max_tokens")


def test_a_map_answer_without_text_is_refused():
    with pytest.raises(InvalidAnswer, match="no text"):
        interpret(map_task(), None, stop_reason="end_turn")


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("billing", "billing"),
        ("Billing", "billing"),
        ("BUG", "bug"),
        ("  bug.\n", "bug"),
        ("'Billing'", "billing"),
        ('"bug"!', "bug"),
        ("`billing`", "billing"),
    ],
)
def test_a_label_matches_ignoring_case_space_and_punctuation(answer, label):
    assert interpret(classify_task(["billing", "bug"]), answer) == label


@pytest.mark.parametrize("answer", ["feature", "billing or bug", "billing, bug", "", "bugs"])
def test_an_answer_naming_no_label_is_refused(answer):
    with pytest.raises(InvalidAnswer, match=r"which is not one of \['billing', 'bug'\]"):
        interpret(classify_task(["billing", "bug"]), answer)


def test_an_answer_matching_two_labels_loosely_is_refused_but_an_exact_one_wins():
    task = classify_task(["Bug", "bug", "billing"])

    with pytest.raises(InvalidAnswer, match="not one of"):
        interpret(task, "BUG")
    assert interpret(task, "bug") == "bug"
    assert interpret(task, "Bug") == "Bug"


def test_a_structured_label_is_preferred_to_the_text():
    task = classify_task(["billing", "bug"])

    assert interpret(task, "I think it is a bug", parsed="billing") == "billing"
    assert interpret(task, "bug", parsed={"label": "billing"}) == "bug"  # not a string: the text decides


def test_a_long_wrong_answer_is_shortened_in_the_error():
    with pytest.raises(InvalidAnswer) as refused:
        interpret(classify_task(["billing", "bug"]), "x" * 500)

    assert len(str(refused.value)) < 200
    assert "…" in str(refused.value)


@pytest.mark.parametrize(("answer", "keep"), [("yes", True), ("Yes.", True), ("no", False), (" NO ", False)])
def test_a_filter_reads_yes_and_no(answer, keep):
    assert interpret(FILTER, answer) is keep


def test_a_filter_refuses_anything_else():
    with pytest.raises(InvalidAnswer, match=r"'maybe', which is not one of \['yes', 'no'\]"):
        interpret(FILTER, "maybe")


def test_a_valid_extraction_is_returned_as_is():
    answer = {"name": "Ada", "total": 12.5, "lines": [{"sku": "A1", "qty": 2}]}

    assert interpret(extract_task(), None, parsed=answer) == answer


@pytest.mark.parametrize(
    ("parsed", "message"),
    [
        (
            {"name": "Ada", "lines": [{"sku": "A1", "qty": "two"}]},
            "lines/0/qty: 'two' is not of type 'integer'",
        ),
        ({"name": "Ada", "lines": [{"sku": "A1"}]}, "lines/0: 'qty' is a required property"),
        ({"name": 5}, "name: 5 is not of type 'string'"),
        ({"total": 3}, "the answer: 'name' is a required property"),
    ],
)
def test_an_invalid_extraction_says_where_it_is_wrong(parsed, message):
    with pytest.raises(InvalidAnswer) as refused:
        interpret(extract_task(), None, parsed=parsed)

    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("text", "parsed", "shown"),
    [("no JSON here", None, "'no JSON here'"), (None, [1, 2], "'[1, 2]'"), (None, "Ada", "'Ada'")],
)
def test_an_extraction_that_is_not_an_object_is_refused(text, parsed, shown):
    with pytest.raises(InvalidAnswer) as refused:
        interpret(extract_task(), text, parsed=parsed)

    assert str(refused.value) == f"expected a JSON object, got {shown}"


# -- Arrow types -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string"}, pa.string()),
        ({"type": "integer"}, pa.int64()),
        ({"type": "number"}, pa.float64()),
        ({"type": "boolean"}, pa.bool_()),
        ({"type": ["integer", "null"]}, pa.int64()),
        ({"type": ["null", "boolean"]}, pa.bool_()),
        ({"type": ["string", "integer"]}, pa.string()),
        ({"type": "null"}, pa.string()),
        ({"enum": ["a", 1]}, pa.string()),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, pa.string()),
        ({"type": "widget"}, pa.string()),
        ({}, pa.string()),
        ({"type": "object"}, pa.string()),  # no properties: the object is kept as JSON text
        ({"type": "array"}, pa.list_(pa.string())),
        ({"type": "array", "items": {"type": "number"}}, pa.list_(pa.float64())),
        (
            {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": ["string", "null"]}}},
            pa.struct([("a", pa.int64()), ("b", pa.string())]),
        ),
        (
            TICKET_SCHEMA,
            pa.struct(
                [
                    ("name", pa.string()),
                    ("total", pa.float64()),
                    ("lines", pa.list_(pa.struct([("sku", pa.string()), ("qty", pa.int64())]))),
                ]
            ),
        ),
    ],
)
def test_arrow_type_of_a_schema(schema, expected):
    assert arrow_type(schema) == expected


def test_output_type_is_fixed_by_the_spec():
    assert output_type(map_task().spec) == pa.string()
    assert output_type(classify_task(["a", "b"]).spec) == pa.string()
    assert output_type(extract_task().spec) == arrow_type(TICKET_SCHEMA)


@pytest.mark.parametrize(
    ("schema", "value", "shaped"),
    [
        ({"type": "number"}, 3, 3.0),
        ({"type": "number"}, 2.5, 2.5),
        ({"type": "integer"}, 3, 3),
        ({"type": "string"}, None, None),
        ({"type": ["string", "integer"]}, 7, "7"),
        ({"type": "object"}, {"b": 1, "a": "é"}, '{"a": "é", "b": 1}'),
        ({"type": "array"}, [1, "x", {"k": None}], ["1", "x", '{"k": null}']),
        (
            {"type": "object", "properties": {"n": {"type": "number"}, "tags": {"type": "array"}}},
            {"n": 1, "extra": True},
            {"n": 1.0, "tags": None},
        ),
    ],
)
def test_arrow_value_shapes_a_valid_answer_for_its_column(schema, value, shaped):
    result = arrow_value(schema, value)

    assert result == shaped
    assert type(result) is type(shaped)


# -- assembling the output -------------------------------------------------------------------------------


def _source() -> pa.Table:
    return pa.table({"id": [1, 2, 3, 4], "body": ["a", "b", "c", "d"]})


def test_assemble_adds_the_column_in_row_order_and_drops_failed_rows():
    table = map_task(output="summary").assemble(
        _source(), ["sum a", None, "sum c", "sum d"], [True, False, True, True]
    )

    assert table.column_names == ["id", "body", "summary"]
    assert table.schema.field("summary").type == pa.string()
    assert table.to_pylist() == [
        {"id": 1, "body": "a", "summary": "sum a"},
        {"id": 3, "body": "c", "summary": "sum c"},
        {"id": 4, "body": "d", "summary": "sum d"},
    ]


def test_assemble_replaces_an_existing_output_column_in_place():
    table = pa.table({"label": [0, 0, 0], "id": [1, 2, 3]})

    out = classify_task(["a", "b"]).assemble(table, ["a", "b", "a"], [True, True, True])

    assert out.column_names == ["label", "id"]
    assert out.schema.field("label").type == pa.string()
    assert out.column("label").to_pylist() == ["a", "b", "a"]


def test_assemble_of_an_extraction_makes_a_typed_struct_column():
    values = [
        {"name": "Ada", "total": 3, "lines": [{"sku": "A1", "qty": 2}]},
        None,
        {"name": "Bo", "extra": "dropped"},
    ]

    out = extract_task(output="ticket").assemble(_source().slice(0, 3), values, [True, False, True])

    assert out.schema.field("ticket").type == arrow_type(TICKET_SCHEMA)
    assert out.column("id").to_pylist() == [1, 3]
    assert out.column("ticket").to_pylist() == [
        {"name": "Ada", "total": 3.0, "lines": [{"sku": "A1", "qty": 2}]},
        {"name": "Bo", "total": None, "lines": None},
    ]


def test_assemble_of_a_filter_keeps_the_yes_rows_only():
    out = FILTER.assemble(_source(), [True, False, None, True], [True, True, False, True])

    assert out.column_names == ["id", "body"]  # a filter adds no column
    assert out.column("id").to_pylist() == [1, 4]


def test_assemble_of_an_empty_batch():
    empty = _source().slice(0, 0)

    assert map_task().assemble(empty, [], []).num_rows == 0
    assert FILTER.assemble(empty, [], []).num_rows == 0


def test_an_answer_the_column_cannot_hold_fails_its_row_not_the_batch():
    schema = {"type": "object", "properties": {"account": {"type": "integer"}}}
    task = extract_task(schema)
    try:
        value = interpret(task, None, parsed={"account": 123456789012345678901234567890})
    except InvalidAnswer:
        return  # refused as an answer: the row alone fails (and llm_extract asks again)

    table = task.assemble(_source().slice(0, 2), [value, {"account": 1}], [True, True])
    assert table.num_rows == 2
