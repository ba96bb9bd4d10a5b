"""Per-tenant policy on Ray: a dataflow run submitted over the service's HTTP API carries its tenant's
policy (the server's widened by the tenant's own) to the driver's split planning and to its Ray workers,
which judge by it rather than by the server's environment (closed, allowing none of it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.policy import Policy
from tests.service_live import live_service, wait_status

pytestmark = pytest.mark.usefixtures("ray_cluster")


def dataflow(src: Path, out: Path, fn: str) -> str:
    return f"""version: 1
name: tenant-flow
nodes:
  input: {{op: read_csv, path: "{src}"}}
  udf: {{op: map_batches, input: input, fn: "tests.integration.policy_udfs:{fn}"}}
  output: {{op: write_parquet, input: udf, path: "{out}"}}
"""


def test_a_tenants_policy_is_what_its_ray_workers_and_split_planning_judge_by(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, a, b = tmp_path / "home", tmp_path / "a", tmp_path / "b"
    for folder in (home, a / "in", b):
        folder.mkdir(parents=True)
    (a / "in" / "rows.csv").write_text("n\n1\n2\n", encoding="utf-8")
    (b / "secret.csv").write_text("n\n41\n", encoding="utf-8")
    (a / "linked").mkdir()
    (a / "linked" / "rows.csv").symlink_to(b / "secret.csv")  # a's folder, b's data
    monkeypatch.setenv("HEADRACE_HOME", str(home))
    monkeypatch.delenv("HEADRACE_CHECKPOINTS", raising=False)
    monkeypatch.setenv("HEADRACE_POLICY", "closed")  # the server (and its local workers): nothing at all
    monkeypatch.delenv("HEADRACE_ALLOWED_ROOTS", raising=False)
    monkeypatch.delenv("HEADRACE_ALLOWED_MODULES", raising=False)
    policies = {
        "team-a": Policy.closed(roots=[a], modules=["tests.integration.policy_udfs"]),
        "team-b": Policy.closed(roots=[b], modules=["tests"]),  # b and the code a's re-export names
    }
    with live_service(home, policies=policies) as svc:
        client = svc.client(svc.token("operator", "team-a"))

        def run(src: Path, out: str, fn: str) -> dict:
            sent = client.post("/v1/runs", json={"pipeline": dataflow(src, a / "out" / out, fn)})
            assert sent.status_code == 201, sent.text
            return wait_status(client, sent.json()["run_id"], "succeeded", "failed", timeout=180)

        # the server's policy alone refuses a's folder and code: team-a's widens it, in the workers too
        ok = run(a / "in", "ok", "same")
        assert ok["status"] == "succeeded", ok
        assert ok["summary"]["nodes"]["output"]["rows"] == 2
        # in a Ray worker: the name is in team-a's module, the code is defined in tests.integration.udfs
        # (allowed by team-b's policy, not by team-a's)
        worker = run(a / "in", "worker", "reexported")
        assert worker["status"] == "failed", worker
        assert "defined in 'tests.integration.udfs'" in worker["summary"]["error"]
        assert not list((a / "out" / "worker").glob("*.parquet"))
        # at split planning: a's folder holds a link to b's file (team-b's policy allows b, not team-a's)
        linked = run(a / "linked", "linked", "same")
        assert linked["status"] == "failed", linked
        assert f"really {b / 'secret.csv'}" in linked["summary"]["error"]
        assert "outside the allowed roots" in linked["summary"]["error"]
