"""Per-tenant policy through the service's HTTP API: each tenant's runs are checked, compiled and run
under the server's policy widened by the tenant's own, so a tenant reads its own folder (which the
server's policy alone refuses) but not what only another tenant's policy allows, a tenant without a
policy gets the server's only, and code a run imports later (a state graph's nodes) is judged by the
run's policy, not by the server's environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.policy import Policy
from tests.service_live import GRAPH, live_service, wait_status


def tenant_nodes(fn: str) -> str:
    """The tiny graph calling ``tests.tenant_nodes:FN``."""
    return GRAPH.replace("tests.service_nodes:add_one", f"tests.tenant_nodes:{fn}")


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The server is closed and allows only a shared folder, and no code; a's pipeline calls
    ``tests.tenant_nodes``, b's and c's ``tests.service_nodes``; c is nobody's."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HEADRACE_HOME", str(home))
    for name in ("HEADRACE_CHECKPOINTS", "HEADRACE_AUDIT_LOG", "HEADRACE_TOKENS", "HEADRACE_ALLOWED_SCHEMES"):
        monkeypatch.delenv(name, raising=False)
    out = {name: tmp_path / name for name in ("a", "b", "c", "shared")}
    for name, folder in out.items():
        folder.mkdir()
        (folder / "pipe.yaml").write_text(tenant_nodes("add_two") if name == "a" else GRAPH, encoding="utf-8")
    monkeypatch.setenv("HEADRACE_POLICY", "closed")
    monkeypatch.setenv("HEADRACE_ALLOWED_ROOTS", str(out["shared"]))
    monkeypatch.delenv("HEADRACE_ALLOWED_MODULES", raising=False)
    return {**out, "home": home}


def test_each_tenants_runs_follow_the_servers_policy_widened_by_its_own(roots: dict[str, Path]) -> None:
    policies = {
        "team-a": Policy.closed(roots=[roots["a"]], modules=["tests.tenant_nodes"]),
        "team-b": Policy.closed(roots=[roots["b"]], modules=["tests"]),
    }
    with live_service(roots["home"], policies=policies) as svc:
        a, b = svc.client(svc.token("operator", "team-a")), svc.client(svc.token("operator", "team-b"))
        c = svc.client(svc.token("operator", "team-c"))  # no policy of its own: the server's only
        path = {name: {"path": str(roots[name] / "pipe.yaml")} for name in ("a", "b", "c", "shared")}
        # a's file and code: the server's policy alone refuses both, team-a's widens it to them
        mine = a.post("/v1/runs", json=path["a"])
        assert mine.status_code == 201, mine.text
        assert wait_status(a, mine.json()["run_id"], "succeeded")["summary"]["state"]["n"] == 2
        # b's file: team-b's policy allows it, team-a's does not; c's: nobody's
        for name in ("b", "c"):
            refused = a.post("/v1/runs", json=path[name])
            assert refused.status_code == 403, refused.text
            assert "outside the allowed roots" in refused.json()["detail"]
        assert a.post("/v1/validate", json=path["b"]).status_code == 403
        ran = b.post("/v1/runs", json=path["b"])
        assert ran.status_code == 201, ran.text
        assert wait_status(b, ran.json()["run_id"], "succeeded")["summary"]["state"]["n"] == 1
        assert b.post("/v1/runs", json=path["a"]).status_code == 403
        # team-c: neither a nor b; the shared folder is read (its code is then refused, at its line)
        for name in ("a", "b"):
            refused = c.post("/v1/runs", json=path[name])
            assert refused.status_code == 403 and "outside the allowed roots" in refused.json()["detail"]
        shared = c.post("/v1/runs", json=path["shared"])
        assert shared.status_code == 422 and "not in the allowed modules" in shared.text, shared.text
        # code: team-a may run tests.tenant_nodes only; the compile check names the line of another module
        other = a.post("/v1/runs", json={"pipeline": GRAPH})
        assert other.status_code == 422
        (problem,) = other.json()["problems"]
        assert (
            problem["line"] == 9
            and "module 'tests.service_nodes' is not in the allowed modules" in (problem["message"])
        )
        # a name in team-a's module for code defined elsewhere passes the text check and is refused when
        # the run imports it, by the run's policy; team-b's policy allows it there
        hidden = {"pipeline": tenant_nodes("reexported")}
        accepted = a.post("/v1/runs", json=hidden)
        assert accepted.status_code == 201, accepted.text
        failed = wait_status(a, accepted.json()["run_id"], "failed")
        assert "defined in 'tests.service_nodes'" in failed["error"]["message"], failed
        allowed = b.post("/v1/runs", json=hidden)
        assert wait_status(b, allowed.json()["run_id"], "succeeded")["summary"]["state"]["n"] == 1
