"""A service killed with ``kill -9`` and started again: every run it had accepted is still listed by
``GET /v1/runs``, as finished, or ``died`` (never started, or stopped mid-way), and a died run resumes.
The service runs in a process of its own (no Ray) under the test's ``$HEADRACE_HOME``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.cli import ROOT
from tests.service_live import GRAPH, wait_status
from tests.service_nodes import HOLD_ENV

HELD = GRAPH.replace("name: tiny-graph", "name: held").replace("service_nodes:add_one", "service_nodes:held")


@contextmanager
def _service(home: Path, marker: Path) -> Iterator[tuple[subprocess.Popen[bytes], httpx.Client]]:
    info = home / f"info-{time.monotonic_ns()}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADRACE_")}
    env.update(HEADRACE_HOME=str(home), PYTHONPATH=str(ROOT), **{HOLD_ENV: str(marker)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.service_proc", str(info)], cwd=ROOT, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not info.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the service did not start"
            time.sleep(0.1)
        time.sleep(0.05)  # the file is written whole before it is closed; read it after
        data: dict[str, Any] = json.loads(info.read_text())
        headers = {"Authorization": f"Bearer {data['owner']}"}
        with httpx.Client(base_url=data["url"], headers=headers, timeout=60) as client:
            yield proc, client
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def test_kill_9_loses_no_accepted_run_and_a_died_run_resumes(tmp_path: Path) -> None:
    marker = tmp_path / "hold"
    marker.touch()
    with _service(tmp_path, marker) as (proc, client):
        done = client.post("/v1/runs", json={"pipeline": GRAPH, "tenant": "a"}).json()["run_id"]
        wait_status(client, done, "succeeded")
        running = client.post("/v1/runs", json={"pipeline": HELD, "tenant": "a"}).json()["run_id"]
        queued = [
            client.post("/v1/runs", json={"pipeline": GRAPH, "tenant": "a"}).json()["run_id"]
            for _ in range(2)
        ]
        wait_status(client, running, "running")
        assert all(client.get(f"/v1/runs/{q}").json()["status"] == "queued" for q in queued)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    marker.unlink()
    with _service(tmp_path, marker) as (_, client):
        listed = {r["run_id"]: r["status"] for r in client.get("/v1/runs").json()["runs"]}
        assert listed == {done: "succeeded", running: "died", queued[0]: "died", queued[1]: "died"}
        died = client.get(f"/v1/runs/{running}").json()
        assert died["status"] == "died" and "resume" in died["error"]["message"]
        assert (
            client.get(f"/v1/runs/{queued[0]}")
            .json()["error"]["message"]
            .startswith("the server stopped before the run started")
        )
        assert client.post(f"/v1/runs/{running}/resume", json={}).status_code == 201
        assert wait_status(client, running, "succeeded")["summary"]["state"]["n"] == 1
