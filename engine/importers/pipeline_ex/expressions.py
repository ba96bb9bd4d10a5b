"""pipeline_ex's expression languages as its runtime evaluates them, for imported workflows.

Three small languages live in a pipeline_ex workflow, each evaluated at run time against the results of
earlier steps (``steps``, pipeline_ex's ``context.results``) and the variables ``set_variable`` wrote:

- conditions (``condition:`` of a step, a ``while_loop``'s condition, ``Pipeline.Condition.Engine``):
  a dotted path is truthy-tested, comparisons (``== != > < >= <=``, ``contains``, ``matches``,
  ``between A and B``) compare resolved values, ``and``/``or``/``not`` mappings and lists (an implicit
  ``and``) combine them, and ``length(x)`` / ``x.length`` count;
- ``{{ path }}`` templates in any string of a step (``VariableEngine``): ``steps.NAME.FIELD``,
  ``inputs.X``, ``loop.item``, a loop's iterator name, ``state.X`` or a bare variable name; a template
  that resolves to nothing stays as written, as pipeline_ex leaves it;
- prompt parts (``Pipeline.PromptBuilder``): ``static``, ``file`` and ``previous_response`` (the whole
  result as pretty JSON, or one ``extract``-ed field; a missing field is an error unless ``strict: false``),
  joined with newlines.

The semantics are taken from pipeline_ex's source (not its documentation, which promises more), so a
converted workflow decides and renders as the original did.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Scope", "build_prompt", "evaluate_condition", "interpolate", "resolve_path", "truthy"]

_TEMPLATE = re.compile(r"\{\{([^}]+)\}\}")
_WHOLE_TEMPLATE = re.compile(r"^\{\{([^}]+)\}\}$")
_COMPARATORS = (" between ", " >= ", " <= ", " == ", " != ", " > ", " < ", " contains ", " matches ")


class Scope:
    """What an expression can read: step results, variables, a nested run's inputs and the loop frame."""

    def __init__(
        self,
        steps: Mapping[str, Any],
        variables: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
        loop: Mapping[str, Any] | None = None,
    ) -> None:
        self.steps = steps
        self.variables = variables or {}
        self.inputs = inputs or {}
        self.loop = loop or {}

    def lookup(self, expression: str) -> Any:
        """The value of a dotted path as pipeline_ex's VariableEngine resolves it; None when absent."""
        expression = expression.strip()
        head, _, rest = expression.partition(".")
        parts = rest.split(".") if rest else []
        if head == "steps" and parts:
            result = self.steps.get(parts[0])
            if result is None:
                return None
            found = _dig(result, parts[1:])
            if found is None and isinstance(result, Mapping) and "result" in result:
                found = _dig(result["result"], parts[1:])
            if found is None and parts[1:] == ["result"]:
                return result
            return found
        if head == "inputs":
            return _dig(self.inputs, parts)
        if head in ("state", "global_vars"):
            return _dig(self.variables, parts)
        if head == "loop" and self.loop:
            return _dig(self.loop, parts)
        iterator = self.loop.get("iterator")
        if iterator and head == iterator:
            return _dig(self.loop.get("item"), parts)
        if head in self.variables:
            return _dig(self.variables[head], parts)
        return None


def _dig(value: Any, parts: Sequence[str]) -> Any:
    for part in parts:
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
        if value is None:
            return None
    return value


def resolve_path(results: Mapping[str, Any], path: str) -> Any:
    """``STEP.FIELD.SUB`` in step results, as pipeline_ex's condition engine reads it (None when absent)."""
    parts = path.strip().split(".")
    return _dig(results.get(parts[0]), parts[1:]) if parts[0] in results else None


def truthy(value: Any) -> bool:
    """pipeline_ex's truthiness: nil, false, "", [] and {} are false; everything else (0 too) is true."""
    return not (value is None or value is False or value == "" or value == [] or value == {})


def interpolate(value: Any, scope: Scope) -> Any:
    """``{{ path }}`` templates resolved in every string of ``value`` (mappings and lists too).

    A string that is one whole template keeps the resolved value's type (a list stays a list); inside
    text a value is printed (mappings and lists as JSON). Unresolved templates stay as written.
    """
    if isinstance(value, str):
        whole = _WHOLE_TEMPLATE.match(value.strip())
        if whole:
            found = scope.lookup(whole.group(1))
            return value if found is None else found

        def one(match: re.Match[str]) -> str:
            found = scope.lookup(match.group(1))
            if found is None:
                return match.group(0)
            return found if isinstance(found, str) else _text(found)

        return _TEMPLATE.sub(one, value)
    if isinstance(value, Mapping):
        return {k: interpolate(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, scope) for v in value]
    return value


def _text(value: Any) -> str:
    if isinstance(value, (Mapping, list)):
        return json.dumps(value, indent=2)
    if value is True or value is False:
        return "true" if value else "false"
    return "nil" if value is None else str(value)


def build_prompt(parts: Sequence[Mapping[str, Any]], scope: Scope, base_dir: str) -> str:
    """The prompt text of ``parts`` (each part's text joined with a newline, as PromptBuilder does)."""
    texts: list[str] = []
    for part in parts:
        kind = part.get("type")
        if kind == "static":
            texts.append(str(interpolate(part.get("content") or "", scope)))
        elif kind == "file":
            path = Path(str(part["path"]))
            path = path if path.is_absolute() else Path(base_dir) / path
            try:
                texts.append(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise FileNotFoundError(f"prompt file {path}: {exc.strerror or exc}") from None
        elif kind == "previous_response":
            step = str(part["step"])
            if step not in scope.steps:
                raise KeyError(f"previous_response names step {step!r}, which has no result yet")
            result = scope.steps[step]
            extract = part.get("extract")
            if extract:
                found = _dig(result, str(extract).split("."))
                if found is None and part.get("strict", True):
                    fields = ", ".join(result) if isinstance(result, Mapping) else "none"
                    raise KeyError(
                        f"field {extract!r} not found in the result of step {step!r}; fields: {fields}"
                    )
                texts.append(found if isinstance(found, str) else _text(found))
            else:
                texts.append(result if isinstance(result, str) else _text(result))
        else:
            texts.append("")  # PromptBuilder's catch-all: an unknown part adds an empty line
    return "\n".join(texts)


# -- conditions ------------------------------------------------------------------------------------


def evaluate_condition(condition: Any, results: Mapping[str, Any]) -> bool:
    """A pipeline_ex condition (a string, an ``and``/``or``/``not`` mapping, or a list) over step results."""
    if condition is None:
        return True
    if isinstance(condition, list):
        return all(evaluate_condition(c, results) for c in condition)
    if isinstance(condition, Mapping):
        if "and" in condition:
            return all(evaluate_condition(c, results) for c in condition["and"])
        if "or" in condition:
            return any(evaluate_condition(c, results) for c in condition["or"])
        if "not" in condition:
            return not evaluate_condition(condition["not"], results)
        return False
    return _simple(str(condition).strip(), results)


def _simple(expression: str, results: Mapping[str, Any]) -> bool:
    for operator in _COMPARATORS:
        if operator in expression:
            left, right = expression.split(operator, 1)
            left_value = _value(left, results)
            if operator == " between ":
                low, sep, high = right.partition(" and ")
                if not sep:
                    return False
                lo, hi = _value(low, results), _value(high, results)
                return _ordered(lo, left_value) and _ordered(left_value, hi)
            return _compare(left_value, _value(right, results), operator.strip())
    return truthy(_value(expression, results))


def _ordered(low: Any, high: Any) -> bool:
    try:
        return bool(low <= high)
    except TypeError:
        return False


def _compare(left: Any, right: Any, operator: str) -> bool:
    if operator == "==":
        return bool(left == right)
    if operator == "!=":
        return bool(left != right)
    if operator == "contains":
        if isinstance(left, str) and isinstance(right, str):
            return right in left
        return isinstance(left, list) and right in left
    if operator == "matches":
        if not (isinstance(left, str) and isinstance(right, str)):
            return False
        try:
            return re.search(right, left) is not None
        except re.error:
            return False
    both_numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right))
    if not (both_numbers or (isinstance(left, str) and isinstance(right, str))):
        return False  # pipeline_ex compares numbers with numbers and strings with strings only
    return {">": left > right, "<": left < right, ">=": left >= right, "<=": left <= right}[operator]


def _value(text: str, results: Mapping[str, Any]) -> Any:
    text = text.strip()
    call = re.fullmatch(r"length\((.*)\)", text)
    if call:
        return _length(_value(call.group(1), results))
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d+", text):
        return float(text)
    literals = {"true": True, "false": False, "null": None}
    if text in literals:
        return literals[text]
    if text.endswith(".length"):
        return _length(resolve_path(results, text[: -len(".length")]))
    return resolve_path(results, text)


def _length(value: Any) -> int:
    return len(value) if isinstance(value, (list, str, Mapping)) else 0
