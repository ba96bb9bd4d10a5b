"""OpenAI's Files and Batch APIs as the loopback server speaks them (the shapes of ``openai.types``)::

    POST /v1/files                    multipart: purpose=batch, file=<JSONL>  -> FileObject
    GET  /v1/files/{id}/content       the file's bytes (input files, and a batch's output and error files)
    POST /v1/batches                  {"input_file_id", "endpoint", "completion_window"} -> Batch
    GET  /v1/batches/{id}             -> Batch (in_progress until the delay passes, then completed)
    POST /v1/batches/{id}/cancel      -> Batch (cancelled at once; nothing is answered)

Each input line ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`` is answered at
creation, as for the other providers' batches; the delay only decides when that becomes visible. A line
whose body is refused goes to the error file with its status (``{"response": {"status_code": 400, ...}}``),
as on the real API; the output file ``{batch id}-output`` holds the others.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from tests.loopback.batches import Batch, BatchStore
from tests.loopback.faults import ErrorReply
from tests.loopback.openai_wire import openai_error

ENDPOINT = "/v1/chat/completions"


def parse_multipart(content_type: str, raw: bytes) -> dict[str, Any]:
    """The fields of a ``multipart/form-data`` body: text fields as str, file fields as bytes, and each
    file's name under ``<field>.filename``."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    if not message.is_multipart():
        raise ErrorReply(400, "expected a multipart/form-data body")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        payload = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            fields[name], fields[f"{name}.filename"] = payload, filename
        else:
            fields[name] = payload.decode("utf-8")
    return fields


class OpenAIFiles:
    """Uploaded files by id. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, tuple[dict[str, Any], bytes]] = {}

    def add(self, file_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Keep an uploaded file; returns its FileObject."""
        data, purpose = fields.get("file"), fields.get("purpose")
        if not isinstance(data, bytes):
            raise ErrorReply(400, "Missing required parameter: 'file'")
        if purpose not in ("batch", "fine-tune", "assistants", "user_data", "vision", "evals"):
            raise ErrorReply(400, f"Invalid value for 'purpose': {purpose!r}")
        info = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": fields.get("file.filename") or "upload",
            "purpose": purpose,
            "status": "processed",
        }
        with self._lock:
            self._files[file_id] = (info, data)
        return info

    def content(self, file_id: str) -> bytes:
        with self._lock:
            found = self._files.get(file_id)
        if found is None:
            raise ErrorReply(404, f"No such File object: {file_id}")
        return found[1]


def create(
    store: BatchStore,
    files: OpenAIFiles,
    body: Any,
    batch_id: str,
    delay_s: float,
    answer: Callable[[Any], dict[str, Any]],
) -> tuple[Batch, dict[str, int]]:
    """Create a batch from an uploaded input file, answering each line's body with ``answer`` (a
    ChatCompletion, or ``ErrorReply``); returns the batch and the summed usage of its answers."""
    if not isinstance(body, dict) or not isinstance(body.get("input_file_id"), str):
        raise ErrorReply(400, "Missing required parameter: 'input_file_id'")
    if body.get("endpoint") != ENDPOINT:
        raise ErrorReply(400, f"Invalid value for 'endpoint': the loopback serves {ENDPOINT} only")
    if body.get("completion_window") != "24h":
        raise ErrorReply(400, "Invalid value for 'completion_window': expected '24h'")
    try:
        requests = [
            json.loads(line) for line in files.content(body["input_file_id"]).decode().splitlines() if line
        ]
    except ValueError:
        raise ErrorReply(400, "the input file is not JSON Lines") from None
    ids = [r.get("custom_id") if isinstance(r, dict) else None for r in requests]
    if not requests or not all(isinstance(i, str) and i for i in ids) or len(set(ids)) != len(ids):
        raise ErrorReply(400, "every line of the input file needs a unique, non-empty custom_id")
    models = {r.get("body", {}).get("model") for r in requests if isinstance(r.get("body"), dict)}
    if len(models) > 1:
        raise ErrorReply(400, "a batch's input file may name one model only")
    lines, usage = [], {"prompt_tokens": 0, "completion_tokens": 0}
    for index, (custom_id, item) in enumerate(zip(ids, requests, strict=True)):
        request_id = f"req_{batch_id}_{index}"
        if item.get("url") != ENDPOINT or item.get("method") != "POST":
            status, payload = 400, openai_error(400, f"line {index + 1}: url must be {ENDPOINT}, method POST")
        else:
            try:
                payload, status = answer(item.get("body")), 200
                for key in usage:
                    usage[key] += payload["usage"][key]
            except ErrorReply as error:
                status, payload = error.status, openai_error(error.status, error.message)
        response = {"status_code": status, "request_id": request_id, "body": payload}
        lines.append(
            {"id": f"batch_req_{index}", "custom_id": custom_id, "response": response, "error": None}
        )
    batch = store.add(batch_id, delay_s, lines, provider="openai", model=models.pop() if models else None)
    batch.source = body["input_file_id"]
    return batch, usage


def describe(batch: Batch) -> dict[str, Any]:
    """The Batch object as it stands now."""
    ended, canceled = batch.ended(), batch.canceled_at is not None
    failed = sum(1 for line in batch.lines if line["response"]["status_code"] != 200)
    done = ended and not canceled
    status = "cancelled" if canceled else ("completed" if ended else "in_progress")
    created = int(batch.created_at.timestamp())
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": ENDPOINT,
        "errors": None,
        "input_file_id": batch.source,
        "completion_window": "24h",
        "status": status,
        "output_file_id": f"{batch.id}-output" if done and failed < len(batch.lines) else None,
        "error_file_id": f"{batch.id}-errors" if done and failed else None,
        "created_at": created,
        "in_progress_at": created,
        "expires_at": int((batch.created_at + timedelta(hours=24)).timestamp()),
        "completed_at": int(batch.ended_at.timestamp()) if done else None,
        "cancelled_at": int(batch.canceled_at.timestamp()) if batch.canceled_at else None,
        "request_counts": {
            "total": len(batch.lines),
            "completed": len(batch.lines) - failed if done else 0,
            "failed": failed if done else 0,
        },
        "metadata": None,
    }


def result_file(store: BatchStore, file_id: str) -> bytes | None:
    """The output or error file of an ended batch (``{batch id}-output`` / ``-errors``), else None."""
    for suffix, ok in (("-output", True), ("-errors", False)):
        if file_id.endswith(suffix):
            batch = store.get(file_id[: -len(suffix)], "openai")
            if not batch.ended() or batch.canceled_at is not None:
                raise ErrorReply(404, f"No such File object: {file_id}")
            lines = [ln for ln in batch.lines if (ln["response"]["status_code"] == 200) == ok]
            return "".join(json.dumps(line) + "\n" for line in lines).encode()
    return None
