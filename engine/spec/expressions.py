"""Prompt templates and edge conditions: Jinja2's sandbox, never Python ``eval``.

Templates see a row's columns by name and ``params``; conditions see the state's fields and ``params``.
The sandbox refuses attribute access to Python internals, so neither can become a way to run code, and
it bounds what a template can make: ``**`` with a large exponent, ``*`` or ``+`` building a string or list
past ``MAX_OUTPUT_CHARS``, and rendered output past that size are errors, not a worker out of memory.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Undefined, meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.spec.template_limits import (
    MAX_OUTPUT_CHARS,
    TemplateLimitError,
    bounded_concat,
    bounded_filters,
    bounded_lipsum,
    check_printf,
    check_size,
    check_str_method,
    end_budget,
    start_budget,
    text,
    text_size,
    tick,
)

__all__ = [
    "MAX_OUTPUT_CHARS",
    "RESERVED_NAMES",
    "TemplateLimitError",
    "condition",
    "condition_names",
    "render",
    "sandbox",
    "template_names",
    "unsafe_reads",
]

RESERVED_NAMES = frozenset(
    {"params", "row", "state", "loop", "namespace", "range", "dict", "lipsum", "cycler", "joiner"}
)
_MAX_EXPONENT = 256


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja2's code generator with ``~`` joined by the environment's bounded ``concat``."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.concat(map(environment.text, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox where nothing builds more than ``MAX_OUTPUT_CHARS`` and every loop
    iteration and call counts against the render's steps (see :mod:`engine.spec.template_limits`)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BoundedCodeGenerator
    concat = staticmethod(bounded_concat)  # macro and {% set %} buffers
    text = staticmethod(text)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = bounded_filters(self.filters)
        self.globals["lipsum"] = bounded_lipsum(self.globals["lipsum"])  # type: ignore[arg-type]

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):  # every iteration is a step, even one that prints nothing
            loop.iter = nodes.Filter(loop.iter, "_headrace_steps", [], [], None, None, lineno=loop.lineno)
        return tree

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        tick()
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > _MAX_EXPONENT:
            raise TemplateLimitError(f"exponent {right} is larger than {_MAX_EXPONENT}")
        sized = (str, list, tuple)
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, sized) and isinstance(times, int):
                    check_size(len(seq) * times, "repeating")
        if operator == "+" and isinstance(left, sized) and isinstance(right, sized):
            check_size(len(left) + len(right), "joining")
        if operator == "%" and isinstance(left, str):
            check_printf(left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        tick()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            args = check_str_method(owner, getattr(__obj, "__name__", ""), args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        is_map = value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            from engine.spec.template_limits import check_format

            if is_map:
                check_format(fmt, (), args[0] if args and isinstance(args[0], Mapping) else {})
            else:
                check_format(fmt, args, kwargs)
            return wrapped(*args, **kwargs)

        return checked


@lru_cache(maxsize=1)
def sandbox() -> ImmutableSandboxedEnvironment:
    """The one Jinja2 environment headrace renders with."""
    return _BoundedSandbox(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=_finalize
    )


def _finalize(value: Any) -> Any:
    """Refuse to print a function (``{{ body.upper }}`` would send its Python repr, with a memory address
    that differs in every process, so the response cache would never hit), or a value whose text is too
    long (a list holding itself twice per level is small in memory and exponential as text)."""
    if callable(value) and not isinstance(value, Undefined):  # Undefined raises its own, better error
        name = getattr(value, "__name__", "callable")
        raise TypeError(f"the template prints a function ({name}); call it, e.g. `{{{{ x.upper() }}}}`")
    if not isinstance(value, (str, Undefined)):
        check_size(text_size(value), "printing a value")
    return value


def template_names(source: str) -> set[str]:
    """Top-level names a template reads (raises ``jinja2.TemplateSyntaxError`` when malformed)."""
    env = sandbox()
    return set(meta.find_undeclared_variables(env.parse(source))) - RESERVED_NAMES


def unsafe_reads(source: str) -> list[tuple[str, int, int]]:
    """Python internals a template (or condition) reads, as (name, line, column) within it: dunder and
    name-mangled attributes (``x.__class__``, ``x['__globals__']``, ``x|attr('__class__')``,
    ``'{0.__class__}'.format(x)``). The sandbox refuses each when it renders, so every row would fail;
    checks report them at load time instead."""
    tree = sandbox().parse(source)
    found: list[tuple[str, int]] = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Call)):
        if isinstance(node, nodes.Getattr) and _internal(node.attr):
            found.append((node.attr, node.lineno))
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            if isinstance(node.arg.value, str) and _internal(node.arg.value):
                found.append((node.arg.value, node.lineno))
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            first = node.args[0]
            if isinstance(first, nodes.Const) and isinstance(first.value, str) and _internal(first.value):
                found.append((first.value, node.lineno))
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            receiver = node.node.node
            if node.node.attr in ("format", "format_map") and isinstance(receiver, nodes.Const):
                for part in re.findall(r"\{([^{}:!]*)", str(receiver.value)):
                    found += [(p, node.lineno) for p in re.split(r"[.\[\]]", part) if _internal(p)]
    lines = source.splitlines() or [""]
    out: list[tuple[str, int, int]] = []
    for name, line in found:
        text_line = lines[line - 1] if 0 < line <= len(lines) else ""
        col = text_line.find(name)
        while col >= 0 and (name, line, col + 1) in out:  # the same name twice on a line
            col = text_line.find(name, col + 1)
        out.append((name, line, col + 1 if col >= 0 else 1))
    return sorted(set(out), key=lambda r: (r[1], r[2]))


def _internal(name: str) -> bool:
    return name.startswith("__") or re.match(r"^_[A-Za-z]\w*__\w", name) is not None


def condition_names(expression: str) -> set[str]:
    """Top-level names a condition reads (raises ``jinja2.TemplateSyntaxError`` when malformed)."""
    env = sandbox()
    env.compile_expression(expression)  # syntax check of the expression on its own
    return set(meta.find_undeclared_variables(env.parse("{{ (" + expression + ") }}"))) - RESERVED_NAMES


def render(source: str) -> Callable[[Mapping[str, Any]], str]:
    """Compile ``source`` once; the result renders it with a mapping of names, within the limits of
    :mod:`engine.spec.template_limits` (a broken limit is a ``TemplateLimitError`` naming the line)."""
    template = sandbox().from_string(source)

    def run(names: Mapping[str, Any]) -> str:
        parts: list[str] = []
        size = 0
        token = start_budget()
        try:
            for part in template.generate(**names):  # streamed, so a runaway loop stops at the limit
                size += len(part)
                if size > MAX_OUTPUT_CHARS:
                    raise TemplateLimitError(
                        f"the template renders more than {MAX_OUTPUT_CHARS:,} characters"
                    )
                parts.append(part)
        except TemplateLimitError as exc:
            raise _at_line(exc, source) from None
        finally:
            end_budget(token)
        return "".join(parts)

    return run


def condition(expression: str) -> Callable[[Mapping[str, Any]], bool]:
    """Compile ``expression`` once; the result evaluates it to a bool, within the render limits."""
    compiled = sandbox().compile_expression(expression, undefined_to_none=False)

    def run(names: Mapping[str, Any]) -> bool:
        token = start_budget()
        try:
            return bool(compiled(**names))
        finally:
            end_budget(token)

    return run


def _at_line(exc: TemplateLimitError, source: str) -> TemplateLimitError:
    """``exc`` with the template line it was raised on (Jinja2 rewrites template frames to their line)."""
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == "<template>":
            line = lineno
    if line is None:
        return exc
    shown = source.splitlines()[line - 1].strip() if 0 < line <= len(source.splitlines()) else ""
    return TemplateLimitError(f"template line {line}: {exc}" + (f" (in `{shown[:80]}`)" if shown else ""))
