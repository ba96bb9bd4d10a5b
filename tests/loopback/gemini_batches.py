"""Gemini batch mode with inlined requests, as the loopback server speaks it.

The shapes follow what ``google-genai``'s ``batches`` module sends and reads in Gemini Developer API mode
(``_BatchJobSource_to_mldev``, ``_BatchJob_from_mldev``)::

    POST /v1/models/{model}:batchGenerateContent
        {"batch": {"displayName": ..., "inputConfig": {"requests": {"requests": [
            {"request": {GenerateContentRequest}, "metadata": {...}}, ...]}}}}
    GET  /v1/batches/{id}           -> an Operation whose metadata is the GenerateContentBatch
    POST /v1/batches/{id}:cancel    -> {}

The batch's ``metadata.state`` is ``BATCH_STATE_PENDING`` until the delay passes, then
``BATCH_STATE_SUCCEEDED`` with ``metadata.output.inlinedResponses.inlinedResponses``: one entry per request,
in request order, each ``{"response": ..., "metadata": ...}`` or ``{"error": google.rpc.Status, ...}``
(whose ``code`` is a gRPC code, not an HTTP status). A canceled batch is ``BATCH_STATE_CANCELLED`` with
no output. As for Anthropic batches, every request is answered at creation; the delay hides it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.loopback.batches import Batch, BatchStore, iso
from tests.loopback.faults import ErrorReply

_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main."
# google.rpc.Code of each HTTP status the server answers with (Google's published mapping).
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 429: 8, 500: 13, 501: 12, 503: 14, 504: 4, 529: 14}


def create(
    store: BatchStore,
    body: Any,
    model: str,
    batch_id: str,
    delay_s: float,
    answer: Callable[[Any, str], dict[str, Any]],
) -> tuple[Batch, dict[str, int]]:
    """Create a batch, answering each inlined request with ``answer(request, model)`` (or its ErrorReply).

    Returns the batch and the summed usage of its answers (Gemini's field names).
    """
    batch = body.get("batch") if isinstance(body, dict) else None
    source = batch.get("inputConfig") if isinstance(batch, dict) else None
    if not isinstance(source, dict):
        raise ErrorReply(400, "* BatchGenerateContentRequest.batch.input_config: input_config is required")
    if "fileName" in source:
        raise ErrorReply(400, "loopback: only inlined requests are supported, not an uploaded file")
    inlined = source.get("requests")
    items = inlined.get("requests") if isinstance(inlined, dict) else None
    if not isinstance(items, list) or not items:
        raise ErrorReply(400, "* BatchGenerateContentRequest.batch.input_config.requests: no requests")
    lines: list[dict[str, Any]] = []
    usage = {"promptTokenCount": 0, "candidatesTokenCount": 0}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("request"), dict):
            raise ErrorReply(400, f"* BatchGenerateContentRequest.batch.input_config.requests[{i}].request")
        line: dict[str, Any] = {}
        # A request the model refuses ends as an error entry of its own; the batch still succeeds.
        try:
            response = answer(item["request"], model)
            line["response"] = response
            for key in usage:
                usage[key] += response["usageMetadata"][key]
        except ErrorReply as error:
            line["error"] = {"code": _GRPC_CODES.get(error.status, 2), "message": error.message}
        if "metadata" in item:
            line["metadata"] = item["metadata"]
        lines.append(line)
    return store.add(batch_id, delay_s, lines, provider="gemini", model=model), usage


def describe(batch: Batch) -> dict[str, Any]:
    """The Operation describing the batch as it stands now (what create and get answer)."""
    ended, canceled = batch.ended(), batch.canceled_at is not None
    name = f"batches/{batch.id}"
    stats = {"requestCount": str(len(batch.lines))}  # int64 is a string in proto JSON
    metadata: dict[str, Any] = {
        "@type": _TYPE + "GenerateContentBatch",
        "name": name,
        "model": f"models/{batch.model}",
        "displayName": batch.id,
        "createTime": iso(batch.created_at),
        "updateTime": iso(batch.ended_at if ended else batch.created_at),
        "batchStats": stats,
    }
    operation: dict[str, Any] = {"name": name, "metadata": metadata}
    if not ended:
        metadata["state"] = "BATCH_STATE_PENDING"
        stats["pendingRequestCount"] = stats["requestCount"]
        return operation
    metadata["endTime"] = iso(batch.ended_at)
    operation["done"] = True
    if canceled:
        metadata["state"] = "BATCH_STATE_CANCELLED"
        return operation
    metadata["state"] = "BATCH_STATE_SUCCEEDED"
    stats["successfulRequestCount"] = str(sum("response" in line for line in batch.lines))
    stats["failedRequestCount"] = str(sum("error" in line for line in batch.lines))
    output = {"inlinedResponses": {"inlinedResponses": batch.lines}}
    metadata["output"] = output
    operation["response"] = {"@type": _TYPE + "GenerateContentBatchOutput", **output}
    return operation
