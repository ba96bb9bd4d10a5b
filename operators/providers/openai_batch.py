"""The OpenAI Batch API for the ``openai`` provider: a JSONL file of requests in, output and error files out.

::

    files.create(purpose="batch")    one line per request: {"custom_id", "method": "POST",
                                      "url": "/v1/chat/completions", "body": <the body call() sends>}
    batches.create(input_file_id, endpoint="/v1/chat/completions", completion_window="24h")
    batches.retrieve(id)             status: validating, in_progress, finalizing -> completed, failed,
                                      expired, cancelled (cancelling on the way)
    files.content(output_file_id)    {"custom_id", "response": {"status_code", "request_id", "body"}}
    files.content(error_file_id)     the same shape for failed requests, or {"custom_id", "error": {...}}

A batch is for one model and at most 50,000 requests and 200 MB (OpenAI's limits; checked before anything
is sent). The structured-output mode a batch was built with is remembered with its requests, since its
answers must be read the same way; a batch submitted elsewhere is read in the provider's current mode.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from openai.types import Batch
from openai.types.chat import ChatCompletion

from operators.providers.base import (
    BATCH_COUNT_KEYS,
    BatchStatus,
    SubmittedBatches,
    check_batch_items,
    unanswered,
)
from operators.providers.errors import BadResponse, ProviderError, error_for_status
from operators.providers.openai_chat import CAUGHT, NAME, StructuredMode, read_completion, request_body

if TYPE_CHECKING:
    from operators.providers.base import LlmRequest, LlmResponse
    from operators.providers.openai_chat import OpenAIProvider

BATCH_LIMIT = 50_000
BATCH_BYTES = 200 * 1024 * 1024
_ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
# Batch create/retrieve/cancel and file transfers have no LlmRequest to take a timeout from; this bounds
# each network operation (httpx timeouts are per read or write, so a long download is not cut).
_TIMEOUT_S = 60.0
_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
# Where the requests an ended batch did not answer are counted, and why they got no answer.
_UNANSWERED = {
    "cancelled": ("canceled", "the batch was canceled before it was processed"),
    "expired": ("expired", "the batch expired (24 hours) before it was processed"),
    "failed": ("errored", "the batch failed validation"),
}
# Per-line error codes that mean "not processed" rather than "this request is wrong".
_NOT_PROCESSED = {"batch_expired": "expired", "batch_cancelled": "canceled"}


class OpenAIBatches:
    """The batch side of one ``OpenAIProvider``: its SDK client, its key scrubbing, its requests."""

    def __init__(self, provider: OpenAIProvider) -> None:
        self._provider = provider
        self._submitted = SubmittedBatches(NAME)
        self._modes: dict[str, StructuredMode] = {}

    async def submit(self, items: Sequence[tuple[str, LlmRequest]]) -> str:
        requests = check_batch_items(items, limit=BATCH_LIMIT)
        models = sorted({r.model for r in requests.values()})
        if len(models) > 1:
            raise ValueError(f"an openai batch is for one model; these requests name {', '.join(models)}")
        mode, field = self._provider.mode, self._provider.max_tokens_field
        lines = [
            json.dumps(
                {"custom_id": cid, "method": "POST", "url": _ENDPOINT, "body": request_body(r, mode, field)},
                ensure_ascii=False,
            )
            for cid, r in requests.items()
        ]
        data = ("\n".join(lines) + "\n").encode("utf-8")
        if len(data) > BATCH_BYTES:
            raise ValueError(f"the batch file has {len(data):,} bytes, more than {BATCH_BYTES:,}: split it")
        client = self._provider.sdk()
        try:
            uploaded = await client.files.create(
                file=("headrace-batch.jsonl", data, "application/jsonl"), purpose="batch", timeout=_TIMEOUT_S
            )
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint=_ENDPOINT, completion_window="24h", timeout=_TIMEOUT_S
            )
        except CAUGHT as exc:
            raise self._provider.error(exc) from None
        self._submitted.remember(batch.id, requests)
        self._modes[batch.id] = mode
        return batch.id

    async def status(self, batch_id: str) -> BatchStatus:
        batch = await self._retrieve(batch_id)
        return BatchStatus(batch.id, batch.status in _ENDED, _counts(batch))

    async def results(
        self, batch_id: str, requests: Mapping[str, LlmRequest] | None
    ) -> dict[str, LlmResponse | ProviderError]:
        wanted = self._submitted.requests(batch_id, requests)
        batch = await self._retrieve(batch_id)
        if batch.status not in _ENDED:
            raise ProviderError(
                f"batch {batch_id} has not ended ({batch.status}): poll batch_status until it has",
                provider=NAME,
            )
        mode = self._modes.get(batch_id, self._provider.mode)
        results: dict[str, LlmResponse | ProviderError] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            for line in await self._lines(file_id):
                custom_id = line.get("custom_id")
                request = wanted.get(custom_id) if isinstance(custom_id, str) else None
                if custom_id is not None and request is not None:  # a line we did not ask for is not ours
                    results[custom_id] = self._line(request, line, mode)
        why = _UNANSWERED.get(batch.status, ("errored", f"the batch ended {batch.status}"))[1]
        for custom_id in wanted.keys() - results.keys():
            results[custom_id] = unanswered(NAME, custom_id, why)
        return results

    async def cancel(self, batch_id: str) -> None:
        try:
            await self._provider.sdk().batches.cancel(batch_id, timeout=_TIMEOUT_S)
        except CAUGHT as exc:
            raise self._provider.error(exc) from None

    async def _retrieve(self, batch_id: str) -> Batch:
        try:
            return await self._provider.sdk().batches.retrieve(batch_id, timeout=_TIMEOUT_S)
        except CAUGHT as exc:
            raise self._provider.error(exc) from None

    async def _lines(self, file_id: str | None) -> list[dict[str, Any]]:
        """The JSON lines of a result file (none when the batch has no such file)."""
        if not file_id:
            return []
        try:
            content = await self._provider.sdk().files.content(file_id, timeout=_TIMEOUT_S)
            text = content.text
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except CAUGHT as exc:
            raise self._provider.error(exc) from None

    def _line(
        self, request: LlmRequest, line: Mapping[str, Any], mode: StructuredMode
    ) -> LlmResponse | ProviderError:
        """The answer or error of one line of the output or error file."""
        response = line.get("response") if isinstance(line.get("response"), Mapping) else None
        error = line.get("error") if isinstance(line.get("error"), Mapping) else None
        if response is not None and response.get("status_code") == 200:
            try:
                completion = ChatCompletion.model_validate(response.get("body"))
                answer = read_completion(request, completion, mode, 0.0, response.get("request_id"))
            except (BadResponse, ValueError) as exc:
                return exc if isinstance(exc, BadResponse) else BadResponse(str(exc), provider=NAME)
            return dataclasses.replace(answer, batch=True)
        if response is not None:
            body = response.get("body")
            detail = body.get("error") if isinstance(body, Mapping) else None
            message = detail.get("message") if isinstance(detail, Mapping) else None
            status = response.get("status_code")
            http = int(status) if isinstance(status, int) else 500
            return error_for_status(NAME, http, self._provider.redact(str(message or f"HTTP {http}")))
        code = str(error.get("code")) if error is not None else ""
        if code in _NOT_PROCESSED:
            return unanswered(NAME, str(line.get("custom_id")), f"the batch ended {_NOT_PROCESSED[code]}")
        message = self._provider.redact(str(error.get("message") if error else "no response in the line"))
        return ProviderError(f"{code or 'error'}: {message}", provider=NAME, retryable=True)


def _counts(batch: Batch) -> dict[str, int]:
    """Requests per state (``BATCH_COUNT_KEYS``) from the batch's total, completed and failed counts."""
    counts = dict.fromkeys(BATCH_COUNT_KEYS, 0)
    totals = batch.request_counts
    total = totals.total if totals else 0
    counts["succeeded"] = totals.completed if totals else 0
    counts["errored"] = totals.failed if totals else 0
    rest = max(0, total - counts["succeeded"] - counts["errored"])
    if batch.status in _ENDED:
        counts[_UNANSWERED.get(batch.status, ("errored", ""))[0]] += rest
    else:
        counts["processing"] = rest
    return counts
