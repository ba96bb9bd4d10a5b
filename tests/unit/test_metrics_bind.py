"""The metrics endpoint listens on loopback unless the operator names another address (issue 18.5)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from engine import metrics
from engine.cli.main import cli


@pytest.fixture
def served() -> Iterator[int]:
    metrics.stop()
    port = metrics.serve(0)
    try:
        yield port
    finally:
        metrics.stop()


def _other_address() -> str | None:
    """An address of this machine that is not loopback, when it has one."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, the kernel picks a route
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


def test_the_endpoint_binds_loopback_by_default(served: int) -> None:
    assert metrics._server is not None
    assert metrics._server.server_address[0] == "127.0.0.1"
    with socket.create_connection(("127.0.0.1", served), timeout=5):
        pass


def test_the_endpoint_is_not_reachable_on_other_interfaces(served: int) -> None:
    other = _other_address()
    if other is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with pytest.raises(OSError):
        socket.create_connection((other, served), timeout=2).close()


def test_run_takes_a_metrics_address() -> None:
    result = CliRunner().invoke(cli, ["run", "--help"])
    assert result.exit_code == 0
    assert "--metrics-addr" in result.output and "127.0.0.1" in result.output
