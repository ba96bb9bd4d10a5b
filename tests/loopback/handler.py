"""The HTTP side of the loopback server: the threaded server, one handler, and the route table.

Each route maps (method, path pattern) to a handler method ``(body, match, request_id) -> Reply``; the
handler reads the body, checks the key, calls the route, waits the reply's delay, records the exchange
and writes the answer. What an answer contains is decided by ``LLMServer`` and ``wire``.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from tests.loopback import gemini_batches, openai_batches, wire
from tests.loopback import openai_wire as wire_openai
from tests.loopback.faults import ErrorReply, FaultKind
from tests.loopback.wire import Provider

if TYPE_CHECKING:
    from tests.loopback.llm_server import LLMServer

_SECRET_HEADERS = frozenset({"x-api-key", "authorization", "x-goog-api-key"})


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it; API keys are never kept, only whether one was sent."""

    provider: Provider | Literal["unknown"]
    endpoint: str  # "messages", "generateContent", "batches.create", ... (see the route table)
    method: str
    path: str  # without the query string (Gemini may send its key there)
    model: str | None
    headers: dict[str, str]  # lower-case names; key headers read "[REDACTED]"
    api_key_present: bool
    body: Any  # the parsed JSON body; None when absent or not JSON
    received_at: float  # time.monotonic() when the request line and headers had been read
    responded_at: float  # time.monotonic() when the answer was sent (the hang's start for rate_timeout)
    status: int  # 0 when the connection was closed without an answer (rate_timeout)
    usage: dict[str, Any] | None  # the usage object returned (each provider's own field names)
    fault: FaultKind | None  # what made the request fail, when it was injected
    request_id: str


@dataclass
class Reply:
    """An answer to send: status, body, headers, plus what the request log keeps about it."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    model: str | None = None
    usage: dict[str, int] | None = None
    fault: FaultKind | None = None
    delay_s: float = 0.0  # wait before answering (latency), or how long to hang
    hang: bool = False  # never answer: hold the connection for delay_s, then close it


def json_reply(status: int, payload: Any, **fields: Any) -> Reply:
    """A JSON answer."""
    return Reply(status, json.dumps(payload).encode(), **fields)


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a hanging handler must never keep the test process alive
    block_on_close = False
    request_queue_size = 1024  # the listen backlog: benchmarks open hundreds of connections at once
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: LLMServer) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS lookup that can stall without a network.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def track(self, conn: socket.socket, *, alive: bool) -> None:
        with self._connections_lock:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def open_connections(self) -> list[socket.socket]:
        with self._connections_lock:
            return list(self._connections)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or go away mid-answer are expected under fault injection and at stop().
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)) or self.owner.stopped:
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the SDKs' connection pools reuse connections
    disable_nagle_algorithm = True  # headers and body are separate writes; Nagle would add ~40 ms
    server: HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, alive=True)

    def finish(self) -> None:
        self.server.track(self.connection, alive=False)
        with contextlib.suppress(OSError):  # the client already closed the connection
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request on stderr would drown test output

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        owner = self.server.owner
        received = time.monotonic()
        split = urlsplit(self.path)
        raw = self._read_body()
        content_type = self.headers.get("content-type", "")
        try:
            if content_type.startswith("multipart/form-data"):  # OpenAI's file upload
                body: Any = openai_batches.parse_multipart(content_type, raw)
            else:
                body = json.loads(raw) if raw else None
            body_ok = True
        except (ValueError, ErrorReply):
            body, body_ok = None, False
        route, match = _find_route(self.command, split.path)
        provider: Provider | Literal["unknown"] = route.provider if route else _guess_provider(split.path)
        request_id = owner.next_id("req_loopback_")
        key = self._api_key(provider, split.query)
        try:
            if route is None or match is None:
                raise ErrorReply(404, f"Not found: {self.command} {split.path}")
            self._check_auth(route.provider, key)
            if not body_ok:
                raise ErrorReply(400, "The request body is not valid JSON.")
            reply = route.serve(self, body, match, request_id)
        except ErrorReply as error:
            reply = owner.error_reply(provider, error, request_id=request_id)
        except Exception as exc:  # a bug here must reach the test as a 500, not as a dropped connection
            traceback.print_exc()
            reply = owner.error_reply(
                provider, ErrorReply(500, f"loopback server error: {exc!r}"), request_id=request_id
            )
        reply.headers.setdefault("request-id", request_id)
        reply.headers.setdefault("x-request-id", request_id)  # OpenAI's name for it
        if not reply.hang:
            owner.wait(reply.delay_s)

        headers = {
            k.lower(): "[REDACTED]" if k.lower() in _SECRET_HEADERS else v for k, v in self.headers.items()
        }
        model = reply.model or (unquote(match["model"]) if match and "model" in match.groupdict() else None)
        owner.record(
            RecordedRequest(
                provider=provider,
                endpoint=route.endpoint if route else "unknown",
                method=self.command,
                path=split.path,
                model=model,
                headers=headers,
                api_key_present=bool(key),
                body=body,
                received_at=received,
                responded_at=time.monotonic(),
                status=reply.status,
                usage=reply.usage,
                fault=reply.fault,
                request_id=request_id,
            )
        )
        if reply.hang:
            # Hold the connection past the client's timeout, then drop it without an answer.
            owner.wait(reply.delay_s)
            self.close_connection = True
            return
        try:
            self.send_response(reply.status)
            self.send_header("content-type", reply.content_type)
            self.send_header("content-length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            self.close_connection = True  # the client gave up (its timeout) before the answer

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _api_key(self, provider: str, query: str) -> str | None:
        if provider == "gemini":
            return self.headers.get("x-goog-api-key") or next(iter(parse_qs(query).get("key", [])), None)
        # anthropic 2.x sends the key as "Authorization: Bearer"; older SDKs and curl use x-api-key.
        bearer = self.headers.get("authorization", "")
        return self.headers.get("x-api-key") or (bearer[7:] if bearer.lower().startswith("bearer ") else None)

    def _check_auth(self, provider: Provider, key: str | None) -> None:
        expected = self.server.owner.api_key
        if provider == "anthropic":
            if not key:
                raise ErrorReply(401, "x-api-key header is required")
            if expected is not None and key != expected:
                raise ErrorReply(401, "invalid x-api-key")
            if not self.headers.get("anthropic-version"):
                raise ErrorReply(400, "anthropic-version: header is required")
        elif provider == "openai":
            if not key:
                raise ErrorReply(401, "You didn't provide an API key.")
            if expected is not None and key != expected:
                raise ErrorReply(401, "Incorrect API key provided.")
        else:
            if not key:
                raise ErrorReply(403, "Method doesn't allow unregistered callers. Please use an API key.")
            if expected is not None and key != expected:
                raise ErrorReply(
                    400, "API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID"
                )

    def _base_url(self) -> str:
        return f"http://{self.headers.get('host') or self.server.owner.url.removeprefix('http://')}"

    # -- endpoints: (body, path match, request id) -> reply

    def messages(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        owner = self.server.owner
        call = wire.parse_anthropic(body, tool_use_overhead=owner.tool_use_overhead)
        render = lambda c, a: wire.anthropic_message(c, a, owner.next_id("msg_loopback_"))  # noqa: E731
        return owner.infer(call, render, "anthropic", request_id)

    def count_tokens(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        if not isinstance(body, dict):
            raise ErrorReply(400, "The request body must be a JSON object.")
        # max_tokens: the only field count_tokens does not need
        call = wire.parse_anthropic(
            {**body, "max_tokens": 1}, tool_use_overhead=self.server.owner.tool_use_overhead
        )
        return json_reply(200, {"input_tokens": call.input_tokens}, model=call.request["model"])

    def generate_content(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        owner = self.server.owner
        call = wire.parse_gemini(body, unquote(match["model"]))
        render = lambda c, a: wire.gemini_response(c, a, owner.next_id("loopback-"))  # noqa: E731
        return owner.infer(call, render, "gemini", request_id)

    def gemini_count_tokens(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        inner = body.get("generateContentRequest") or body if isinstance(body, dict) else body
        call = wire.parse_gemini(inner, unquote(match["model"]))
        return json_reply(200, {"totalTokens": call.input_tokens})

    def batch_create(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        owner = self.server.owner
        batch_id = owner.next_id("msgbatch_loopback_")
        batch, usage = owner.batches.create(body, batch_id, owner.batch_delay_s, owner.answer_params)
        return json_reply(200, owner.batches.describe(batch, self._base_url()), usage=usage)

    def batch_retrieve(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        batches = self.server.owner.batches
        return json_reply(200, batches.describe(batches.get(match["batch"]), self._base_url()))

    def batch_cancel(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        batches = self.server.owner.batches
        batch = batches.get(match["batch"])
        batches.cancel(batch)
        return json_reply(200, batches.describe(batch, self._base_url()))

    def batch_results(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        batches = self.server.owner.batches
        # The SDK asks for "application/binary"; the file itself is JSON Lines.
        return Reply(200, batches.results(batches.get(match["batch"])), content_type="application/binary")

    def chat_completions(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        owner = self.server.owner
        call = wire_openai.parse_openai(body, structured=owner.openai_structured)
        completion_id = owner.next_id("chatcmpl-loopback")
        render = lambda c, a: wire_openai.openai_completion(c, a, completion_id, owner.openai_usage)  # noqa: E731
        return owner.infer(call, render, "openai", request_id)

    def openai_file_create(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        owner = self.server.owner
        fields = body if isinstance(body, dict) else {}
        return json_reply(200, owner.files.add(owner.next_id("file-loopback"), fields))

    def openai_file_content(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        owner = self.server.owner
        data = openai_batches.result_file(owner.batches, match["file"])
        data = owner.files.content(match["file"]) if data is None else data
        return Reply(200, data, content_type="application/octet-stream")

    def openai_batch_create(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        owner = self.server.owner
        batch, usage = openai_batches.create(
            owner.batches,
            owner.files,
            body,
            owner.next_id("batch_loopback"),
            owner.batch_delay_s,
            owner.answer_openai,
        )
        return json_reply(200, openai_batches.describe(batch), usage=usage, model=batch.model)

    def openai_batch_retrieve(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        batch = self.server.owner.batches.get(match["batch"], "openai")
        return json_reply(200, openai_batches.describe(batch), model=batch.model)

    def openai_batch_cancel(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        batches = self.server.owner.batches
        batch = batches.get(match["batch"], "openai")
        batches.cancel(batch)
        return json_reply(200, openai_batches.describe(batch), model=batch.model)

    def gemini_batch_create(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        owner = self.server.owner
        batch_id = owner.next_id("loopback-batch-")
        model = unquote(match["model"])
        batch, usage = gemini_batches.create(
            owner.batches, body, model, batch_id, owner.batch_delay_s, owner.answer_gemini
        )
        return json_reply(200, gemini_batches.describe(batch), usage=usage, model=model)

    def gemini_batch_get(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        batch = self.server.owner.batches.get(match["batch"], "gemini")
        return json_reply(200, gemini_batches.describe(batch), model=batch.model)

    def gemini_batch_cancel(self, body: Any, match: re.Match[str], request_id: str) -> Reply:
        batches = self.server.owner.batches
        batch = batches.get(match["batch"], "gemini")
        batches.cancel(batch)
        return json_reply(200, {}, model=batch.model)  # google.protobuf.Empty


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    provider: Provider
    endpoint: str
    serve: Callable[[_Handler, Any, re.Match[str], str], Reply]


_GEMINI = r"/(?P<version>v1|v1beta|v1alpha)/models/(?P<model>[^/:]+)"
_GEMINI_BATCH = r"/(?P<version>v1|v1beta|v1alpha)/batches/(?P<batch>[^/:]+)"
_ROUTES = (
    # OpenAI's batch ids start with batch_: Gemini's /v1/batches/{id} route must not take them
    _Route(
        "POST", re.compile(r"/v1/chat/completions"), "openai", "chat.completions", _Handler.chat_completions
    ),
    _Route("POST", re.compile(r"/v1/files"), "openai", "files.create", _Handler.openai_file_create),
    _Route(
        "GET",
        re.compile(r"/v1/files/(?P<file>[^/]+)/content"),
        "openai",
        "files.content",
        _Handler.openai_file_content,
    ),
    _Route(
        "POST", re.compile(r"/v1/batches"), "openai", "openai.batches.create", _Handler.openai_batch_create
    ),
    _Route(
        "GET",
        re.compile(r"/v1/batches/(?P<batch>batch_[^/]+)"),
        "openai",
        "openai.batches.retrieve",
        _Handler.openai_batch_retrieve,
    ),
    _Route(
        "POST",
        re.compile(r"/v1/batches/(?P<batch>batch_[^/]+)/cancel"),
        "openai",
        "openai.batches.cancel",
        _Handler.openai_batch_cancel,
    ),
    _Route(
        "POST",
        re.compile(_GEMINI_BATCH + r":cancel"),
        "gemini",
        "batches.cancel",
        _Handler.gemini_batch_cancel,
    ),
    _Route("POST", re.compile(r"/v1/messages"), "anthropic", "messages", _Handler.messages),
    _Route(
        "POST", re.compile(r"/v1/messages/count_tokens"), "anthropic", "count_tokens", _Handler.count_tokens
    ),
    _Route("POST", re.compile(r"/v1/messages/batches"), "anthropic", "batches.create", _Handler.batch_create),
    _Route(
        "GET",
        re.compile(r"/v1/messages/batches/(?P<batch>[^/]+)"),
        "anthropic",
        "batches.retrieve",
        _Handler.batch_retrieve,
    ),
    _Route(
        "GET",
        re.compile(r"/v1/messages/batches/(?P<batch>[^/]+)/results"),
        "anthropic",
        "batches.results",
        _Handler.batch_results,
    ),
    _Route(
        "POST",
        re.compile(r"/v1/messages/batches/(?P<batch>[^/]+)/cancel"),
        "anthropic",
        "batches.cancel",
        _Handler.batch_cancel,
    ),
    _Route(
        "POST",
        re.compile(_GEMINI + r":generateContent"),
        "gemini",
        "generateContent",
        _Handler.generate_content,
    ),
    _Route(
        "POST", re.compile(_GEMINI + r":countTokens"), "gemini", "countTokens", _Handler.gemini_count_tokens
    ),
    _Route(
        "POST",
        re.compile(_GEMINI + r":batchGenerateContent"),
        "gemini",
        "batchGenerateContent",
        _Handler.gemini_batch_create,
    ),
    _Route("GET", re.compile(_GEMINI_BATCH), "gemini", "batches.get", _Handler.gemini_batch_get),
)


def _find_route(method: str, path: str) -> tuple[_Route | None, re.Match[str] | None]:
    for route in _ROUTES:
        if route.method == method and (match := route.pattern.fullmatch(path)):
            return route, match
    return None, None


def _guess_provider(path: str) -> Provider | Literal["unknown"]:
    """Whose error shape a 404 should have."""
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith(("/v1/chat/", "/v1/files", "/v1/batches")):
        return "openai"
    return "gemini" if "/models/" in path or "/batches/" in path else "unknown"
