"""Batches as the loopback server keeps them: in progress for a delay, then ended.

``BatchStore`` holds the batches of both providers (Gemini's shapes are in ``gemini_batches``); this module
also builds Anthropic's Message Batches. Shapes follow the installed SDK's models
(``anthropic/types/messages/message_batch*.py``): a MessageBatch with ``request_counts`` and a
``results_url`` once ended; results are JSONL lines of
``{"custom_id": ..., "result": {"type": "succeeded", "message": {...}}}`` (or ``errored`` / ``canceled``).
Every request is answered when the batch is created; the delay only decides when that becomes visible.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from tests.loopback import wire
from tests.loopback.faults import ErrorReply
from tests.loopback.wire import Provider


@dataclass
class Batch:
    """One batch: its results are fixed at creation; ``ready_at`` (monotonic) is when it ends."""

    id: str
    created_at: datetime
    ended_at: datetime
    ready_at: float
    lines: list[dict[str, Any]]  # one result per request, in request order, in the provider's shape
    canceled_at: datetime | None = None
    provider: Provider = "anthropic"
    model: str | None = None  # Gemini batches are for one model, named in the create URL
    source: str = ""  # an OpenAI batch's input file id

    def ended(self) -> bool:
        """Whether processing has ended (the delay passed, or the batch was canceled)."""
        return self.canceled_at is not None or time.monotonic() >= self.ready_at


def iso(moment: datetime) -> str:
    """A UTC timestamp as both APIs write it (RFC 3339 with a ``Z``)."""
    return moment.isoformat().replace("+00:00", "Z")


class BatchStore:
    """The batches created on one server. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batches: dict[str, Batch] = {}

    def create(
        self, body: Any, batch_id: str, delay_s: float, answer: Callable[[Any], dict[str, Any]]
    ) -> tuple[Batch, dict[str, int]]:
        """Create a batch, answering each request's ``params`` with ``answer`` (a Message, or ErrorReply).

        Returns the batch and the summed usage of its answers.
        """
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            raise ErrorReply(400, "requests: at least one request is required")
        ids = [r.get("custom_id") if isinstance(r, dict) else None for r in requests]
        if not all(isinstance(i, str) and i for i in ids) or len(set(ids)) != len(ids):
            raise ErrorReply(400, "requests: every request needs a unique, non-empty custom_id")
        lines, usage = [], {"input_tokens": 0, "output_tokens": 0}
        for custom_id, item in zip(ids, requests, strict=True):
            # A request whose params are invalid ends as "errored", as on the real API.
            try:
                message = answer(item.get("params"))
                result: dict[str, Any] = {"type": "succeeded", "message": message}
                for key in usage:
                    usage[key] += message["usage"][key]
            except ErrorReply as error:
                result = {"type": "errored", "error": wire.anthropic_error(error.status, error.message, None)}
            lines.append({"custom_id": custom_id, "result": result})
        return self.add(batch_id, delay_s, lines), usage

    def add(
        self,
        batch_id: str,
        delay_s: float,
        lines: list[dict[str, Any]],
        *,
        provider: Provider = "anthropic",
        model: str | None = None,
    ) -> Batch:
        """Keep a new batch of already answered requests; it ends ``delay_s`` from now."""
        now = datetime.now(timezone.utc)
        ready_at = time.monotonic() + delay_s
        batch = Batch(batch_id, now, now + timedelta(seconds=delay_s), ready_at, lines, None, provider, model)
        with self._lock:
            self._batches[batch.id] = batch
        return batch

    def get(self, batch_id: str, provider: Provider = "anthropic") -> Batch:
        """The ``provider``'s batch with this id, or a 404 ``ErrorReply``."""
        with self._lock:
            found = self._batches.get(batch_id)
        if found is None or found.provider != provider:
            kind = "Message batch" if provider == "anthropic" else "Batch"
            raise ErrorReply(404, f"{kind} {batch_id!r} not found.")
        return found

    def cancel(self, batch: Batch) -> None:
        """Cancel a batch still in progress: it ends at once, and none of its requests is answered.

        An Anthropic batch's lines become ``canceled``; a Gemini batch shows no output once canceled.
        """
        with self._lock:
            if not batch.ended():
                batch.canceled_at = batch.ended_at = datetime.now(timezone.utc)
                if batch.provider == "anthropic":
                    batch.lines = [
                        {"custom_id": ln["custom_id"], "result": {"type": "canceled"}} for ln in batch.lines
                    ]

    def describe(self, batch: Batch, base_url: str) -> dict[str, Any]:
        """The MessageBatch object as it stands now; ``results_url`` is absolute, as the SDK expects."""
        ended = batch.ended()
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        for line in batch.lines:
            counts[line["result"]["type"] if ended else "processing"] += 1
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": counts,
            "created_at": iso(batch.created_at),
            "expires_at": iso(batch.created_at + timedelta(hours=24)),
            "ended_at": iso(batch.ended_at) if ended else None,
            "archived_at": None,
            "cancel_initiated_at": iso(batch.canceled_at) if batch.canceled_at else None,
            "results_url": f"{base_url}/v1/messages/batches/{batch.id}/results" if ended else None,
        }

    def results(self, batch: Batch) -> bytes:
        """The JSONL results file; a 400 ``ErrorReply`` while the batch is in progress."""
        if not batch.ended():
            raise ErrorReply(
                400, f"Message batch {batch.id} has not ended yet; its results are not available."
            )
        return "".join(json.dumps(line) + "\n" for line in batch.lines).encode()
