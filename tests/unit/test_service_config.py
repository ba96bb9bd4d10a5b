"""Serving beyond loopback needs TLS (or --insecure); HTTPS with --tls-cert/--tls-key; the service's
configuration file: tenants' quotas in force, every problem at its line and column."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from engine.cli.main import cli
from engine.errors import ConfigError, HeadraceError
from engine.runtime.tenants import TenantQuota
from engine.service.config import load_service_config
from engine.service.server import check_exposure
from tests.service_live import GRAPH, live_service, wait_status
from tests.service_nodes import HOLD_ENV

HELD = GRAPH.replace("name: tiny-graph", "name: held").replace("service_nodes:add_one", "service_nodes:held")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HEADRACE_HOME", str(tmp_path))
    for name in ("HEADRACE_CHECKPOINTS", "HEADRACE_AUDIT_LOG", "HEADRACE_TOKENS", "HEADRACE_POLICY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def cert(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    crt, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ],
        check=True,
        capture_output=True,
    )
    yield crt, key


def _serve(home: Path, *args: str) -> Result:
    """``headrace serve ARGS`` in this process (it refuses before starting Ray or binding anything); the
    ``headrace`` logger it configures is put back as it was for the tests that follow."""
    logger = logging.getLogger("headrace")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    try:
        return CliRunner().invoke(cli, ["serve", *args], env={"HEADRACE_HOME": str(home)})
    finally:
        logger.handlers[:], logger.propagate, logger.level = saved[0], saved[1], saved[2]


def test_beyond_loopback_the_server_needs_tls_unless_told_insecure(tmp_path: Path) -> None:
    with pytest.raises(HeadraceError, match="without TLS"):
        check_exposure("0.0.0.0", None, None, insecure=False)
    check_exposure("0.0.0.0", None, None, insecure=True)
    check_exposure("127.0.0.1", None, None, insecure=False)
    with pytest.raises(HeadraceError, match="both --tls-cert and --tls-key"):
        check_exposure("0.0.0.0", str(tmp_path / "c.pem"), None, insecure=False)
    # the command refuses before it starts anything (no Ray, no socket)
    refused = _serve(tmp_path, "--host", "0.0.0.0", "--port", "0")
    assert refused.exit_code == 1 and "without TLS" in refused.output


def test_https_with_a_certificate(home: Path, cert: tuple[Path, Path]) -> None:
    with live_service(home, engine=False, tls=cert) as service:
        assert service.url.startswith("https://")
        with httpx.Client(verify=False) as plain_check:
            assert plain_check.get(service.url + "/healthz").status_code == 200
        import ssl

        trusted = httpx.get(service.url + "/healthz", verify=ssl.create_default_context(cafile=str(cert[0])))
        assert trusted.status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(service.url + "/healthz")  # an unknown authority is not trusted
        with pytest.raises(httpx.HTTPError):
            httpx.get(service.url.replace("https://", "http://") + "/healthz", timeout=5)


def test_a_bad_configuration_is_refused_with_every_problem_located(tmp_path: Path) -> None:
    bad = tmp_path / "service.yaml"
    bad.write_text(
        "policy:\n  name: closed\n  roots: [/data]\n"
        "tenants:\n"
        "  team-a:\n    quota:\n      max_concurrent_runs: 0\n      max_cost_usd: 5\n"
        "  'bad name':\n    quota: {}\n"
        "schedulez: []\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_service_config(str(bad))
    located = sorted((d.line, d.col, d.message) for d in caught.value.diagnostics)
    assert [(line, col) for line, col, _ in located] == [(7, 28), (8, 7), (9, 3), (11, 1)]
    assert "greater than or equal to 1" in located[0][2] and "max_cost_usd" in located[1][2]
    served = _serve(tmp_path, "--config", str(bad), "--port", "0")
    assert served.exit_code == 1 and f"{bad}:8:7: error:" in served.output


def test_a_tenants_quota_from_the_configuration_is_in_force(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "service.yaml"
    good.write_text("tenants:\n  team-a:\n    quota: {max_concurrent_runs: 1}\n")
    config = load_service_config(str(good))
    assert config.quotas() == {"team-a": TenantQuota(max_concurrent_runs=1)}
    marker = tmp_path / "hold"
    marker.touch()
    monkeypatch.setenv(HOLD_ENV, str(marker))
    with live_service(home, quotas=config.quotas()) as service:
        owner = service.client(service.owner)
        first, second, other = (
            owner.post("/v1/runs", json={"pipeline": HELD, "tenant": t}).json()["run_id"]
            for t in ("team-a", "team-a", "team-b")
        )
        wait_status(owner, first, "running")
        wait_status(owner, other, "running")  # another tenant is not held back
        time.sleep(0.2)
        assert owner.get(f"/v1/runs/{second}").json()["status"] == "queued"
        marker.unlink()
        for run_id in (first, second, other):
            wait_status(owner, run_id, "succeeded")


def test_schedules_in_the_configuration_are_checked_and_located(tmp_path: Path) -> None:
    path = tmp_path / "service.yaml"
    path.write_text(
        "schedules:\n"
        "  - {name: nightly, tenant: a, path: /srv/p.yaml, cron: '0 2 * * *', catch_up: last}\n"
        "  - name: broken\n    tenant: a\n    path: /srv/p.yaml\n    cron: 'at two'\n    overlap: sometimes\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_service_config(str(path))
    lines = sorted((d.line, d.message) for d in caught.value.diagnostics)
    assert [line for line, _ in lines] == [6, 7]
    assert "not a valid cron" in lines[0][1] and "overlap" in lines[1][1]
    path.write_text(path.read_text().split("  - name: broken")[0])
    (nightly,) = load_service_config(str(path)).schedules
    assert (nightly.name, nightly.cron, nightly.catch_up) == ("nightly", "0 2 * * *", "last")
