"""A loopback HTTP server that speaks the Anthropic Messages API, Gemini's generateContent and OpenAI's Chat
Completions (each with its batch API).

The real ``anthropic``, ``google-genai`` and ``openai`` SDKs talk to it unchanged (point ``base_url`` at
``server.url``), so integration tests and benchmarks exercise the providers' actual HTTP path: retries,
timeouts, error mapping, connection pooling. Stdlib only, one thread per connection, latency as a sleep
so that hundreds of requests wait in parallel.

Endpoints (anything else answers 404 in the provider's error shape)::

    POST /v1/messages                          Anthropic Messages (text; tool_use when a tool is forced)
    POST /v1/messages/count_tokens             Anthropic token count
    POST /v1/messages/batches                  Message Batches: create
    GET  /v1/messages/batches/{id}             Message Batches: retrieve
    GET  /v1/messages/batches/{id}/results     Message Batches: results (JSONL)
    POST /v1/messages/batches/{id}/cancel      Message Batches: cancel
    POST /{v1,v1beta,v1alpha}/models/{model}:generateContent   Gemini (google-genai 3.x uses v1)
    POST /{v1,v1beta,v1alpha}/models/{model}:countTokens       Gemini token count
    POST /{v1,v1beta,v1alpha}/models/{model}:batchGenerateContent  Gemini batch mode: create (inlined)
    GET  /{v1,v1beta,v1alpha}/batches/{id}                     Gemini batch mode: get (with the output)
    POST /{v1,v1beta,v1alpha}/batches/{id}:cancel              Gemini batch mode: cancel
    POST /v1/chat/completions                  OpenAI Chat Completions (JSON text for response_format)
    POST /v1/files, GET /v1/files/{id}/content OpenAI Files (batch input, output and error files)
    POST /v1/batches, GET /v1/batches/{id}, POST /v1/batches/{id}/cancel    OpenAI Batch API

Faults, latency and the rate limit apply to the three inference endpoints only (messages,
generateContent, chat.completions). An OpenAI 429 from the rate limit carries the ``x-ratelimit-*``
headers OpenAI sends (no ``retry-after``); injected 429s carry ``retry-after`` as for the others.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

from tests.loopback import wire
from tests.loopback.batches import BatchStore
from tests.loopback.faults import ErrorReply, FaultKind, FaultPlan, Faults, RequestBucket
from tests.loopback.handler import HTTPServer, RecordedRequest, Reply, json_reply
from tests.loopback.openai_batches import OpenAIFiles
from tests.loopback.openai_wire import (
    OpenAIUsage,
    openai_completion,
    openai_error,
    parse_openai,
    reset_duration,
)
from tests.loopback.wire import Call, Provider, Responder

INFERENCE_ENDPOINTS = ("messages", "generateContent", "chat.completions")
_FAULT_MESSAGES = {429: "rate limit", 500: "internal error", 529: "overload"}
# Status 200 and a JSON content type, cut mid-object: the client's parser must fail.
_MALFORMED = b'{"id": "msg_malformed", "content": [{"type": "te'


class LLMServer:
    """The loopback LLM server; use it as a context manager (``with LLMServer() as server: ...``).

    Answers: a ``responder`` (called from server threads, so it must be thread-safe) maps a
    ``ResponderRequest`` to text or a JSON object, and may raise ``ErrorReply`` to fail one prompt. Without
    one, text is a pure function of the last user message, and a forced tool or Gemini JSON mode gets a
    small instance of the schema. A forced tool (``tool_choice`` ``tool`` or ``any``) answers ``tool_use``;
    ``auto`` and ``none`` answer text. Usage is ceil(chars / 4) in, ceil(answer chars / 4) out, capped at
    ``max_tokens`` / ``maxOutputTokens`` (then ``max_tokens`` / ``MAX_TOKENS`` and the text is cut). With
    ``tool_use_overhead``, Anthropic calls with tools are billed as the API bills them: plus the tool-use
    system prompt (313 input tokens when a tool is forced, 346 otherwise), and a tool call's output is its
    name and input as JSON (off by default, so the figures tests compute stay as they were).

    Knobs: ``latency_s`` before every inference answer (a sleep: waits overlap); ``faults`` injected
    deterministically; ``rpm_limit`` answers 429 beyond that many requests per minute (token bucket of
    ``rpm_burst``, one second's worth by default); batches stay ``in_progress`` for ``batch_delay_s``;
    with ``api_key`` set, any other key is refused. OpenAI only: ``openai_structured=False`` refuses a
    ``response_format`` other than text (as servers without structured output do), and ``openai_usage``
    adds cached and reasoning tokens to every answer's usage. A stopped server cannot be started again.
    """

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        responder: Responder | None = None,
        faults: Faults | None = None,
        rpm_limit: float | None = None,
        rpm_burst: int | None = None,
        batch_delay_s: float = 0.5,
        api_key: str | None = None,
        openai_structured: bool = True,
        openai_usage: OpenAIUsage | None = None,
        tool_use_overhead: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.latency_s = latency_s
        self.tool_use_overhead = tool_use_overhead
        self.responder = responder
        self.batch_delay_s = batch_delay_s
        self.api_key = api_key
        self.openai_structured = openai_structured
        self.openai_usage = openai_usage or OpenAIUsage()
        self.files = OpenAIFiles()
        self.bucket = RequestBucket(rpm_limit, rpm_burst) if rpm_limit else None
        self._plan = FaultPlan(faults or Faults())
        self._lock = threading.Lock()
        self._log: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        self.batches = BatchStore()
        self._stopping = threading.Event()
        self._httpd = HTTPServer((host, port), self)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL to give an SDK, e.g. ``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self._httpd.server_name}:{self._httpd.server_port}"

    @property
    def openai_url(self) -> str:
        """The base URL to give the ``openai`` SDK: ``url`` with ``/v1``, as OpenAI's and vLLM's read."""
        return f"{self.url}/v1"

    @property
    def faults(self) -> Faults:
        """The fault settings; assigning new ones restarts their counters and random sequence."""
        return self._plan.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._plan = FaultPlan(faults)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, in the order they were answered."""
        with self._lock:
            return list(self._log)

    def clear(self) -> None:
        """Forget the recorded requests (faults, batches and the rate limit keep their state)."""
        with self._lock:
            self._log.clear()

    def requests_per_second(
        self, *, status: int | None = 200, endpoints: tuple[str, ...] = INFERENCE_ENDPOINTS
    ) -> float:
        """The arrival rate of matching requests: (n - 1) / (last - first ``received_at``); 0 below two."""
        times = sorted(
            r.received_at
            for r in self.requests
            if r.endpoint in endpoints and (status is None or r.status == status)
        )
        if len(times) < 2 or times[-1] == times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def start(self) -> LLMServer:
        """Serve in a background daemon thread; returns the server."""
        if self._thread is None:
            # A short poll interval keeps stop() fast; it only affects the shutdown check, not requests.
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="llm-loopback",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake hanging and sleeping handlers, and close open connections. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()
        # Keep-alive connections would otherwise outlive the server in their handler threads.
        for conn in self._httpd.open_connections():
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- used by the handler

    def next_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}{next(self._ids):08d}"

    def record(self, entry: RecordedRequest) -> None:
        with self._lock:
            self._log.append(entry)

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stopping.is_set()

    def wait(self, seconds: float) -> None:
        """Sleep, but return at once when the server stops."""
        if seconds > 0:
            self._stopping.wait(seconds)

    # -- inference

    def infer(
        self,
        call: Call,
        render: Callable[[Call, wire.Answer], dict[str, Any]],
        provider: Provider,
        request_id: str,
    ) -> Reply:
        """Decide this request's fault (fail_first_n, then the rate limit, then the draw), else answer."""
        model, faults = call.request["model"], self._plan.faults
        fault = self._plan.draw()
        error, headers = self._injected_error(fault), {}
        if fault != "fail_first_n" and self.bucket is not None:
            allowed, wait_s, remaining = self.bucket.take()
            if provider == "anthropic":  # the headers Anthropic sends so clients can pace themselves
                headers = {
                    "anthropic-ratelimit-requests-limit": f"{self.bucket.rpm:g}",
                    "anthropic-ratelimit-requests-remaining": str(remaining),
                }
            elif provider == "openai":  # OpenAI's: the reset is when the next request is allowed
                headers = {
                    "x-ratelimit-limit-requests": f"{self.bucket.rpm:g}",
                    "x-ratelimit-remaining-requests": str(remaining),
                    "x-ratelimit-reset-requests": reset_duration(
                        wait_s if not allowed else 60 / self.bucket.rpm
                    ),
                }
            if not allowed:
                message = f"Rate limit of {self.bucket.rpm:g} requests per minute exceeded."
                # OpenAI says when to come back in x-ratelimit-reset-requests, not in retry-after
                after = None if provider == "openai" else wait_s
                fault, error = "rpm_limit", ErrorReply(429, message, retry_after_s=after)
        if fault == "rate_timeout":
            return Reply(0, b"", model=model, fault=fault, hang=True, delay_s=faults.hang_s)
        if fault == "rate_malformed":
            return Reply(200, _MALFORMED, model=model, fault=fault, delay_s=self.latency_s)
        if error is None:
            try:
                payload = render(call, wire.resolve_answer(call, self.responder))
            except ErrorReply as raised:
                fault, error = "responder", raised
            except Exception as exc:  # a broken responder must show up in the test, not kill the thread
                fault, error = "responder", ErrorReply(500, f"loopback responder failed: {exc!r}")
            else:
                usage = payload.get("usage") or payload.get("usageMetadata")
                return json_reply(
                    200, payload, headers=headers, model=model, usage=usage, delay_s=self.latency_s
                )
        return self.error_reply(
            provider, error, request_id=request_id, fault=fault, headers=headers, model=model
        )

    def _injected_error(self, fault: FaultKind | None) -> ErrorReply | None:
        """The error answer of an injected status fault (None for no fault, a hang or a bad body)."""
        faults = self._plan.faults
        if fault == "fail_first_n":
            status, message = faults.fail_first_status, "Injected failure (fail_first_n)."
        elif fault in ("rate_429", "rate_500", "rate_529"):
            status = int(fault[-3:])
            message = f"Injected {_FAULT_MESSAGES[status]}."
        else:
            return None
        return ErrorReply(status, message, retry_after_s=faults.retry_after_s if status == 429 else None)

    def error_reply(
        self,
        provider: Provider | Literal["unknown"],
        error: ErrorReply,
        *,
        request_id: str,
        fault: FaultKind | None = None,
        headers: dict[str, str] | None = None,
        model: str | None = None,
    ) -> Reply:
        """An error answer in the provider's shape, with ``retry-after`` when the error carries one."""
        headers = dict(headers or {})
        if error.retry_after_s is not None:
            headers["retry-after"] = f"{error.retry_after_s:g}"
        if provider == "gemini":
            # Gemini has no 529; its overload answer is 503 UNAVAILABLE.
            status = 503 if error.status == 529 else error.status
            payload = wire.gemini_error(status, error.message, error.retry_after_s, error.reason)
        elif provider == "openai":
            status = 503 if error.status == 529 else error.status  # nor has OpenAI
            payload = openai_error(status, error.message)
            headers.setdefault("x-request-id", request_id)
        else:
            status, payload = error.status, wire.anthropic_error(error.status, error.message, request_id)
        return json_reply(status, payload, headers=headers, fault=fault, model=model)

    def answer_params(self, params: Any) -> dict[str, Any]:
        """The Message answering one batch request's ``params`` (batches get no latency and no faults)."""
        call = wire.parse_anthropic(params, tool_use_overhead=self.tool_use_overhead)
        return wire.anthropic_message(
            call, wire.resolve_answer(call, self.responder), self.next_id("msg_loopback_")
        )

    def answer_openai(self, body: Any) -> dict[str, Any]:
        """The ChatCompletion answering one line of an OpenAI batch (no latency, no faults)."""
        call = parse_openai(body, structured=self.openai_structured)
        return openai_completion(
            call,
            wire.resolve_answer(call, self.responder),
            self.next_id("chatcmpl-loopback"),
            self.openai_usage,
        )

    def answer_gemini(self, request: Any, model: str) -> dict[str, Any]:
        """The GenerateContentResponse answering one inlined request of a Gemini batch (no faults)."""
        call = wire.parse_gemini(request, model)
        return wire.gemini_response(
            call, wire.resolve_answer(call, self.responder), self.next_id("loopback-")
        )
