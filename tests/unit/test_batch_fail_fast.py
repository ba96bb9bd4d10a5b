"""``mode: batch`` fails fast as online mode does: a refused key or an unknown model stops the node at
the first answer, and rows the provider kept failing trip the circuit breaker; rows at fault fail alone.

Ray-free: the batch caller runs on an in-process ledger, against the loopback server through the real
``anthropic`` SDK.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine.errors import FatalRunError
from engine.runtime.llm.batch import BatchRowCaller
from engine.runtime.llm.calls import CallSettings, LocalServices, RowFailed
from engine.runtime.llm.health import CallHealth
from engine.runtime.llm.ledger import Ledger
from engine.spec.models import RetryPolicy
from operators.llm import LlmClassify
from operators.llm_rows import RowTask, Target
from operators.providers.claude import AnthropicProvider
from operators.providers.pricing import PriceTable
from tests.loopback import ErrorReply, LLMServer

ROWS = [{"text": f"t{i}"} for i in range(20)]


def _caller(server: LLMServer, health: CallHealth, prompt: str = "Message: {{ text }}") -> BatchRowCaller:
    spec = LlmClassify(op="llm_classify", input="x", prompt=prompt, labels=["a", "b"], mode="batch")
    settings = CallSettings(
        node="classify",
        targets=(Target("anthropic", "claude-haiku-4-5"),),
        retry=RetryPolicy(max_attempts=2),
        budgeted=False,
    )
    provider = AnthropicProvider({"base_url": server.url, "api_key": "a-wrong-key"})
    return BatchRowCaller(
        RowTask(spec, {}),
        settings,
        provider,
        PriceTable(),
        None,
        LocalServices(Ledger(None, {})),
        0.02,
        health,
    )


def _batches(server: LLMServer) -> int:
    return sum(1 for r in server.requests if r.endpoint == "batches.create")


def test_a_refused_key_stops_a_batch_node_at_once_and_later_batches_send_nothing() -> None:
    health = CallHealth("classify")
    with LLMServer(api_key="the-right-key") as server:
        with pytest.raises(FatalRunError) as caught:
            asyncio.run(_caller(server, health).answer_all(ROWS))
        assert "HTTP 401" in str(caught.value) and "authentication failed" in str(caught.value)
        assert "$ANTHROPIC_API_KEY" in str(caught.value) and "anthropic/claude-haiku-4-5" in str(caught.value)
        sent = len(server.requests)
        with pytest.raises(FatalRunError):  # the node's next batch: no call at all
            asyncio.run(_caller(server, health).answer_all(ROWS))
        assert len(server.requests) == sent == 1  # not one submission per round


@pytest.mark.parametrize(("status", "fatal"), [(404, True), (503, True), (400, False)])
def test_row_results_refused_as_no_row_can_pass_stop_and_row_faults_fail_alone(
    status: int, fatal: bool
) -> None:
    def refuse(request: Any) -> Any:
        raise ErrorReply(status, "refused")

    with LLMServer(responder=refuse) as server:
        caller = _caller(server, CallHealth("classify"))
        if fatal:  # 404: no such model; 503 on every row after both rounds: the circuit breaker
            with pytest.raises(FatalRunError, match="circuit breaker" if status == 503 else "HTTP 404"):
                asyncio.run(caller.answer_all(ROWS))
        else:  # a 400 is the row's own fault: its row fails, the node goes on
            outcomes = asyncio.run(caller.answer_all(ROWS))
            assert all(isinstance(o, RowFailed) for o in outcomes)
