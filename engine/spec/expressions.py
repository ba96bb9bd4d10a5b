"""Prompt templates and edge conditions: Jinja2's sandbox, never Python ``eval``.

Templates see a row's columns by name and ``params``; conditions see the state's fields and ``params``.
The sandbox refuses attribute access to Python internals, so neither can become a way to run code, and
it bounds what a template can make: ``**`` with a large exponent, ``*`` or ``+`` building a string or list
past ``MAX_OUTPUT_CHARS``, and rendered output past that size are errors, not a worker out of memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Undefined, meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

RESERVED_NAMES = frozenset(
    {"params", "row", "state", "loop", "namespace", "range", "dict", "lipsum", "cycler", "joiner"}
)


MAX_OUTPUT_CHARS = 4_000_000
"""The most characters a template may render, or a string or list it may build."""
_MAX_EXPONENT = 256


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, with arithmetic that cannot exhaust memory."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > _MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is larger than {_MAX_EXPONENT}")
        sized = (str, list, tuple)
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, sized) and isinstance(times, int) and len(seq) * times > MAX_OUTPUT_CHARS:
                    raise SecurityError(f"repeating makes more than {MAX_OUTPUT_CHARS:,} items")
        joined = isinstance(left, sized) and isinstance(right, sized)
        if operator == "+" and joined and len(left) + len(right) > MAX_OUTPUT_CHARS:
            raise SecurityError(f"joining makes more than {MAX_OUTPUT_CHARS:,} items")
        return super().call_binop(context, operator, left, right)


@lru_cache(maxsize=1)
def sandbox() -> ImmutableSandboxedEnvironment:
    """The one Jinja2 environment headrace renders with."""
    return _BoundedSandbox(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=_no_callables
    )


def _no_callables(value: Any) -> Any:
    """Refuse to print a function: ``{{ body.upper }}`` would send its Python repr (with a memory address
    that differs in every process, so the response cache would never hit)."""
    if callable(value) and not isinstance(value, Undefined):  # Undefined raises its own, better error
        name = getattr(value, "__name__", "callable")
        raise TypeError(f"the template prints a function ({name}); call it, e.g. `{{{{ x.upper() }}}}`")
    return value


def template_names(source: str) -> set[str]:
    """Top-level names a template reads (raises ``jinja2.TemplateSyntaxError`` when malformed)."""
    env = sandbox()
    return set(meta.find_undeclared_variables(env.parse(source))) - RESERVED_NAMES


def condition_names(expression: str) -> set[str]:
    """Top-level names a condition reads (raises ``jinja2.TemplateSyntaxError`` when malformed)."""
    env = sandbox()
    env.compile_expression(expression)  # syntax check of the expression on its own
    return set(meta.find_undeclared_variables(env.parse("{{ (" + expression + ") }}"))) - RESERVED_NAMES


def render(source: str) -> Callable[[Mapping[str, Any]], str]:
    """Compile ``source`` once; the result renders it with a mapping of names."""
    template = sandbox().from_string(source)

    def run(names: Mapping[str, Any]) -> str:
        parts: list[str] = []
        size = 0
        for part in template.generate(**names):  # streamed, so a runaway loop stops at the limit
            size += len(part)
            if size > MAX_OUTPUT_CHARS:
                raise SecurityError(f"the template renders more than {MAX_OUTPUT_CHARS:,} characters")
            parts.append(part)
        return "".join(parts)

    return run


def condition(expression: str) -> Callable[[Mapping[str, Any]], bool]:
    """Compile ``expression`` once; the result evaluates it to a bool."""
    compiled = sandbox().compile_expression(expression, undefined_to_none=False)
    return lambda names: bool(compiled(**names))
