"""``pii: {mask_before_llm: true}`` on a real local Ray, through the real provider SDKs, against the
loopback server: the server's request log holds none of the PII seeded into the input file."""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from engine.check import check_file
from engine.runtime import run_checked
from tests.loopback import LLMServer

pytestmark = pytest.mark.usefixtures("ray_cluster")

KEY = "sk-ant-test-pii-4d3c2b"
LABELS = ["billing", "account", "other"]


def _answer(request: dict[str, Any]) -> Any:
    return {"value": "other"} if request["provider"] == "anthropic" else "other"


@pytest.fixture(autouse=True)
def _key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipelines read the key as ${HEADRACE_TEST_KEY}: a literal key in a pipeline is refused."""
    monkeypatch.setenv("HEADRACE_TEST_KEY", KEY)


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer(responder=_answer) as srv:
        yield srv


def _luhn(prefix: str, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(15 - len(prefix)))
    for check in "0123456789":
        total = 0
        for i, ch in enumerate(reversed(body + check)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return body + check
    raise AssertionError("unreachable")


IBANS = ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "NL91ABNA0417164300"]
NAMES = ["Jane Roe", "Kofi Mensah", "Ursula Dubois", "Mateo Silva"]


def seed_rows(path: Path, count: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Write ``count`` tickets full of PII; returns the rows and every PII value they hold."""
    rng = random.Random(9)
    rows, values = [], []
    for i in range(count):
        card = _luhn("4", rng)
        card_text = " ".join(card[j : j + 4] for j in range(0, 16, 4))
        pii = {
            "email": f"user{i}.{rng.randint(100, 999)}@example.com",
            "phone": f"+1 415-555-{rng.randint(1000, 9999)}",
            "card": card_text,
            "iban": IBANS[i % len(IBANS)],
            "ssn": f"{rng.randint(100, 665):03d}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
            "ip": f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            "name": NAMES[i % len(NAMES)],
        }
        body = (
            f"Hello, my name is {pii['name']}. Please refund card {pii['card']} to IBAN {pii['iban']}; "
            f"SSN {pii['ssn']}, call {pii['phone']} or mail {pii['email']}. Login from {pii['ip']} failed."
        )
        rows.append({"id": i, "subject": f"refund for {pii['email']}", "body": body, "notes": "internal"})
        values += [*pii.values(), card, pii["iban"].replace(" ", "")]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["id", "subject", "body", "notes"])
        writer.writeheader()
        writer.writerows(rows)
    return rows, values


def write_pipeline(tmp_path: Path, server: LLMServer, provider: str) -> Path:
    text = f"""
version: 1
name: pii-before-llm
pii: {{mask_before_llm: true}}
providers:
  {provider}:
    config: {{base_url: "{server.url}", api_key: "${{HEADRACE_TEST_KEY}}"}}
nodes:
  input: {{op: read_csv, path: {tmp_path}/tickets.csv, column_types: {{id: int64}}}}
  classify:
    op: llm_classify
    input: input
    provider: {provider}
    system: "You triage tickets about: {{{{ subject }}}}"
    prompt: "Ticket {{{{ id }}}}: {{{{ body }}}}"
    labels: {json.dumps(LABELS)}
    concurrency: 16
  output: {{op: write_parquet, input: classify, path: {tmp_path}/out, overwrite: true}}
"""
    path = tmp_path / "pipeline.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
def test_the_llm_server_never_receives_the_seeded_pii(
    tmp_path: Path, server: LLMServer, provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_CACHE_DIR", str(tmp_path / "cache"))
    rows, values = seed_rows(tmp_path / "tickets.csv", 120)
    summary = run_checked(check_file(str(write_pipeline(tmp_path, server, provider))), progress=False)
    assert summary.status == "succeeded", summary.error
    assert summary.nodes["classify__pii_mask"].rows == len(rows)

    calls = [r for r in server.requests if r.endpoint in ("messages", "generateContent")]
    assert len(calls) == len(rows)
    sent = "\n".join(json.dumps(r.body, ensure_ascii=False) for r in calls)
    assert (
        "[CREDIT_CARD]" in sent and "[IBAN]" in sent and "[PERSON]" in sent
    )  # the prompts were sent, masked
    leaked = sorted({v for v in values if v in sent})
    assert leaked == []
    assert not re.search(r"\d{3}-\d{2}-\d{4}|@example\.com", sent)

    # the prompt reads the int64 `id`: it was scanned as text, so it reaches the output as text (issue 18)
    out = sorted(pq.read_table(tmp_path / "out").to_pylist(), key=lambda r: int(r["id"]))
    assert [int(r["id"]) for r in out] == [r["id"] for r in rows]
    assert all(r["label"] == "other" for r in out)
    first = out[0]["body"]
    for tag in ("[PERSON]", "[CREDIT_CARD]", "[IBAN]", "[US_SSN]", "[PHONE]", "[EMAIL]", "[IP_ADDRESS]"):
        assert tag in first  # the output holds the masked columns, as the LLM saw them
    assert out[0]["subject"] == "refund for [EMAIL]" and out[0]["notes"] == "internal"
