"""Tokens, roles and tenants of the service, and the audit of its changes and refusals: the token store
and ``headrace tokens`` alone, then a real uvicorn server on loopback driven with httpx (state-graph
runs on an engine without Ray)."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.service.tokens import TokenError, TokenStore, parse_expiry
from tests.cli import run_headrace
from tests.service_live import GRAPH, LiveService, live_service, wait_status


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HEADRACE_HOME", str(tmp_path))
    monkeypatch.delenv("HEADRACE_CHECKPOINTS", raising=False)
    monkeypatch.delenv("HEADRACE_AUDIT_LOG", raising=False)
    monkeypatch.delenv("HEADRACE_TOKENS", raising=False)
    return tmp_path


@pytest.fixture
def service(home: Path) -> Iterator[LiveService]:
    with live_service(home) as live:
        yield live


# --- the store ---------------------------------------------------------------------------------------


def test_the_store_keeps_only_salted_hashes_in_a_private_file(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token, entry = store.create("operator", ["a", "b"], name="ci")
    text = store.path.read_text()
    secret = token.split("_", 2)[2]
    assert secret not in text and token not in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert json.loads(text)["tokens"][0]["hash"] == entry.hash
    assert store.verify(token).problem is None
    assert (
        store.verify(token[:-1] + ("A" if token[-1] != "A" else "B")).problem
        == "wrong secret for this token id"
    )
    assert store.verify("hr_000000000000_x").problem == "unknown token"
    # a second token with the same role and tenants hashes differently (its own salt)
    _, other = store.create("operator", ["a", "b"])
    assert other.salt != entry.salt and other.hash != entry.hash


def test_expired_and_revoked_tokens_are_refused_and_a_reader_sees_changes(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token, entry = store.create("viewer", ["a"], expires=time.time() + 60)
    reader = TokenStore(tmp_path / "tokens.json")  # a server's view of the same file
    assert reader.verify(token).problem is None
    assert reader.verify(token, now=time.time() + 120).problem == f"token {entry.id} is expired"
    store.revoke(entry.id)
    assert reader.verify(token).problem == f"token {entry.id} is revoked"
    with pytest.raises(TokenError, match="no token 'nope'"):
        store.revoke("nope")


def test_expiry_and_tenant_spellings() -> None:
    assert parse_expiry("30d", now=0) == 30 * 86400
    assert parse_expiry("12h", now=0) == 12 * 3600
    assert parse_expiry("2030-01-01", now=0) > 0
    for bad in ("soon", "-3d", "2001-01-01"):
        with pytest.raises(TokenError):
            parse_expiry(bad)
    with pytest.raises(TokenError, match="tenant 'a b'"):
        TokenStore("/nonexistent/x.json").create("viewer", ["a b"])
    with pytest.raises(TokenError, match="role 'root'"):
        TokenStore("/nonexistent/x.json").create("root", ["a"])


def test_the_tokens_command_prints_the_token_once_on_its_last_line(home: Path) -> None:
    env = {"HEADRACE_HOME": str(home)}
    made = run_headrace(
        "tokens",
        "create",
        "--role",
        "operator",
        "--tenant",
        "t1",
        "--tenant",
        "t2",
        "--expires",
        "30d",
        "--name",
        "ci",
        env=env,
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.splitlines()[-1]
    assert token.startswith("hr_") and " " not in token
    store = TokenStore(home / "tokens.json")
    assert store.verify(token).problem is None
    listed = run_headrace("tokens", "list", "--json", env=env)
    (row,) = json.loads(listed.stdout)
    assert row["role"] == "operator" and row["tenants"] == ["t1", "t2"] and row["state"] == "active"
    assert token not in listed.stdout and token.split("_", 2)[2] not in listed.stdout
    revoked = run_headrace("tokens", "revoke", row["id"], env=env)
    assert revoked.returncode == 0
    assert store.verify(token).problem == f"token {row['id']} is revoked"
    audited = [json.loads(line)["event"] for line in (home / "audit.jsonl").read_text().splitlines()]
    assert audited == ["token_created", "token_revoked"]
    assert run_headrace("tokens", "create", "--role", "viewer", env=env).returncode == 2  # no --tenant


# --- the API -----------------------------------------------------------------------------------------


def test_no_anonymous_access_but_health(service: LiveService) -> None:
    anonymous = service.client(None)
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/readyz").status_code == 200
    for method, url in (("GET", "/v1/runs/x"), ("POST", "/v1/runs/x/cancel"), ("GET", "/v1/runs/x/events")):
        response = anonymous.request(method, url)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert anonymous.post("/v1/runs", json={"pipeline": GRAPH}).status_code == 401


def test_missing_unknown_expired_and_revoked_tokens_get_401(service: LiveService) -> None:
    expired, expired_entry = service.store.create("operator", ["a"], expires=time.time() + 0.5)
    revoked, revoked_entry = service.store.create("operator", ["a"])
    service.store.revoke(revoked_entry.id)
    time.sleep(0.6)
    for token in (expired, revoked, "hr_000000000000_nope", "not-even-a-token"):
        response = service.client(token).post("/v1/runs", json={"pipeline": GRAPH, "tenant": "a"})
        assert response.status_code == 401, token
    reasons = [(e["token"], e["reason"], e["status"]) for e in service.api_entries()]
    assert (expired_entry.id, f"token {expired_entry.id} is expired", 401) in reasons
    assert (revoked_entry.id, f"token {revoked_entry.id} is revoked", 401) in reasons


def test_roles_and_tenants_decide_what_a_token_may_do(service: LiveService) -> None:
    operator_a = service.client(service.token("operator", "a"))
    viewer_a = service.client(service.token("viewer", "a"))
    viewer_b = service.client(service.token("viewer", "b"))

    refused = viewer_a.post("/v1/runs", json={"pipeline": GRAPH, "tenant": "a", "inputs": {"n": 1}})
    assert refused.status_code == 403 and "operator" in refused.json()["detail"]
    outside = operator_a.post("/v1/runs", json={"pipeline": GRAPH, "tenant": "b"})
    assert outside.status_code == 403 and "'b'" in outside.json()["detail"]

    created = operator_a.post("/v1/runs", json={"pipeline": GRAPH, "tenant": "a", "inputs": {"n": 1}})
    assert created.status_code == 201, created.text
    run_id = created.json()["run_id"]
    done = wait_status(viewer_a, run_id, "succeeded")
    assert done["tenant"] == "a"
    assert viewer_b.get(f"/v1/runs/{run_id}").status_code == 403
    assert viewer_b.get(f"/v1/runs/{run_id}/events").status_code == 403
    assert viewer_a.post(f"/v1/runs/{run_id}/cancel").status_code == 403  # a viewer cancels nothing
    assert operator_a.post(f"/v1/runs/{run_id}/cancel").status_code == 200

    # the discovery file's token is the local user's admin of every tenant
    owner = service.client(service.owner)
    assert owner.get(f"/v1/runs/{run_id}").status_code == 200
    assert owner.post("/v1/runs", json={"pipeline": GRAPH, "tenant": "b"}).status_code == 201


def test_changes_and_refusals_are_audited_with_token_role_tenant_and_status(service: LiveService) -> None:
    token, entry = service.store.create("operator", ["a"])
    operator = service.client(token)
    created = operator.post("/v1/runs", json={"pipeline": GRAPH, "tenant": "a"})
    run_id = created.json()["run_id"]
    operator.post("/v1/runs", json={"pipeline": GRAPH, "tenant": "z"})
    operator.post(f"/v1/runs/{run_id}/cancel")
    operator.get(f"/v1/runs/{run_id}")  # a read that is allowed: not audited
    entries = service.api_entries()
    rows = [
        (e["method"], e["path"], e["status"], e["outcome"], e["token"], e["role"], e["tenant"])
        for e in entries
    ]
    assert rows == [
        ("POST", "/v1/runs", 201, "ok", entry.id, "operator", "a"),
        ("POST", "/v1/runs", 403, "refused", entry.id, "operator", "z"),
        ("POST", f"/v1/runs/{run_id}/cancel", 200, "ok", entry.id, "operator", "a"),
    ]
    assert entries[0]["run_id"] == run_id
    assert service.audit.verify() == []
    shown = run_headrace("audit", "show", "--log", str(service.audit.path))
    assert f'"run_id": "{run_id}"' in shown.stdout and '"outcome": "refused"' in shown.stdout


def test_an_admin_manages_tokens_within_its_tenants_over_the_api(service: LiveService) -> None:
    admin = service.client(service.token("admin", "a", "b"))
    operator = service.client(service.token("operator", "a"))
    body = {"role": "viewer", "tenants": ["a"], "expires_s": 3600, "name": "dashboard"}
    assert operator.post("/v1/tokens", json=body).status_code == 403  # an operator manages no tokens
    assert admin.post("/v1/tokens", json={**body, "tenants": ["c"]}).status_code == 403
    assert admin.post("/v1/tokens", json={**body, "tenants": ["*"]}).status_code == 403
    created = admin.post("/v1/tokens", json=body)
    assert created.status_code == 201
    token, ident = created.json()["token"], created.json()["id"]
    viewer = service.client(token)
    assert viewer.get("/v1/runs").status_code == 200
    listed = admin.get("/v1/tokens").json()["tokens"]
    assert ident in [t["id"] for t in listed] and all("token" not in t and "hash" not in t for t in listed)
    outsider = service.store.create("viewer", ["z"])[1].id
    assert outsider not in [t["id"] for t in listed]
    assert admin.delete(f"/v1/tokens/{outsider}").status_code == 403
    assert admin.delete(f"/v1/tokens/{ident}").json()["state"] == "revoked"
    assert viewer.get("/v1/runs").status_code == 401
    changes = [(e["method"], e["path"], e["status"]) for e in service.api_entries() if "/tokens" in e["path"]]
    assert ("POST", "/v1/tokens", 201) in changes and ("DELETE", f"/v1/tokens/{ident}", 200) in changes
