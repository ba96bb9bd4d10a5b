"""Prompt templates and edge conditions: Jinja2's sandbox, never Python ``eval``.

Templates see a row's columns by name and ``params``; conditions see the state's fields and ``params``.
The sandbox refuses attribute access to Python internals, so neither can become a way to run code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Undefined, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

RESERVED_NAMES = frozenset(
    {"params", "row", "state", "loop", "namespace", "range", "dict", "lipsum", "cycler", "joiner"}
)


@lru_cache(maxsize=1)
def sandbox() -> ImmutableSandboxedEnvironment:
    """The one Jinja2 environment headrace renders with."""
    return ImmutableSandboxedEnvironment(
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
    return lambda names: template.render(**names)


def condition(expression: str) -> Callable[[Mapping[str, Any]], bool]:
    """Compile ``expression`` once; the result evaluates it to a bool."""
    compiled = sandbox().compile_expression(expression, undefined_to_none=False)
    return lambda names: bool(compiled(**names))
