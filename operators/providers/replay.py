"""The ``replay`` provider: record a real provider's answers to a JSONL file, then answer from it for free.

Config::

    path: recordings/triage.jsonl      # one JSON object per line: {"key", "request", "response"}
    mode: record                       # record: answer from the file, call `provider` on a miss and append
                                       # replay: answer from the file only; a miss is RecordingMissing
    provider: anthropic                # the provider recorded (its name is part of every key)
    provider_config: {...}             # that provider's config (record mode only)

Keys are ``LlmRequest.fingerprint()`` of the request as the wrapped provider sees it (``provider`` set to
the wrapped provider's name), so a recording made by a node on ``anthropic`` replays for the same node on
``replay``. The file is JSON, never pickle: it is safe to commit, diff and share. Lines are appended with one
``write`` on a file opened in append mode, so concurrent writers on one machine do not interleave lines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from operators.providers.base import ConfigReader, LlmRequest, LlmResponse, Provider
from operators.providers.errors import ProviderConfigError, RecordingMissing

NAME = "replay"
Mode = Literal["record", "replay"]


class ReplayProvider:
    """Answers from recordings, and (in ``record`` mode) records what the wrapped provider answers."""

    def __init__(
        self,
        path: str | Path,
        *,
        target: str,
        mode: Mode = "replay",
        inner: Provider | None = None,
    ) -> None:
        if mode not in ("record", "replay"):
            raise ProviderConfigError(f"mode must be 'record' or 'replay', got {mode!r}", provider=NAME)
        if mode == "record" and inner is None:
            raise ProviderConfigError("record mode needs the provider to record", provider=NAME)
        self.path = Path(path)
        self.target = target
        self.mode = mode
        self._inner = inner
        self._recordings: dict[str, LlmResponse] | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"ReplayProvider(path={str(self.path)!r}, target={self.target!r}, mode={self.mode!r})"

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], build: Callable[[str, Mapping[str, Any]], Provider]
    ) -> ReplayProvider:
        """Build from a config; ``build`` makes the wrapped provider (the registry's ``get_provider``)."""
        reader = ConfigReader(NAME, config, frozenset({"path", "mode", "provider", "provider_config"}))
        path, target = config.get("path"), config.get("provider")
        if not isinstance(path, str) or not path:
            raise ProviderConfigError("`path` (the recordings file) is required", provider=NAME)
        if not isinstance(target, str) or not target or target == NAME:
            raise ProviderConfigError("`provider` (the provider recorded) is required", provider=NAME)
        mode = reader.config.get("mode", "replay")
        inner_config = config.get("provider_config") or {}
        if not isinstance(inner_config, Mapping):
            raise ProviderConfigError("`provider_config` must be a mapping", provider=NAME)
        inner = build(target, inner_config) if mode == "record" else None
        return cls(path, target=target, mode=mode, inner=inner)

    def key(self, request: LlmRequest) -> str:
        """The recording key of ``request``: its fingerprint as the wrapped provider would see it."""
        return dataclasses.replace(request, provider=self.target).fingerprint()

    def _load(self) -> dict[str, LlmResponse]:
        if self._recordings is None:
            recordings: dict[str, LlmResponse] = {}
            if self.path.exists():
                with self.path.open(encoding="utf-8") as lines:
                    for number, line in enumerate(lines, 1):
                        if not line.strip():
                            continue
                        try:
                            entry = json.loads(line)
                            recordings[entry["key"]] = LlmResponse.from_json(entry["response"])
                        except (ValueError, KeyError, TypeError) as exc:
                            raise ProviderConfigError(
                                f"{self.path}:{number}: not a recording ({exc}); re-record or delete it",
                                provider=NAME,
                            ) from None
            self._recordings = recordings
        return self._recordings

    async def call(self, request: LlmRequest) -> LlmResponse:
        """Answer from the recordings; in record mode, call the wrapped provider on a miss and record it."""
        key = self.key(request)
        recorded = self._load().get(key)
        if recorded is not None:
            return dataclasses.replace(recorded, source="replay", latency_s=0.0)
        if self._inner is None:
            raise RecordingMissing(
                f"no recording of request {key} ({self.target} {request.model!r}) in {self.path}; "
                "run once with `mode: record` to record it",
                provider=NAME,
            )
        response = await self._inner.call(dataclasses.replace(request, provider=self.target))
        async with self._lock:  # one writer per provider; concurrent calls of one request record once
            if key not in self._load():
                self._append(key, request, response)
                self._load()[key] = response
        return response

    def _append(self, key: str, request: LlmRequest, response: LlmResponse) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entry = {
            "key": key,
            "request": dataclasses.replace(request, provider=self.target).to_json(),
            "response": response.to_json(),
        }
        line = json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as out:
            out.write(line)

    async def close(self) -> None:
        """Close the wrapped provider, if any."""
        if self._inner is not None:
            await self._inner.close()
