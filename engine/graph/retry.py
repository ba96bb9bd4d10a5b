"""Which failures of a graph node are retried: :class:`RetryPolicy` with ``retry_on``.

``RetryPolicy`` extends the pipeline's policy (attempts and backoff) with ``retry_on``: exception
types, or a predicate ``fn(exc) -> bool``. Its default, :func:`default_retry_on`, is LangGraph's:
connection errors and HTTP 5xx responses are retried; programming and data errors (``ValueError``,
``TypeError``, ``LookupError``, ``OSError``...) are not, since a second attempt would fail the same way.
One difference on purpose: a ``TimeoutError`` (which is an ``OSError``) *is* retried, because a node's
``timeout_s`` raises it and a slow call is worth another attempt. A plain ``engine.spec.models.RetryPolicy``
(what a pipeline file's ``retry:`` holds) gets the same default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ConfigDict, Field

from engine.spec.models import RetryPolicy as _SpecRetryPolicy

RetryOn = type[BaseException] | Sequence[type[BaseException]] | Callable[[BaseException], bool]

_NOT_RETRIED: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    ArithmeticError,
    ImportError,
    LookupError,
    NameError,
    SyntaxError,
    RuntimeError,
    ReferenceError,
    StopIteration,
    StopAsyncIteration,
    OSError,
)


def _status_of(exc: BaseException) -> int | None:
    # httpx, requests and the provider SDKs (openai, anthropic) carry the HTTP status on the error
    # or on its response; duck typing keeps them all optional imports
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def default_retry_on(exc: BaseException) -> bool:
    """LangGraph's default: network errors and 5xx responses yes, programming/data errors no."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    status = _status_of(exc)
    if status is not None:
        return 500 <= status < 600
    return not isinstance(exc, _NOT_RETRIED)


class RetryPolicy(_SpecRetryPolicy):
    """Attempts and backoff of a graph node, and which exceptions are worth another attempt."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retry_on: Any = Field(
        default=default_retry_on,
        exclude=True,
        description="Exception types, or a predicate of the exception; default: default_retry_on.",
    )


def should_retry(policy: _SpecRetryPolicy, exc: BaseException) -> bool:
    """Whether ``exc`` is one ``policy`` retries (a spec policy uses :func:`default_retry_on`)."""
    rule: Any = getattr(policy, "retry_on", default_retry_on)
    if isinstance(rule, type) and issubclass(rule, BaseException):
        return isinstance(exc, rule)
    if isinstance(rule, Sequence) and not isinstance(rule, str):
        if not all(isinstance(r, type) and issubclass(r, BaseException) for r in rule):
            raise TypeError(
                f"retry_on must be an Exception class, a sequence of them or a callable, got {rule!r}"
            )
        return isinstance(exc, tuple(rule))
    if not callable(rule):
        raise TypeError(
            f"retry_on must be an Exception class, a sequence of them or a callable, got {rule!r}"
        )
    return bool(rule(exc))
