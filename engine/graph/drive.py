"""Driving the graph's async core from sync code: a per-thread event loop, or a helper thread's.

Sync entry points (``invoke``, ``stream``, ``resume``) drive the async core on a per-thread event loop
kept for the thread's lifetime (cheap for many small invocations); called from inside a running loop
they drive it on a private loop in a helper thread instead, so node code then runs in that thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_local = threading.local()
_helper_lock = threading.Lock()
_helper: asyncio.AbstractEventLoop | None = None


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop


def _helper_loop() -> asyncio.AbstractEventLoop:
    """A private loop in a daemon thread, for sync calls made while a loop runs in this thread."""
    global _helper
    with _helper_lock:
        if _helper is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="headrace-graph", daemon=True).start()
            _helper = loop
        return _helper


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def drive(coro: Awaitable[T]) -> T:
    if _in_loop():
        return asyncio.run_coroutine_threadsafe(_as_coro(coro), _helper_loop()).result()
    return _thread_loop().run_until_complete(coro)


async def _as_coro(aw: Awaitable[T]) -> T:
    return await aw


def iterate(agen: AsyncIterator[T]) -> Iterator[T]:
    nested = _in_loop()
    loop = _helper_loop() if nested else _thread_loop()

    def step(aw: Awaitable[Any]) -> Any:
        if nested:
            return asyncio.run_coroutine_threadsafe(_as_coro(aw), loop).result()
        return loop.run_until_complete(aw)

    try:
        while True:
            try:
                yield step(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            step(aclose())
