"""Limits on what one template render may build and how long it may run.

Every way a Jinja2 template can make a string is bounded *before* the memory is spent: padding methods
(``ljust``, ``rjust``, ``center``, ``zfill``, ``expandtabs``), ``replace`` and ``join``, ``str.format``
and ``%`` widths and precisions, the ``center``, ``indent``, ``format``, ``replace``, ``join``,
``string``, ``pprint``, ``tojson``, ``batch`` and ``slice`` filters, ``~`` and the buffers behind macros
and ``{% set %}`` blocks, and the text of a list or namespace that shares itself (``[x, x]`` doubled in a
loop is small in memory and exponential as text). A render also has a step budget and a clock: every loop
iteration and every call counts, so a loop that prints nothing still stops. Breaking a limit raises
:class:`TemplateLimitError`; :mod:`engine.spec.expressions` adds the template's line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from string import Formatter
from typing import Any

from jinja2.exceptions import SecurityError
from jinja2.utils import Namespace

MAX_OUTPUT_CHARS = 4_000_000
"""The most characters a template may render, or a string or list it may build."""
MAX_STEPS = 1_000_000
"""The most loop iterations and calls one render may take."""
MAX_SECONDS = 5.0
"""The longest one render may take (a backstop for steps that are slow one by one)."""
MAX_ITEMS = 100_000
"""The most items a filter may pad a list with (``batch``, ``slice``), as Jinja2's ``range`` bound."""
MAX_JSON_INDENT = 16


class TemplateLimitError(SecurityError):
    """A render would build too much or run too long."""


@dataclass
class _Budget:
    steps: int = MAX_STEPS
    deadline: float = field(default_factory=lambda: time.monotonic() + MAX_SECONDS)

    def tick(self, n: int = 1) -> None:
        self.steps -= n
        if self.steps < 0:
            raise TemplateLimitError(
                f"the render took more than {MAX_STEPS:,} steps (loop iterations and calls)"
            )
        if self.steps % 1024 < n and time.monotonic() > self.deadline:
            raise TemplateLimitError(f"the render ran longer than {MAX_SECONDS:g} s")


_budget: ContextVar[_Budget | None] = ContextVar("headrace_template_budget", default=None)


def start_budget() -> object:
    """Give the current render a fresh budget; pass the result to :func:`end_budget`."""
    return _budget.set(_Budget())


def end_budget(token: object) -> None:
    """Restore the budget in force before :func:`start_budget`."""
    _budget.reset(token)  # type: ignore[arg-type]


def tick(n: int = 1) -> None:
    """Count ``n`` steps against the current render (no-op outside a render)."""
    budget = _budget.get()
    if budget is not None:
        budget.tick(n)


def counted(iterable: Iterable[Any]) -> Iterator[Any]:
    """``iterable`` with a step counted per item (wraps every ``{% for %}``)."""
    for item in iterable:
        tick()
        yield item


def check_size(size: int, what: str) -> None:
    """Refuse building ``size`` characters or items."""
    if size > MAX_OUTPUT_CHARS:
        raise TemplateLimitError(f"{what} makes more than {MAX_OUTPUT_CHARS:,} characters")


def text_size(value: Any, limit: int = MAX_OUTPUT_CHARS) -> int:
    """About ``len(str(value))``, counted without building it and given up past ``limit``: a list that
    holds itself twice per level is counted in full, as its text would be."""
    if isinstance(value, str):
        return len(value)
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 2 + 2 * len(item)
            stack.extend(item)
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, Namespace):
            attrs = item._Namespace__attrs  # what its repr prints
            total += 13 + 4 * len(attrs)
            stack.extend(attrs.keys())
            stack.extend(attrs.values())
        else:
            total += len(str(item)) if isinstance(item, (int, float, bool)) or item is None else 64
    return total


def text(value: Any) -> str:
    """``str(value)``, refused when it would be too long."""
    if isinstance(value, str):
        return value
    check_size(text_size(value), "printing a value")
    return str(value)


def bounded_concat(parts: Iterable[str]) -> str:
    """``"".join(parts)``, refused before joining past the limit (macros, ``{% set %}`` blocks, ``~``)."""
    kept: list[str] = []
    size = 0
    for part in parts:
        size += len(part)
        check_size(size, "joining")
        kept.append(part)
    return "".join(kept)


_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([diouxXeEfFgGcrsa%])")
_SPEC = re.compile(r"^(?:.?[<>=^])?[+\- ]?z?#?0?(\d*)[,_]?(?:\.(\d+))?[A-Za-z%]?$")


def check_printf(fmt: str, args: Any) -> None:
    """Refuse ``fmt % args`` whose widths, precisions or values would pass the limit."""
    size = len(fmt)
    for match in _PRINTF.finditer(fmt):
        width, precision, _ = match.groups()
        if "*" in (width, precision):
            raise TemplateLimitError("a `*` width or precision in a %-format is not allowed in templates")
        size += int(width or 0) + int(precision or 0)
    values = args.values() if isinstance(args, Mapping) else args if isinstance(args, tuple) else (args,)
    size += sum(text_size(v) for v in values)
    check_size(size, "%-formatting")


def check_format(fmt: str, args: Iterable[Any], kwargs: Mapping[str, Any]) -> None:
    """Refuse ``fmt.format(*args, **kwargs)`` whose widths, precisions or values would pass the limit."""
    size = len(fmt)
    try:
        fields = list(Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises the same error itself
    for _literal, name, spec, _conversion in fields:
        if name is None or not spec:
            continue
        found = _SPEC.match(spec)
        if "{" in spec or found is None:
            raise TemplateLimitError(
                f"the format spec {spec!r} is not allowed in templates (nested or unknown)"
            )
        size += int(found.group(1) or 0) + int(found.group(2) or 0)
    size += sum(text_size(v) for v in args) + sum(text_size(v) for v in kwargs.values())
    check_size(size, "str.format")


def check_str_method(
    owner: str, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[Any, ...]:
    """Refuse a ``str`` method call that would build too much; returns the arguments to call with (a
    ``join`` of an iterator is made a list here, so it is not consumed twice)."""
    if name in ("ljust", "rjust", "center", "zfill"):
        width = args[0] if args else kwargs.get("width", 0)
        if isinstance(width, int):
            check_size(max(width, len(owner)), f"str.{name}")
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            check_size(len(owner) * max(tabsize, 1), "str.expandtabs")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        check_size(_replaced_size(owner, args[0], args[1], args[2] if len(args) > 2 else -1), "str.replace")
    elif name == "join" and args:
        items = list(counted(args[0]))
        check_size(sum(text_size(i) for i in items) + len(owner) * max(len(items) - 1, 0), "str.join")
        return (items, *args[1:])
    return args


def _replaced_size(text_: str, old: str, new: str, count: Any) -> int:
    hits = text_.count(old) if old else len(text_) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text_) + hits * max(len(new) - len(old), 0)


def bounded_filters(filters: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """Jinja2's filters that can build large strings or lists, each checked before it runs."""
    original = dict(filters)

    def center(value: Any, width: int = 80) -> str:
        check_size(max(int(width), 0) + text_size(value), "|center")
        return str(original["center"](value, width))

    def indent(value: Any, width: Any = 4, first: bool = False, blank: bool = False) -> str:
        pad = len(width) if isinstance(width, str) else int(width)
        lines = text(value).count("\n") + 1
        check_size(text_size(value) + lines * max(pad, 0), "|indent")
        return str(original["indent"](value, width, first, blank))

    def format_(value: Any, *args: Any, **kwargs: Any) -> str:
        check_printf(text(value), kwargs or args)
        return str(original["format"](value, *args, **kwargs))

    def replace(eval_ctx: Any, value: Any, old: Any, new: Any, count: int | None = None) -> Any:
        check_size(_replaced_size(text(value), str(old), str(new), count), "|replace")
        return original["replace"](eval_ctx, value, old, new, count)

    def join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
        items = list(counted(value))
        check_size(sum(text_size(i) for i in items) + len(d) * max(len(items) - 1, 0), "|join")
        return str(original["join"](eval_ctx, items, d, attribute))

    def string(value: Any) -> Any:
        return original["string"](text(value))

    def pprint(value: Any) -> str:
        check_size(2 * text_size(value), "|pprint")
        return str(original["pprint"](value))

    def tojson(eval_ctx: Any, value: Any, indent: int | None = None) -> Any:
        if indent is not None and int(indent) > MAX_JSON_INDENT:
            raise TemplateLimitError(f"|tojson indent {indent} is larger than {MAX_JSON_INDENT}")
        check_size(2 * text_size(value), "|tojson")
        return original["tojson"](eval_ctx, value, indent)

    def batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
        if int(linecount) > MAX_ITEMS:
            raise TemplateLimitError(f"|batch of {linecount} is more than {MAX_ITEMS:,} items")
        return original["batch"](value, linecount, fill_with)

    def slice_(value: Any, slices: int, fill_with: Any = None) -> Any:
        if int(slices) > MAX_ITEMS:
            raise TemplateLimitError(f"|slice into {slices} is more than {MAX_ITEMS:,} lists")
        return original["slice"](value, slices, fill_with)

    wrapped: dict[str, Callable[..., Any]] = {
        "center": center,
        "indent": indent,
        "format": format_,
        "replace": replace,
        "join": join,
        "string": string,
        "pprint": pprint,
        "tojson": tojson,
        "batch": batch,
        "slice": slice_,
    }
    for name in ("replace", "join", "tojson"):  # they take Jinja2's eval context first, as the originals
        wrapped[name] = _pass_eval_context(wrapped[name])
    return {**original, **wrapped, "_headrace_steps": counted}


def _pass_eval_context(fn: Callable[..., Any]) -> Callable[..., Any]:
    from jinja2 import pass_eval_context

    return pass_eval_context(fn)


def bounded_lipsum(lipsum: Callable[..., str]) -> Callable[..., str]:
    """Jinja2's ``lipsum`` global with its paragraph count and lengths bounded."""

    def run(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        if int(n) * int(max) > 100_000:
            raise TemplateLimitError("lipsum(n, max=...) is limited to 100,000 words")
        return lipsum(n, html, min, max)

    return run
