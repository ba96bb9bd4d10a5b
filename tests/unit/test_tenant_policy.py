"""A tenant's policy on a service: applied on top of the server's it can only take away (the merge
rules), a configuration whose tenant policy would widen the server's is refused at its line, and the run's
policy is the one in force for the checks made while it runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.policy import ENV_VARIABLES, Policy, active_policy
from engine.service.config import load_service_config, tenant_policy_problems
from engine.service.server import ServeOptions, serve


def test_a_tenants_policy_narrows_the_servers_and_never_widens_it(tmp_path: Path) -> None:
    data, a, b = tmp_path / "data", tmp_path / "data" / "a", tmp_path / "data" / "b"
    server = Policy.closed(roots=[data, "s3://bucket/shared"], schemes=["file", "s3"], modules=["acme"])
    tenant = Policy.closed(roots=[a, tmp_path / "etc", "s3://bucket"], modules=["acme.etl", "os"])
    merged = server.narrowed(tenant)
    assert merged.name == "closed"
    # a folder inside the server's stays; the server's own folder inside the tenant's wider one stays;
    # a folder the server does not allow goes
    assert merged.roots == tuple(sorted([os.path.realpath(a), "s3://bucket/shared"]))
    assert merged.schemes == frozenset({"file", "s3"})
    assert merged.modules == ("acme.etl",)
    assert merged.path_problem(str(a / "x.csv")) is None
    assert merged.path_problem(str(b / "x.csv")) is not None  # the server allows it, the tenant does not
    assert merged.path_problem(str(tmp_path / "etc" / "passwd")) is not None  # the tenant cannot widen
    assert merged.module_problem("os:system") is not None
    assert merged.module_problem("acme.etl.clean:fn") is None and merged.module_problem("acme.ml:fn")
    # narrowing is symmetric, and an open side leaves the other's lists as they are
    assert tenant.narrowed(server) == merged
    opened = Policy.open(schemes=["file"])
    assert opened.narrowed(Policy.closed(roots=[a])).roots == (os.path.realpath(a),)
    assert opened.narrowed(Policy.closed(roots=[a])).name == "closed"
    assert Policy.open().narrowed(Policy.open(modules=["acme"])) == Policy.open(modules=["acme"])
    # what a tenant lists beyond the server's is named (the configuration refuses it)
    assert server.beyond(tenant) == [
        ("roots", os.path.realpath(tmp_path / "etc")),
        ("roots", "s3://bucket"),  # wider than the server's s3://bucket/shared
        ("modules", "os"),
    ]
    assert Policy.closed(roots=[a], schemes=["file"]).beyond(Policy.closed(roots=["s3://x/"])) == [
        ("roots", "s3://x"),
        ("schemes", "s3"),
    ]


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


def test_a_tenant_policy_widening_the_servers_is_an_error_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_HOME", str(tmp_path))
    for name in ENV_VARIABLES:  # serve sets the configuration's policy in the environment: undone after
        monkeypatch.setenv(name, "")  # (recorded, so even a variable that was unset is removed again)
        monkeypatch.delenv(name)
    data = tmp_path / "data"
    config = tmp_path / "service.yaml"
    config.write_text(
        f"policy:\n  name: closed\n  roots: [{data}]\n  modules: [acme]\n"
        "tenants:\n"
        f"  team-a:\n    policy:\n      roots: [{data}/a, /etc]\n      modules: [acme.etl]\n"
        "  team-b:\n    policy:\n      name: open\n      modules: [acme, subprocess]\n"
        "  team-c:\n    quota: {max_concurrent_runs: 1}\n"
    )
    settings = load_service_config(str(config))
    server = settings.policy.policy() if settings.policy else Policy()
    problems = tenant_policy_problems(str(config), settings, server)
    located = sorted((d.line, d.col, d.message) for d in problems)
    lines = config.read_text().splitlines()
    at = [(8, lines[7].index("/etc]") + 1), (13, lines[12].index("subprocess") + 1)]
    assert [(line, col) for line, col, _ in located] == at
    assert "tenant 'team-a': root '/etc' is not allowed by the server's closed policy" in located[0][2]
    assert "never widen it" in located[0][2] and "tenant 'team-b': module 'subprocess'" in located[1][2]
    assert set(settings.policies()) == {"team-a", "team-b"}  # team-c keeps the server's
    # `headrace serve --config` refuses it before it binds or starts anything
    with pytest.raises(ConfigError) as caught:
        serve(ServeOptions(port=0, config=str(config)), announce=lambda _: None)
    assert [(d.line, d.col) for d in caught.value.diagnostics] == at
