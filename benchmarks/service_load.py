"""The service under load: many HTTP clients submitting small pipelines to ``headrace serve``'s API.

``python -m benchmarks.service_load [--clients 200] [--runs 2000] [--rounds 2]`` starts the service in a
child process (loopback, its own ``$HEADRACE_HOME``, an engine without Ray: the pipelines are small state
graphs), then ``--clients`` concurrent httpx clients submit ``--runs`` pipelines in all (``POST /v1/runs``
with the pipeline's text, each with a token of the store), ``--rounds`` times. It reports per round the
latency from sending a submission to its ``201`` (p50, p99), the sustained submissions per second, the
server's memory every 10% of the way (flat, or not: a second round must not add to what the first left),
and the machine's load (others' CPU share, as every family records it). The runs go on after their
``201``; the figures are about admitting them. Results: ``benchmarks/results/<date>-service-load.json``.
Not part of ``python -m benchmarks run``: it is the issue's load test, run on demand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.harness import ROOT, MemorySampler, machine_info, shmem_bytes, write_json

PIPELINE = """version: 1
name: load-{n}
state:
  fields:
    n: {{type: integer, default: 0}}
nodes:
  add: {{op: call, fn: "benchmarks.service_load:add_one"}}
edges:
  - {{from: START, to: add}}
  - {{from: add, to: END}}
"""


def add_one(state: Any) -> dict[str, Any]:
    """The pipelines' one node."""
    return {"n": state.n + 1}


def _serve(info_file: str) -> None:
    """The child: the service on a free loopback port until killed (as ``headrace serve`` assembles it,
    without Ray)."""
    import socket
    import threading

    import uvicorn

    from engine.audit import AuditLog
    from engine.runtime.engine import Engine
    from engine.service.app import create_app
    from engine.service.auth import LocalToken, ServiceTokens
    from engine.service.server import ServiceServer, open_served_runs, start_schedules
    from engine.service.tokens import TokenStore

    tokens = ServiceTokens(LocalToken(), TokenStore())
    audit = AuditLog()
    app = create_app(None, tokens, audit)
    engine = Engine(start_ray=False, max_concurrent_runs=64, max_queued=100_000).start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))

    def started() -> None:
        app.state.runs = open_served_runs(engine, asyncio.get_running_loop())
        app.state.runs.start_ticker()
        app.state.schedules = start_schedules(app.state.runs, [], audit)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        Path(info_file).write_text(json.dumps({"url": url, "owner": tokens.token}))

    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, backlog=4096)
    ServiceServer(config, started, lambda: None).run(sockets=[sock])
    threading.Event().wait()


async def _client(
    http: httpx.AsyncClient,
    jobs: asyncio.Queue[int],
    latencies: list[float],
    errors: list[str],
    later: list[float],
) -> None:
    """One client submitting until the jobs run out; ``later`` gets the latencies of its submissions
    after its first (which also opens its connection, all 200 at once at the start of a round)."""
    sent = 0
    while True:
        try:
            n = jobs.get_nowait()
        except asyncio.QueueEmpty:
            return
        body = {"pipeline": PIPELINE.format(n=n % 50), "tenant": f"t{n % 4}", "inputs": {"n": n}}
        began = time.perf_counter()
        try:
            response = await http.post("/v1/runs", json=body)
        except httpx.HTTPError as exc:
            errors.append(type(exc).__name__)
            continue
        latencies.append(time.perf_counter() - began)
        if sent:
            later.append(latencies[-1])
        sent += 1
        if response.status_code != 201:
            errors.append(str(response.status_code))


async def _load(url: str, tokens: list[str], runs: int, server: psutil.Process) -> dict[str, Any]:
    jobs: asyncio.Queue[int] = asyncio.Queue()
    for n in range(runs):
        jobs.put_nowait(n)
    latencies: list[float] = []
    later: list[float] = []
    errors: list[str] = []
    memory: list[tuple[int, float]] = []

    async def watch() -> None:
        step = max(runs // 10, 1)
        while len(latencies) + len(errors) < runs:
            done = len(latencies) + len(errors)
            if not memory or done - memory[-1][0] >= step:
                memory.append((done, server.memory_info().rss / 1e6))
            await asyncio.sleep(0.05)
        memory.append((runs, server.memory_info().rss / 1e6))

    cpu = server.cpu_times()
    # every client is built before the clock starts: building one (its SSL context, even for http) costs
    # the benchmark's own loop tens of milliseconds, which otherwise lands in the first requests' latency
    clients = [
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {t}"}, timeout=120) for t in tokens
    ]
    began = time.perf_counter()
    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(_client(http, jobs, latencies, errors, later) for http in clients))
    wall = time.perf_counter() - began
    for http in clients:
        await http.aclose()
    await watcher
    after = server.cpu_times()
    # the server's CPU over the round: its requests and the runs they started (same process), a
    # figure that others' load on the machine does not inflate the way it inflates wall-clock latency
    used = (after.user + after.system) - (cpu.user + cpu.system)
    ordered = sorted(latencies)
    return {
        "submissions": runs,
        "clients": len(tokens),
        "accepted": len(latencies) - sum(1 for e in errors if e.isdigit()),
        "errors": {e: errors.count(e) for e in set(errors)},
        "wall_seconds": round(wall, 2),
        "submissions_per_s": round(len(latencies) / wall, 1),
        "latency_ms": {
            "p50": round(1000 * statistics.median(ordered), 1),
            "p99": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
            "max": round(1000 * ordered[-1], 1),
        },
        "latency_ms_after_each_clients_first": _percentiles(later),
        "server_cpu_s": round(used, 1),
        "server_cpu_ms_per_submission": round(1000 * used / runs, 2),
        "server_rss_mb_by_submissions": [[n, round(mb, 1)] for n, mb in memory],
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values) or [0.0]
    return {
        "p50": round(1000 * statistics.median(ordered), 1),
        "p99": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
    }


def main(argv: list[str] | None = None) -> None:
    """Run the load test and write its results."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.service_load", description=__doc__)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds of --runs submissions (memory must stay flat across them)",
    )
    parser.add_argument("--serve", metavar="INFO_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve)
        return
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="headrace-load-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEADRACE_")}
        env.update(HEADRACE_HOME=home, PYTHONPATH=str(ROOT))
        info = Path(home) / "info.json"
        child = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.service_load", "--serve", str(info)], cwd=ROOT, env=env
        )
        try:
            while not info.exists():
                if child.poll() is not None:
                    raise SystemExit("the service did not start")
                time.sleep(0.1)
            time.sleep(0.1)
            served = json.loads(info.read_text())
            from engine.service.tokens import TokenStore

            store = TokenStore(Path(home) / "tokens.json")
            tokens = [store.create("operator", ["*"])[0] for _ in range(args.clients)]
            server = psutil.Process(child.pid)
            rounds = []
            with MemorySampler(shmem_bytes()) as sampler:
                for _ in range(args.rounds):
                    rounds.append(asyncio.run(_load(served["url"], tokens, args.runs, server)))
                    print(json.dumps(rounds[-1]), flush=True)
        finally:
            child.kill()
            child.wait(30)
    last = rounds[-1]["server_rss_mb_by_submissions"]
    doc = {
        "family": "service-load",
        "command": " ".join(["python -m benchmarks.service_load", *(argv or sys.argv[1:])]),
        "machine": machine,
        "result": rounds[0],
        "rounds": rounds,
        "memory": sampler.peaks.as_dict(),
        "server_rss_mb_after_each_round": [r["server_rss_mb_by_submissions"][-1][1] for r in rounds],
        # flat: what the last round adds, once the first has warmed the server up (imports, caches) and
        # its runs have ended (they go on after their 201s, into the start of the next round)
        "server_rss_growth_mb_during_last_round": round(last[-1][1] - last[0][1], 1),
    }
    path = write_json(doc, "service-load")
    print(json.dumps(doc["server_rss_mb_after_each_round"]))
    print(f"others' CPU share {doc['memory']['other_cpu_share']}; results: {path}")


if __name__ == "__main__":
    main()
