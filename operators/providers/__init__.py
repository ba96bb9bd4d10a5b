"""LLM providers: one async ``call`` per request, behind a registry (``get_provider``).

Built-ins: ``anthropic`` (Claude, ``anthropic`` SDK), ``gemini`` (``google-genai``), ``offline``
(deterministic, no network) and ``replay`` (answers recorded to a JSONL file). Third parties add providers
through the ``headrace.providers`` entry point group. The SDK providers are imported on first use.

``anthropic`` and ``gemini`` are also ``BatchProvider``s: many requests as one asynchronous batch, at the
provider's batch price (opt-in: check ``isinstance(provider, BatchProvider)``), and ``TokenCounter``s:
they count a request's input tokens without answering it (``isinstance(provider, TokenCounter)``).
"""

from __future__ import annotations

from operators.providers.base import (
    BatchProvider,
    BatchStatus,
    LlmRequest,
    LlmResponse,
    Provider,
    TokenCounter,
)
from operators.providers.errors import (
    BadResponse,
    ConnectionFailed,
    KeyRejected,
    ProviderConfigError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    RecordingMissing,
    RequestRejected,
    ServerError,
)
from operators.providers.registry import available_providers, get_provider, register_provider

__all__ = [
    "BadResponse",
    "BatchProvider",
    "BatchStatus",
    "ConnectionFailed",
    "KeyRejected",
    "LlmRequest",
    "LlmResponse",
    "Provider",
    "ProviderConfigError",
    "ProviderError",
    "ProviderTimeout",
    "RateLimited",
    "RecordingMissing",
    "RequestRejected",
    "ServerError",
    "TokenCounter",
    "available_providers",
    "get_provider",
    "register_provider",
]
