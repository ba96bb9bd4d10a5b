"""``mode: batch`` across a crash: a batch submitted before the crash is polled again, never paid twice.

Ray-free: the batch caller runs on an in-process ledger, against the loopback server through the real
``anthropic`` SDK.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from engine.runtime.llm.batch import BatchRowCaller
from engine.runtime.llm.calls import CallSettings, LocalServices, RowFailed
from engine.runtime.llm.ledger import Ledger
from engine.spec.models import RetryPolicy
from operators.llm import LlmClassify
from operators.llm_rows import RowTask, Target
from operators.providers.cache import ResponseCache
from operators.providers.claude import AnthropicProvider
from operators.providers.pricing import PriceTable
from tests.loopback import LLMServer

LABELS = ["bug", "billing", "other"]


def label_for(text: str) -> str:
    return LABELS[int(hashlib.sha256(text.encode()).hexdigest(), 16) % 3]


def responder(request: dict[str, Any]) -> Any:
    text = request["prompt"].split("Message: ", 1)[1]
    return {"value": "spam" if text == "t7" else label_for(text)}


def make_caller(server: LLMServer, cache: Path, ledger: Ledger) -> BatchRowCaller:
    spec = LlmClassify(
        op="llm_classify", input="x", prompt="Message: {{ text }}", labels=LABELS, mode="batch"
    )
    settings = CallSettings(
        node="classify",
        targets=(Target("anthropic", "claude-haiku-4-5"),),
        retry=RetryPolicy(max_attempts=2),
        budgeted=False,
    )
    provider = AnthropicProvider({"base_url": server.url, "api_key": "k"})
    return BatchRowCaller(
        RowTask(spec, {}),
        settings,
        provider,
        PriceTable(),
        ResponseCache(str(cache)),
        LocalServices(ledger),
        0.05,
    )


def creates(server: LLMServer) -> int:
    return sum(1 for r in server.requests if r.endpoint == "batches.create")


def test_a_batch_submitted_before_a_crash_is_polled_again_not_paid_twice(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}"} for i in range(20)]
    with LLMServer(responder=responder, batch_delay_s=0.6) as server:
        first = make_caller(server, tmp_path / "cache", Ledger(None, {}))

        async def crash() -> None:
            # the run dies while it waits for the batch to end (once the batch is sent, however long
            # sending took on a loaded machine)
            task = asyncio.get_running_loop().create_task(first.answer_all(rows))
            deadline = time.monotonic() + 60
            while not creates(server):
                assert not task.done() and time.monotonic() < deadline, "no batch was sent"
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(crash())
        assert creates(server) == 1

        ledger = Ledger(None, {})
        outcomes = asyncio.run(make_caller(server, tmp_path / "cache", ledger).answer_all(rows))
        assert creates(server) == 1  # the recorded batch was polled, not sent again
        for row, outcome in zip(rows, outcomes, strict=True):
            if row["text"] == "t7":
                assert isinstance(outcome, RowFailed) and "'spam'" in str(outcome)
            else:
                assert outcome == label_for(row["text"])
        assert ledger.usage()["classify"]["requests"] == 20
        assert not list((tmp_path / "cache" / "batches").glob("*.json"))  # the record is gone once read

        # a third run answers every row from the cache: no new batch
        again = Ledger(None, {})
        asyncio.run(make_caller(server, tmp_path / "cache", again).answer_all(rows))
        assert creates(server) == 1
        assert again.usage()["classify"]["cached_requests"] == 20
