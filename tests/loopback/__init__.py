"""Loopback servers for tests and benchmarks: real SDKs, real HTTP, no network.

``LLMServer`` speaks the Anthropic Messages API (with Message Batches) and Gemini's generateContent (with
batch mode) on 127.0.0.1, with deterministic answers, token usage, latency, injected faults and a rate limit::

    with LLMServer(latency_s=0.05, faults=Faults(rate_429=0.1, seed=1)) as server:
        client = anthropic.Anthropic(api_key="test-key", base_url=server.url)
        ...
        assert all(r.api_key_present for r in server.requests)
"""

from __future__ import annotations

from tests.loopback.faults import ErrorReply, Faults
from tests.loopback.handler import RecordedRequest
from tests.loopback.llm_server import LLMServer
from tests.loopback.schema import schema_instance
from tests.loopback.wire import Responder, ResponderRequest

__all__ = [
    "ErrorReply",
    "Faults",
    "LLMServer",
    "RecordedRequest",
    "Responder",
    "ResponderRequest",
    "schema_instance",
]
