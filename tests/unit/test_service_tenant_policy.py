"""Per-tenant policy through the service's HTTP API: each tenant's runs are checked, compiled and run
under the server's policy narrowed by the tenant's own, so a tenant cannot read what the server allows
only to another tenant, nor anything beyond the server's policy, and code a run imports later (a state
graph's nodes) is judged by the run's policy, not by the server's environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.policy import Policy
from tests.service_live import GRAPH, live_service, wait_status


def tenant_nodes(fn: str) -> str:
    """The tiny graph calling ``tests.tenant_nodes:FN``."""
    return GRAPH.replace("tests.service_nodes:add_one", f"tests.tenant_nodes:{fn}")


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The server allows folders a and b and code under `tests`; c is nobody's."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HEADRACE_HOME", str(home))
    for name in ("HEADRACE_CHECKPOINTS", "HEADRACE_AUDIT_LOG", "HEADRACE_TOKENS", "HEADRACE_ALLOWED_SCHEMES"):
        monkeypatch.delenv(name, raising=False)
    out = {name: tmp_path / name for name in ("a", "b", "c")}
    for folder in out.values():
        folder.mkdir()
        (folder / "pipe.yaml").write_text(GRAPH, encoding="utf-8")
    monkeypatch.setenv("HEADRACE_POLICY", "closed")
    monkeypatch.setenv("HEADRACE_ALLOWED_ROOTS", os.pathsep.join([str(out["a"]), str(out["b"])]))
    monkeypatch.setenv("HEADRACE_ALLOWED_MODULES", "tests")
    return {**out, "home": home}


def test_each_tenants_runs_follow_its_own_policy_within_the_servers(roots: dict[str, Path]) -> None:
    policies = {
        # team-a lists c too: its policy cannot widen the server's, so c stays refused
        "team-a": Policy.closed(roots=[roots["a"], roots["c"]], modules=["tests.tenant_nodes"]),
        "team-b": Policy.closed(roots=[roots["b"]], modules=["tests"]),
    }
    with live_service(roots["home"], policies=policies) as svc:
        a, b = svc.client(svc.token("operator", "team-a")), svc.client(svc.token("operator", "team-b"))
        # b's file: the server allows it, team-a's policy does not; team-b runs it
        theirs = {"path": str(roots["b"] / "pipe.yaml")}
        refused = a.post("/v1/runs", json=theirs)
        assert refused.status_code == 403, refused.text
        assert "outside the allowed roots" in refused.json()["detail"]
        assert a.post("/v1/validate", json=theirs).status_code == 403
        ran = b.post("/v1/runs", json=theirs)
        assert ran.status_code == 201, ran.text
        assert wait_status(b, ran.json()["run_id"], "succeeded")["summary"]["state"]["n"] == 1
        # c: in team-a's own list, outside the server's policy
        beyond = a.post("/v1/runs", json={"path": str(roots["c"] / "pipe.yaml")})
        assert beyond.status_code == 403 and "outside the allowed roots" in beyond.json()["detail"]
        # code: team-a may run tests.tenant_nodes only; the compile check names the line of another module
        mine = a.post("/v1/runs", json={"pipeline": tenant_nodes("add_two")})
        assert mine.status_code == 201, mine.text
        assert wait_status(a, mine.json()["run_id"], "succeeded")["summary"]["state"]["n"] == 2
        other = a.post("/v1/runs", json={"pipeline": GRAPH})
        assert other.status_code == 422
        (problem,) = other.json()["problems"]
        assert (
            problem["line"] == 9
            and "module 'tests.service_nodes' is not in the allowed modules" in (problem["message"])
        )
        # a name in team-a's module for code defined elsewhere passes the text check and is refused when
        # the run imports it, by the run's policy (the server's environment would allow it); team-b runs it
        hidden = {"pipeline": tenant_nodes("reexported")}
        accepted = a.post("/v1/runs", json=hidden)
        assert accepted.status_code == 201, accepted.text
        failed = wait_status(a, accepted.json()["run_id"], "failed")
        assert "defined in 'tests.service_nodes'" in failed["error"]["message"], failed
        allowed = b.post("/v1/runs", json=hidden)
        assert wait_status(b, allowed.json()["run_id"], "succeeded")["summary"]["state"]["n"] == 1
