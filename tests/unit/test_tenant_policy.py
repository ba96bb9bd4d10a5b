"""A tenant's policy on a service widens the server's for that tenant's runs only (the merge rules), a
configuration whose tenant policy lists what the server's does not allow loads and gives that tenant the
union, and the run's policy is the one in force for the checks made while it runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.policy import Policy, active_policy
from engine.service.config import load_service_config


def test_a_tenants_policy_widens_the_servers(tmp_path: Path) -> None:
    shared, a, b = tmp_path / "shared", tmp_path / "a", tmp_path / "b"
    server = Policy.closed(roots=[shared], modules=["acme.common"])
    tenant = Policy.closed(roots=[a, shared / "sub", "s3://bucket/a"], modules=["acme.etl", "acme.common.io"])
    merged = server.widened(tenant)
    assert merged.name == "closed"
    # roots and modules of either, each once: one inside another of the union is dropped
    assert merged.roots == tuple(sorted([os.path.realpath(a), os.path.realpath(shared), "s3://bucket/a"]))
    assert merged.schemes == frozenset({"file", "s3"})
    assert merged.modules == ("acme.common", "acme.etl")
    assert merged.path_problem(str(a / "x.csv")) is None  # the server alone refuses it
    assert server.path_problem(str(a / "x.csv")) is not None
    assert merged.path_problem(str(shared / "x.csv")) is None
    assert merged.path_problem(str(b / "x.csv")) is not None  # nobody's
    assert (
        merged.module_problem("acme.etl.clean:fn") is None and merged.module_problem("acme.common:fn") is None
    )
    assert merged.module_problem("os:system") is not None
    # widening is symmetric; an unrestricted side makes the union unrestricted, and open wins over closed
    assert tenant.widened(server) == merged
    opened = Policy.open(schemes=["file"])
    assert opened.widened(Policy.closed(roots=[a])).roots is None
    assert opened.widened(Policy.closed(roots=[a])).name == "open"
    assert Policy.open(modules=["acme"]).widened(Policy.closed(modules=["os"])).modules == ("acme", "os")
    assert Policy.closed(roots=[a]).widened(Policy.open(modules=["x"])).modules == ("x",)
    assert Policy.closed().widened(Policy.closed()) == Policy.closed()


def test_a_tenant_policy_beyond_the_servers_loads_and_widens_it_for_that_tenant_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "service.yaml"
    config.write_text(
        f"policy:\n  name: closed\n  roots: [{data}/shared]\n  modules: [acme]\n"
        "tenants:\n"
        f"  team-a:\n    policy:\n      roots: [{data}/a, /etc]\n      modules: [acme.etl]\n"
        "  team-b:\n    policy:\n      name: closed\n      modules: [subprocess]\n"
        "  team-c:\n    quota: {max_concurrent_runs: 1}\n"
    )
    settings = load_service_config(str(config))  # listing what the server does not allow is no error
    assert settings.policy is not None
    server = settings.policy.policy()
    own = settings.policies()
    assert set(own) == {"team-a", "team-b"}  # team-c gets the server's only
    team_a, team_b = server.widened(own["team-a"]), server.widened(own["team-b"])
    assert team_a.path_problem("/etc/hostname") is None and team_b.path_problem("/etc/hostname") is not None
    assert team_a.path_problem(str(data / "a" / "x.csv")) is None
    assert team_b.path_problem(str(data / "a" / "x.csv")) is not None
    assert server.path_problem(str(data / "a" / "x.csv")) is not None
    assert team_b.module_problem("subprocess:run") is None and team_a.module_problem("subprocess:run")
    assert team_a.path_problem(str(data / "shared" / "x.csv")) is None  # the server's shared root
    assert team_b.path_problem(str(data / "shared" / "x.csv")) is None


def test_the_runs_policy_is_in_force_inside_its_block_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_POLICY", "open")
    tenant = Policy.closed(roots=["/data/a"])
    assert active_policy().name == "open"
    with tenant.active():
        assert active_policy() == tenant
        with Policy.closed().active():
            assert active_policy().roots == ()
        assert active_policy() == tenant
    assert active_policy().name == "open"


def test_a_malformed_tenant_policy_is_refused_at_its_line(tmp_path: Path) -> None:
    config = tmp_path / "service.yaml"
    config.write_text(
        "tenants:\n  team-a:\n    policy:\n      rootz: [/data/a]\n      modules: 5\n      name: shut\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_service_config(str(config))
    located = sorted((d.line, d.message) for d in caught.value.diagnostics)
    assert [line for line, _ in located] == [4, 5, 6], located
    assert "rootz" in located[0][1]
