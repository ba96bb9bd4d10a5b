"""Request bodies the service will read: at most ``max_bytes`` (``413``), arriving within ``read_timeout_s``
(``408``), so a huge or a trickled body costs the server bounded memory and one idle coroutine, never
another client's time (uvicorn serves every connection on one event loop; a body is only read as fast
as it arrives, without blocking the others).

An ASGI middleware: a ``Content-Length`` above the limit is refused before a byte is read; a chunked
body is counted as it arrives and refused when it passes the limit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
DEFAULT_READ_TIMEOUT_S = 30.0


class _Refused(HTTPException):
    """An HTTP error, so that a route reading the body answers it as such (FastAPI re-raises these)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail, headers={"Connection": "close"})
        self.status = status


class BodyGuard:
    """ASGI middleware bounding request bodies in size and in time (see the module's docstring)."""

    def __init__(
        self,
        app: _ASGIApp,
        max_bytes: int = DEFAULT_MAX_BYTES,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _answer(send, 413, self._too_large(declared))
            return
        seen = 0
        started = False

        async def guarded_receive() -> _Message:
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout_s)
            except asyncio.TimeoutError:
                raise _Refused(
                    408, f"the request body did not arrive within {self.read_timeout_s:g}s; send it whole"
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _Refused(413, self._too_large(seen))
            return message

        async def tracking_send(message: _Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except _Refused as refused:
            if started:
                raise
            await _answer(send, refused.status, str(refused.detail))

    def _too_large(self, size: int) -> str:
        return (
            f"the request body ({size} bytes or more) passes this server's limit of {self.max_bytes} bytes; "
            "give a large pipeline as a `path` on the server instead of its text"
        )


def _content_length(scope: _Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _answer(send: _Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
