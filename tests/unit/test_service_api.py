"""The service's ``/v1`` API over real HTTP (httpx against uvicorn on 127.0.0.1): listing with filters
and pages, the record's per-node table and the report, events resumed with ``Last-Event-ID``, resume
with an interrupt's value, validate, estimate, metrics, the server's policy on paths, and bodies that
are malformed, huge or slow. State-graph runs on an engine without Ray."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse

from tests.service_live import GRAPH, LiveService, live_service, wait_status

ASKING = GRAPH.replace("name: tiny-graph", "name: asking").replace(
    "tests.service_nodes:add_one", "tests.service_nodes:ask"
)
BROKEN = (
    "version: 1\nname: broken\nnodes:\n  input: {op: read_csv, path: x.csv}\n"
    "  out: {op: write_parquet, input: nowhere, path: o}\n"
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HEADRACE_HOME", str(tmp_path))
    for name in ("HEADRACE_CHECKPOINTS", "HEADRACE_AUDIT_LOG", "HEADRACE_TOKENS", "HEADRACE_POLICY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def service(home: Path) -> Iterator[LiveService]:
    with live_service(home, max_body_bytes=64 * 1024, read_timeout_s=1.0) as live:
        yield live


def _submit(client: httpx.Client, tenant: str, n: int = 0, pipeline: str = GRAPH) -> str:
    response = client.post("/v1/runs", json={"pipeline": pipeline, "tenant": tenant, "inputs": {"n": n}})
    assert response.status_code == 201, response.text
    return str(response.json()["run_id"])


def test_runs_are_listed_with_filters_and_pages_within_the_tokens_tenants(service: LiveService) -> None:
    owner = service.client(service.owner)
    ids = [_submit(owner, "a", 1), _submit(owner, "a", 2), _submit(owner, "b", 3)]
    for run_id in ids:
        wait_status(owner, run_id, "succeeded")
    viewer_a = service.client(service.token("viewer", "a"))
    listed = viewer_a.get("/v1/runs").json()
    assert [r["run_id"] for r in listed["runs"]] == ids[1::-1]  # newest first, tenant b's not there
    assert listed["next_offset"] is None
    page = viewer_a.get("/v1/runs", params={"limit": 1}).json()
    assert [r["run_id"] for r in page["runs"]] == [ids[1]] and page["next_offset"] == 1
    second = viewer_a.get("/v1/runs", params={"limit": 1, "offset": 1}).json()
    assert [r["run_id"] for r in second["runs"]] == [ids[0]]
    assert viewer_a.get("/v1/runs", params={"tenant": "b"}).status_code == 403
    everything = owner.get("/v1/runs", params={"status": "succeeded", "pipeline": "tiny-graph"}).json()
    assert {r["run_id"] for r in everything["runs"]} == set(ids)
    assert owner.get("/v1/runs", params={"status": "failed"}).json()["runs"] == []
    assert owner.get("/v1/runs", params={"status": "nonsense"}).status_code == 422


def test_a_run_has_its_per_node_table_and_its_report(service: LiveService) -> None:
    owner = service.client(service.owner)
    run_id = _submit(owner, "a", 41)
    done = wait_status(owner, run_id, "succeeded")
    assert done["record"]["nodes"]["add"]["op"] == "call"
    assert done["record"]["tenant"] == "a" and done["pipeline"] == "tiny-graph"
    report = owner.get(f"/v1/runs/{run_id}/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert run_id in report.text and "tiny-graph" in report.text
    assert owner.get("/v1/runs/no-such-run/report").status_code == 404


def test_events_stream_to_the_end_and_resume_after_the_last_event_id(service: LiveService) -> None:
    owner = service.client(service.owner)
    run_id = _submit(owner, "a")
    with connect_sse(owner, "GET", f"/v1/runs/{run_id}/events") as source:
        events = [(sse.event, sse.id, sse.json()) for sse in source.iter_sse() if sse.data]
    assert events[0][0] == "accepted" and events[-1][0] == "end"
    assert events[-1][2]["status"] == "succeeded"
    first_id = events[0][1]
    with connect_sse(
        owner, "GET", f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": first_id}
    ) as source:
        again = [(sse.event, sse.id) for sse in source.iter_sse() if sse.data]
    assert again == [(kind, ident) for kind, ident, _ in events[1:]]
    bad = owner.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400


def test_an_interrupted_run_resumes_with_a_value(service: LiveService) -> None:
    operator = service.client(service.token("operator", "a"))
    run_id = _submit(operator, "a", pipeline=ASKING)
    wait_status(operator, run_id, "interrupted")
    resumed = operator.post(f"/v1/runs/{run_id}/resume", json={"value": 7})
    assert resumed.status_code == 201, resumed.text
    assert resumed.json()["run_id"] == run_id
    done = wait_status(operator, run_id, "succeeded")
    assert done["summary"]["state"]["n"] == 7
    other = service.client(service.token("operator", "b"))
    assert other.post(f"/v1/runs/{run_id}/resume", json={"value": 1}).status_code == 403


def test_an_invalid_pipeline_is_refused_with_its_locations(service: LiveService) -> None:
    owner = service.client(service.owner)
    refused = owner.post("/v1/runs", json={"pipeline": BROKEN, "tenant": "a"})
    assert refused.status_code == 422
    assert any(p["line"] == 5 and p["severity"] == "error" for p in refused.json()["problems"])
    checked = owner.post("/v1/validate", json={"pipeline": BROKEN}).json()
    assert checked["valid"] is False and any(p["line"] == 5 for p in checked["problems"])
    assert owner.post("/v1/validate", json={"pipeline": GRAPH}).json() == {"valid": True, "problems": []}
    viewer = service.client(service.token("viewer", "a"))
    assert viewer.post("/v1/validate", json={"pipeline": GRAPH}).status_code == 403


def test_estimate_prices_a_pipeline_from_a_sample(service: LiveService, tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("id,body\n" + "".join(f"{i},the app crashed {i}\n" for i in range(40)))
    pipeline = f"""version: 1
name: priced
nodes:
  input: {{op: read_csv, path: "{tmp_path / "t.csv"}"}}
  triage: {{op: llm_classify, input: input, provider: offline, model: offline,
            prompt: "{{{{ body }}}}", labels: [bug, other], output: label}}
  out: {{op: write_parquet, input: triage, path: "{tmp_path / "out"}"}}
"""
    owner = service.client(service.owner)
    response = owner.post("/v1/estimate", json={"pipeline": pipeline, "sample_rows": 10, "sample_ranges": 1})
    assert response.status_code == 200, response.text
    node = response.json()["nodes"]["triage"]
    assert node["rows"] == 40 and node["calls"] == 40 and node["expected_usd"] == 0.0


def test_paths_outside_the_allowed_roots_are_refused(
    service: LiveService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed = tmp_path / "pipelines"
    allowed.mkdir()
    (allowed / "ok.yaml").write_text(GRAPH)
    (tmp_path / "elsewhere.yaml").write_text(GRAPH)
    monkeypatch.setenv("HEADRACE_POLICY", "closed")
    monkeypatch.setenv("HEADRACE_ALLOWED_ROOTS", str(allowed))
    monkeypatch.setenv("HEADRACE_ALLOWED_MODULES", "tests.service_nodes")
    owner = service.client(service.owner)
    outside = owner.post("/v1/runs", json={"path": str(tmp_path / "elsewhere.yaml"), "tenant": "a"})
    assert outside.status_code == 403 and "elsewhere.yaml" in outside.json()["detail"]
    inside = owner.post("/v1/runs", json={"path": str(allowed / "ok.yaml"), "tenant": "a"})
    assert inside.status_code == 201, inside.text
    wait_status(owner, inside.json()["run_id"], "succeeded")


def test_metrics_need_a_token_and_count_runs(service: LiveService) -> None:
    owner = service.client(service.owner)
    wait_status(owner, _submit(owner, "a"), "succeeded")
    assert service.client(None).get("/metrics").status_code == 401
    text = service.client(service.token("viewer", "a")).get("/metrics").text
    assert "headrace_runs_total" in text


def test_the_openapi_document_describes_the_api(service: LiveService) -> None:
    doc = service.client(None).get("/openapi.json").json()
    assert {
        "/v1/runs",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/report",
        "/v1/runs/{run_id}/events",
        "/v1/runs/{run_id}/cancel",
        "/v1/runs/{run_id}/resume",
        "/v1/validate",
        "/v1/estimate",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(doc["paths"])


def test_malformed_huge_and_slow_bodies_get_clear_errors_and_others_go_on(service: LiveService) -> None:
    owner = service.client(service.owner)
    malformed = owner.post("/v1/runs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert malformed.status_code == 422 and "json" in malformed.text.lower()
    huge = owner.post("/v1/runs", json={"pipeline": "x" * 100_000, "tenant": "a"})
    assert huge.status_code == 413 and "limit of 65536 bytes" in huge.json()["detail"]

    # a slow client: headers sent, a body promised and never sent; another client is served meanwhile
    host, port = service.url.removeprefix("http://").split(":")
    slow = socket.create_connection((host, int(port)))
    try:
        slow.sendall(
            f"POST /v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {service.owner}\r\n"
            "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{".encode()
        )
        began = time.monotonic()
        assert owner.get("/healthz").status_code == 200
        run_id = _submit(owner, "a")
        assert time.monotonic() - began < 1.0 or wait_status(owner, run_id, "succeeded")
        slow.settimeout(10)
        answer = slow.recv(4096).decode()
    finally:
        slow.close()
    assert answer.startswith("HTTP/1.1 408") and "did not arrive within 1s" in answer
    statuses = [(e["status"], e["outcome"]) for e in service.api_entries()]
    assert (413, "rejected") in statuses and (408, "rejected") in statuses
