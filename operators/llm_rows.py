"""What an LLM node does to one row: the request it sends, how it reads the answer, the column it adds.

Pure functions of the node's spec, with no I/O: the runtime's actor pool owns the calls (cache, rate
limits, budgets, retries, fallbacks) and asks a ``RowTask`` what to send and whether an answer is usable.
An unusable answer raises ``InvalidAnswer``; its message is fed back to the model on the next attempt
(``llm_extract``) and, when attempts run out, it is the row's error in the dead-letter file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
import pyarrow as pa

from engine.spec.expressions import render
from operators.llm import LlmClassify, LlmExtract, LlmFilter, LlmMap, LlmReduce, LlmSpec
from operators.providers.base import LlmRequest

MAX_PROMPT_CHARS = 2_000_000
"""A rendered prompt longer than this (about 500k tokens) fails its row instead of being sent."""

_YES_NO = ("yes", "no")


class InvalidAnswer(ValueError):
    """The model answered, but not in a form the node can use."""


@dataclass(frozen=True)
class Target:
    """Where a request goes: a provider and a model (the node's own, or a fallback's)."""

    provider: str
    model: str


class RowTask:
    """The request for a row and the reading of its answer, for one LLM node."""

    def __init__(self, spec: LlmSpec, params: Mapping[str, Any]) -> None:
        self.spec = spec
        self._prompt = render(spec.prompt)
        self._system = render(spec.system) if spec.system else None
        self._params = dict(params)

    @property
    def max_attempts(self) -> int:
        """Answers tried per row before it fails (only ``llm_extract`` retries a wrong answer)."""
        return self.spec.max_attempts if isinstance(self.spec, LlmExtract) else 1

    def request(self, row: Mapping[str, Any], target: Target, feedback: Sequence[str] = ()) -> LlmRequest:
        """The request for ``row``; ``feedback`` lists why earlier answers were refused."""
        context = {**row, "params": self._params, "row": row}
        prompt = self._prompt(context)
        if feedback:
            prompt += (
                "\n\nYour previous answer was not accepted: "
                + "; ".join(feedback)
                + "\nAnswer again, following the required format exactly."
            )
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidAnswer(
                f"the rendered prompt has {len(prompt):,} characters, more than {MAX_PROMPT_CHARS:,}"
            )
        spec = self.spec
        labels: tuple[str, ...] | None = None
        schema: dict[str, Any] | None = None
        if isinstance(spec, LlmClassify):
            labels = tuple(spec.labels)
        elif isinstance(spec, LlmFilter):
            labels = _YES_NO
        elif isinstance(spec, LlmExtract):
            schema = dict(spec.output_schema)
        return LlmRequest(
            provider=target.provider,
            model=target.model,
            prompt=prompt,
            max_tokens=spec.max_tokens,
            system=self._system(context) if self._system else None,
            temperature=spec.temperature,
            output_schema=schema,
            labels=labels,
            timeout_s=spec.timeout_s,
        )

    def interpret(self, request: LlmRequest, text: str | None, parsed: Any, stop_reason: str | None) -> Any:
        """The column value of an answer, or ``InvalidAnswer`` saying what is wrong with it."""
        spec = self.spec
        if isinstance(spec, (LlmMap, LlmReduce)):
            if stop_reason == "max_tokens":
                raise InvalidAnswer(
                    f"the answer was cut at max_tokens ({spec.max_tokens}); "
                    "raise `max_tokens` to keep it whole"
                )
            if text is None:
                raise InvalidAnswer("the answer has no text")
            return text
        if isinstance(spec, (LlmClassify, LlmFilter)):
            labels = request.labels or ()
            answer = parsed if isinstance(parsed, str) else text
            label = _match_label(answer, labels)
            if label is None:
                raise InvalidAnswer(f"answered {_short(answer)!r}, which is not one of {list(labels)}")
            return label == "yes" if isinstance(spec, LlmFilter) else label
        if isinstance(spec, LlmExtract):
            if not isinstance(parsed, dict):
                raise InvalidAnswer(
                    f"expected a JSON object, got {_short(parsed if parsed is not None else text)!r}"
                )
            problem = jsonschema.exceptions.best_match(
                jsonschema.Draft202012Validator(spec.output_schema).iter_errors(parsed)
            )
            if problem is not None:
                where = "/".join(str(p) for p in problem.absolute_path) or "the answer"
                raise InvalidAnswer(f"{where}: {problem.message}")
            try:  # valid JSON may still not fit the column (an integer past 64 bits)
                pa.array([arrow_value(spec.output_schema, parsed)], type=output_type(spec))
            except (OverflowError, pa.ArrowException) as exc:
                raise InvalidAnswer(f"the answer does not fit the output column: {exc}") from None
            return parsed
        raise TypeError(f"no row task for op {spec.op!r}")

    def assemble(self, table: pa.Table, values: Sequence[Any], ok: Sequence[bool]) -> pa.Table:
        """``table`` with the answers added (or, for ``llm_filter``, the rows judged yes); rows whose
        ``ok`` is False are dropped (they failed and go to the node's error policy)."""
        keep = pa.array(ok, type=pa.bool_())
        spec = self.spec
        if isinstance(spec, LlmFilter):
            judged = pa.array([bool(v) and k for v, k in zip(values, ok, strict=True)], type=pa.bool_())
            return table.filter(judged)
        schema = spec.output_schema if isinstance(spec, LlmExtract) else None
        cells = [
            (arrow_value(schema, v) if schema is not None else v) if k else None
            for v, k in zip(values, ok, strict=True)
        ]
        column = pa.array(cells, type=output_type(spec))
        output = spec.output  # type: ignore[attr-defined]
        if output in table.column_names:
            table = table.set_column(table.column_names.index(output), output, column)
        else:
            table = table.append_column(output, column)
        return table.filter(keep)


def output_type(spec: LlmSpec) -> pa.DataType:
    """The Arrow type of the node's output column (fixed by the spec, so every part file agrees)."""
    if isinstance(spec, LlmExtract):
        return arrow_type(dict(spec.output_schema))
    return pa.string()


def arrow_type(schema: Mapping[str, Any]) -> pa.DataType:
    """An Arrow type for values valid under a JSON Schema; anything it cannot pin down is JSON text."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind == "object":
        props = schema.get("properties")
        if isinstance(props, Mapping) and props:
            return pa.struct([pa.field(name, arrow_type(sub)) for name, sub in props.items()])
        return pa.string()
    if kind == "array":
        items = schema.get("items")
        return pa.list_(arrow_type(items) if isinstance(items, Mapping) else pa.string())
    return {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}.get(
        kind or "", pa.string()
    )


def arrow_value(schema: Mapping[str, Any], value: Any) -> Any:
    """``value`` shaped for ``arrow_type(schema)``: parts the type cannot hold become JSON text."""
    kind = arrow_type(schema)
    if pa.types.is_struct(kind) and isinstance(value, Mapping):
        props = schema.get("properties") or {}
        return {name: arrow_value(sub, value.get(name)) for name, sub in props.items()}
    if pa.types.is_list(kind) and isinstance(value, list):
        items = schema.get("items")
        return [arrow_value(items, v) if isinstance(items, Mapping) else _text(v) for v in value]
    if pa.types.is_string(kind) and value is not None and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if pa.types.is_floating(kind) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _text(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _match_label(answer: Any, labels: Sequence[str]) -> str | None:
    """The label an answer names: exact first, then ignoring case, surrounding space and punctuation."""
    if not isinstance(answer, str):
        return None
    if answer in labels:
        return answer
    cleaned = answer.strip().strip(".!\"'`").strip().casefold()
    matches = [label for label in labels if label.casefold() == cleaned]
    return matches[0] if len(matches) == 1 else None


def _short(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
