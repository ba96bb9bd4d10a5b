"""The two systems of the LLM-steps family, and how one run of each is measured.

- **headrace**: a pipeline ``read_csv -> llm_classify -> write_parquet`` (provider ``anthropic``, the real
  SDK over HTTP from the node's pool actor), checked and run in this process with ``check_file`` +
  ``run_checked(progress=False, cache=False)`` inside the Ray session the family started.
- **baseline**: the best one process can do: a plain asyncio loop with ``anthropic.AsyncAnthropic``
  (``max_retries=0``, a 429 re-sent at once) and an ``asyncio.Semaphore(N)``, sending the same request
  bodies. It runs in a child process (``python -m benchmarks.llm_systems SPEC``) so that it does not
  share a GIL with the server, as headrace's pool actor does not.

Both talk to the loopback server of the tests (``tests/loopback``), started in this (the driver's)
process. What the server saw gives the call phase of a run: from the first request it received to the
last answer it sent. ``CpuByRole`` says which processes spent the CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from engine.bench.harness import DISTURBED_SHARE, MAX_EXTRA_REPEATS, repeat_quietly

ROOT = Path(__file__).resolve().parents[1]
MODEL = "claude-haiku-4-5"
LABELS = ("bug", "billing", "other")
PROMPT = "Classify.\nMessage: {text}\n"
"""The node's prompt, with the row's ``text``; the baseline formats the same string."""
TOOL = {
    "name": "record_answer",
    "description": "Record the answer.",
    "input_schema": {
        "type": "object",
        "properties": {"value": {"type": "string", "enum": list(LABELS)}},
        "required": ["value"],
    },
}
"""The tool the anthropic provider forces for ``llm_classify`` (the body the baseline sends is the same)."""
Kind = Literal["throughput", "faults_429", "overhead", "sdk_loop"]
Vendor = Literal["anthropic", "openai"]
MODELS: dict[str, str] = {"anthropic": MODEL, "openai": "gpt-5-mini"}
"""The model each provider's runs name (both priced in the bundled table)."""


def openai_body(text: str) -> dict[str, Any]:
    """The Chat Completions body the ``openai`` provider sends for a row (the baseline sends the same)."""
    from operators.providers.base import LlmRequest
    from operators.providers.openai_chat import request_body

    request = LlmRequest(
        provider="openai", model=MODELS["openai"], prompt=PROMPT.format(text=text), labels=LABELS
    )
    return request_body(request, "json_schema", "max_completion_tokens")


@dataclass(frozen=True)
class LlmCase:
    """One configuration: server latency, requests in flight, pool size, faults, limiter and budget."""

    kind: Kind
    latency_s: float
    in_flight: int
    rows: int
    actors: int = 1
    rate_429: float = 0.0
    limiter: bool = False
    budget: bool = False
    only_if_one_actor_short: bool = False
    """Measure only when one actor (same latency and N) falls short of the target in the call phase."""
    provider: Vendor = "anthropic"
    """Whose SDK both systems use: the node's provider, and the baseline's client."""

    @property
    def name(self) -> str:
        """A short unique label, e.g. ``throughput-200ms-n64-a2``."""
        parts = [self.kind, f"{self.latency_s * 1000:g}ms", f"n{self.in_flight}"]
        if self.actors > 1:
            parts.append(f"a{self.actors}")
        if self.limiter:
            parts.append("limiter")
        if self.budget:
            parts.append("budget")
        if self.provider != "anthropic":
            parts.append(self.provider)
        return "-".join(parts)

    @property
    def ideal_rows_per_s(self) -> float:
        """The bound: N requests in flight, each answered after the latency."""
        return self.in_flight / self.latency_s

    @property
    def baseline_key(self) -> tuple[float, int, float, int, str]:
        """Cases with the same key share one baseline measurement."""
        return (self.latency_s, self.in_flight, self.rate_429, self.rows, self.provider)


# --- inputs and the pipeline ----------------------------------------------------------------------


def texts(rows: int) -> list[str]:
    return [f"message number {i} about {'a crash' if i % 7 == 0 else 'invoices'}" for i in range(rows)]


def write_rows(path: Path, rows: int) -> int:
    """A CSV of ``id`` and ``text`` (about 40 characters a row); returns its size in bytes."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        writer.writerows(enumerate(texts(rows)))
    return path.stat().st_size


def pipeline_yaml(case: LlmCase, csv_path: Path, out: Path, url: str, csv_bytes: int) -> str:
    """The headrace pipeline of ``case`` against the server at ``url``."""
    os.environ.setdefault("HEADRACE_BENCH_KEY", "bench-key")  # pipelines read keys from the environment
    per_actor = max(1, case.in_flight // case.actors)
    # Split i of the input goes to actor i % actors: one byte range per actor spreads the rows.
    split = f", split_bytes: {csv_bytes // case.actors + 1}" if case.actors > 1 else ""
    limits = "\n    rate_limits: {requests_per_minute: 1000000}" if case.limiter else ""
    vendor = case.provider
    base_url = f"{url}/v1" if vendor == "openai" else url  # the openai SDK's base URL ends in /v1
    lines = [
        "version: 1",
        f"name: bench-llm-{case.name}",
        *(["budget: {max_cost_usd: 1000000}"] if case.budget else []),
        "providers:",
        f"  {vendor}:",
        f'    config: {{base_url: "{base_url}", api_key: "${{HEADRACE_BENCH_KEY}}"}}{limits}',
        "nodes:",
        f"  input: {{op: read_csv, path: {json.dumps(str(csv_path))}, "
        f"column_types: {{id: int64, text: string}}{split}}}",
        "  classify:",
        "    op: llm_classify",
        "    input: input",
        f"    provider: {vendor}",
        f"    model: {MODELS[vendor]}",
        f"    prompt: {json.dumps(PROMPT.replace('{text}', '{{ text }}'))}",
        f"    labels: {json.dumps(list(LABELS))}",
        f"    concurrency: {per_actor}",
        *([f"    resources: {{concurrency: {case.actors}}}"] if case.actors > 1 else []),
        f"  output: {{op: write_parquet, input: classify, path: {json.dumps(str(out))}, overwrite: true}}",
    ]
    return "\n".join(lines) + "\n"


# --- where the CPU goes -----------------------------------------------------------------------------


def _role(proc: psutil.Process, root: int) -> str:
    if proc.pid == root:
        return "driver + loopback server"
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "other"
    for marker, role in (
        ("PoolWorker", "pool actor"),
        ("PoolDirector", "pool director"),
        ("TenantLedgerActor", "ledger actor"),
        ("RateLimiterActor", "limiter actor"),
        ("benchmarks.llm_systems", "baseline client"),
    ):
        if marker in cmd:
            return role
    return "ray workers (tasks)" if cmd.startswith("ray::") else "ray system (raylet, gcs, agents)"


class CpuByRole:
    """CPU seconds of this process's tree by role, and of processes outside it, while the block runs.

    Samples every 0.2 s (a process that exits mid-run keeps its last sample; one started mid-run counts
    from zero, so actors' start-up is included). The role is read from Ray's process titles.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self._interval = interval
        self._root = psutil.Process()
        self._first: dict[int, float] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="cpu-by-role", daemon=True)
        self._machine = 0.0
        self._began = 0.0
        self.seconds = 0.0
        self.by_role: dict[str, float] = {}
        self.other_cpu_share = 0.0

    def _sample(self, first: bool = False) -> None:
        with contextlib.suppress(psutil.Error):
            procs = [self._root, *self._root.children(recursive=True)]
            for proc in procs:
                try:
                    times = proc.cpu_times()
                except psutil.Error:
                    continue
                used = times.user + times.system
                if first:
                    self._first[proc.pid] = used
                # A worker's title changes when it becomes an actor; its last role takes its CPU.
                role = _role(proc, self._root.pid)
                if role == "other" and proc.pid in self._last:
                    role = self._last[proc.pid][0]
                self._last[proc.pid] = (role, used)

    def __enter__(self) -> CpuByRole:
        self._began = time.perf_counter()
        self._machine = _machine_busy_s()
        self._sample(first=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop:
            time.sleep(self._interval)
            self._sample()

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()
        self._sample()
        self.seconds = time.perf_counter() - self._began
        for pid, (role, used) in self._last.items():
            self.by_role[role] = self.by_role.get(role, 0.0) + used - self._first.get(pid, 0.0)
        tree = sum(self.by_role.values())
        other = _machine_busy_s() - self._machine - tree
        cores = os.cpu_count() or 1
        self.other_cpu_share = max(0.0, other) / (self.seconds * cores) if self.seconds > 0 else 0.0


def _machine_busy_s() -> float:
    t = psutil.cpu_times()._asdict()
    return float(sum(v for k, v in t.items() if k not in ("idle", "iowait", "guest", "guest_nice")))


# --- measuring --------------------------------------------------------------------------------------


@contextlib.contextmanager
def loopback_server(case: LlmCase) -> Iterator[Any]:
    from tests.loopback import Faults, LLMServer

    faults = Faults(rate_429=case.rate_429, retry_after_s=0.0, seed=1)
    with LLMServer(latency_s=case.latency_s, faults=faults) as server:
        yield server


def _server_figures(server: Any, began: float, ended: float) -> dict[str, Any]:
    """What the server saw between two ``time.monotonic()`` instants."""
    calls = ("messages", "chat.completions")
    seen = [r for r in server.requests if r.endpoint in calls and began <= r.received_at <= ended]
    answered = [r for r in seen if r.status == 200]
    if not answered:
        return {"requests": len(seen), "answered": 0}
    first = min(r.received_at for r in seen)
    last = max(r.responded_at for r in seen)
    answers = sorted(r.responded_at for r in answered)
    p95 = answers[max(0, math.ceil(0.95 * len(answers)) - 1)]
    bodies = [len(json.dumps(r.body)) for r in answered[:100]]
    return {
        "requests": len(seen),
        "answered": len(answered),
        "status_429": sum(1 for r in seen if r.status == 429),
        "first_request_after_s": round(first - began, 3),
        "call_seconds": round(last - first, 3),
        "after_last_answer_s": round(ended - last, 3),
        "last_5pct_s": round(last - p95, 3),
        "request_body_bytes": round(statistics.mean(bodies), 1),
    }


def headrace_once(case: LlmCase, server: Any, work: Path) -> dict[str, Any]:
    from engine.check import check_file
    from engine.runtime import run_checked

    work.mkdir(parents=True, exist_ok=True)
    csv_path = work / "rows.csv"
    size = write_rows(csv_path, case.rows)
    out = work / "out"
    path = work / "pipeline.yaml"
    path.write_text(pipeline_yaml(case, csv_path, out, server.url, size))
    server.clear()
    began_mono = time.monotonic()
    with CpuByRole() as cpu:
        began = time.perf_counter()
        checked = check_file(str(path))
        check_s = time.perf_counter() - began
        summary = run_checked(checked, progress=False, cache=False)
        took = time.perf_counter() - began
    ended_mono = time.monotonic()
    if summary.status != "succeeded":
        raise RuntimeError(f"headrace run {summary.status}: {summary.error}")
    rows_out = summary.nodes["output"].rows
    usage = summary.nodes["classify"].llm or {}
    figures = _server_figures(server, began_mono, ended_mono)
    shutil.rmtree(out, ignore_errors=True)
    teardown = _wait_for_run_actors_to_exit()
    return {
        "teardown_seconds": round(teardown, 2),
        "seconds": took,
        "check_seconds": round(check_s, 4),
        "rows_out": rows_out,
        "requests_billed": usage.get("requests"),
        "requests_failed": usage.get("failed_requests"),
        "cpu_s_by_role": {k: round(v, 2) for k, v in sorted(cpu.by_role.items())},
        "other_cpu_share": round(cpu.other_cpu_share, 3),
        **figures,
    }


_RUN_ACTORS: tuple[str, ...] = ()
"""Roles of actors a run starts and drops: none since LLM pools and the ledger are shared cluster services
(they stay up between runs, so there is nothing to wait for)."""


def _wait_for_run_actors_to_exit(timeout_s: float = 15.0) -> float:
    """Wait until the run's pool and ledger actors have exited; returns the seconds waited.

    Ray kills them once the run drops their handles; a dying actor still spends CPU (about half a
    CPU-second: its worker imports ``ray.dag`` in ``ray.shutdown``), which must not land in the next
    run's measurement.
    """
    began = time.perf_counter()
    root = psutil.Process()
    while time.perf_counter() - began < timeout_s:
        alive = [p for p in root.children(recursive=True) if _role(p, root.pid) in _RUN_ACTORS]
        if not alive:
            break
        time.sleep(0.1)
    return time.perf_counter() - began


def _summarise(case: LlmCase, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of both rates over the repeats, and their ratios to the bound."""
    rates = [case.rows / r["seconds"] for r in runs]
    calls = [r["answered"] / r["call_seconds"] for r in runs if r.get("call_seconds")]
    ideal = case.ideal_rows_per_s
    cpu_total = [sum(r["cpu_s_by_role"].values()) for r in runs]
    roles = sorted({k for r in runs for k in r["cpu_s_by_role"]})
    out: dict[str, Any] = {
        "repeats": len(runs),
        "seconds": [round(r["seconds"], 3) for r in runs],
        "rows_per_s": round(statistics.median(rates), 1),
        "rows_per_s_min": round(min(rates), 1),
        "rows_per_s_max": round(max(rates), 1),
        "ratio_to_ideal": round(statistics.median(rates) / ideal, 3),
        "call_rows_per_s": round(statistics.median(calls), 1) if calls else 0.0,
        "call_rows_per_s_min": round(min(calls), 1) if calls else 0.0,
        "call_rows_per_s_max": round(max(calls), 1) if calls else 0.0,
        "call_ratio_to_ideal": round(statistics.median(calls) / ideal, 3) if calls else 0.0,
        "last_5pct_s": round(statistics.median(r.get("last_5pct_s", 0.0) for r in runs), 3),
        "first_request_after_s": round(
            statistics.median(r.get("first_request_after_s", 0.0) for r in runs), 3
        ),
        "cpu_ms_per_row": round(statistics.median(cpu_total) / case.rows * 1000, 3),
        "cpu_s_by_role": {
            role: round(statistics.median(r["cpu_s_by_role"].get(role, 0.0) for r in runs), 2)
            for role in roles
        },
        "other_cpu_share_max": max(r["other_cpu_share"] for r in runs),
        "rows_out": runs[-1].get("rows_out", runs[-1].get("answered")),
        "status_429": [r.get("status_429", 0) for r in runs],
        "runs": runs,
    }
    return out


def measure_headrace(
    case: LlmCase,
    repeats: int,
    work: Path,
    extra_repeats: int = MAX_EXTRA_REPEATS,
    before_rerun: Callable[[], object] = lambda: None,
) -> dict[str, Any]:
    """Run ``case`` on headrace ``repeats`` times (in this process's Ray session) and summarise.

    A repeat during which other processes took more than :data:`DISTURBED_SHARE` of the machine's CPU
    is run again (at most ``extra_repeats`` times, each after ``before_rerun``, which may wait for the
    machine to quieten); the discarded runs are kept.
    """
    count = iter(range(1_000_000))
    with loopback_server(case) as server:
        measured = repeat_quietly(
            lambda: headrace_once(case, server, work / f"run-{next(count)}"),
            repeats,
            lambda run: float(run["other_cpu_share"]),
            extra_repeats=extra_repeats,
            before_rerun=before_rerun,
        )
    result = _summarise(case, measured.kept)
    result["discarded_repeats"] = [
        {"seconds": round(run["seconds"], 3), "other_cpu_share": run["other_cpu_share"]}
        for run in measured.discarded
    ]
    return result


def measure_baseline(
    case: LlmCase, repeats: int, work: Path, extra_repeats: int = MAX_EXTRA_REPEATS
) -> dict[str, Any]:
    """The asyncio loop of ``case`` in a child process, ``repeats`` times, against a server here.

    Disturbed repeats are run again as for headrace (see :func:`measure_headrace`).
    """
    work.mkdir(parents=True, exist_ok=True)
    spec = {
        "rows": case.rows,
        "in_flight": case.in_flight,
        "repeats": repeats,
        "extra_repeats": extra_repeats,
        "provider": case.provider,
    }
    with loopback_server(case) as server, CpuByRole() as cpu:
        spec["url"] = server.url
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.llm_systems", json.dumps(spec)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise RuntimeError("baseline failed:\n" + "\n".join(tail))
        timings = json.loads(proc.stdout.strip().splitlines()[-1])
        discarded = [
            {"seconds": round(t["seconds"], 3), "other_cpu_share": t["other_cpu_share"]}
            for t in timings
            if t["discarded"]
        ]
        runs = []
        for t in (t for t in timings if not t["discarded"]):
            figures = _server_figures(server, t["began"], t["ended"])
            runs.append(
                {
                    "seconds": t["seconds"],
                    "rows_out": t["answered"],
                    "client_cpu_s": t["client_cpu_s"],
                    "server_cpu_s": t["server_cpu_s"],
                    "cpu_s_by_role": {
                        "baseline client": t["client_cpu_s"],
                        "driver + loopback server": t["server_cpu_s"],
                    },
                    "other_cpu_share": t["other_cpu_share"],
                    **figures,
                }
            )
    result = _summarise(case, runs)
    result["discarded_repeats"] = discarded
    result["whole_child_cpu_s_by_role"] = {k: round(v, 2) for k, v in sorted(cpu.by_role.items())}
    return result


def baseline_main(spec_json: str) -> None:
    """The baseline's child process (``python -m benchmarks.llm_systems SPEC``): the asyncio loop,
    timed; prints one JSON line of timings."""
    import anthropic  # noqa: F401  (imported before the clock starts)
    import openai  # noqa: F401

    spec = json.loads(spec_json)
    server = psutil.Process(os.getppid())
    prompts = texts(spec["rows"])
    timings: list[dict[str, Any]] = []
    extra = spec["extra_repeats"]
    while sum(1 for t in timings if not t["discarded"]) < spec["repeats"]:
        server_cpu, own_cpu, busy = _cpu(server), time.process_time(), _machine_busy_s()
        began_mono, began = time.monotonic(), time.perf_counter()
        loop = _openai_loop if spec.get("provider") == "openai" else _baseline_loop
        answered = asyncio.run(loop(spec["url"], prompts, spec["in_flight"]))
        took = time.perf_counter() - began
        ended_mono = time.monotonic()
        client_s, server_s = time.process_time() - own_cpu, _cpu(server) - server_cpu
        other = _machine_busy_s() - busy - client_s - server_s
        share = round(max(0.0, other) / (took * (os.cpu_count() or 1)), 3)
        discard = share > DISTURBED_SHARE and sum(1 for t in timings if t["discarded"]) < extra
        timings.append(
            {
                "discarded": discard,
                "seconds": took,
                "began": began_mono,
                "ended": ended_mono,
                "answered": answered,
                "client_cpu_s": round(client_s, 2),
                "server_cpu_s": round(server_s, 2),
                "other_cpu_share": share,
            }
        )
    print(json.dumps(timings), flush=True)


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def _baseline_loop(url: str, texts: Sequence[str], in_flight: int) -> int:
    """Send one request per text, ``in_flight`` at a time; a 429 is sent again at once."""
    import anthropic

    client = anthropic.AsyncAnthropic(base_url=url, api_key="bench-key", max_retries=0)
    slots = asyncio.Semaphore(in_flight)

    async def one(text: str) -> None:
        async with slots:
            while True:
                try:
                    await client.messages.create(
                        model=MODEL,
                        max_tokens=1024,
                        messages=[{"role": "user", "content": PROMPT.format(text=text)}],
                        tools=[TOOL],  # type: ignore[list-item]
                        tool_choice={"type": "tool", "name": TOOL["name"]},  # type: ignore[typeddict-item]
                    )
                    return
                except anthropic.RateLimitError:
                    continue

    try:
        await asyncio.gather(*(one(t) for t in texts))
    finally:
        await client.close()
    return len(texts)


async def _openai_loop(url: str, texts: Sequence[str], in_flight: int) -> int:
    """The same loop with ``openai.AsyncOpenAI``: the body the ``openai`` provider sends for each row."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="bench-key", max_retries=0)
    slots = asyncio.Semaphore(in_flight)
    bodies = [openai_body(text) for text in texts]  # built before the loop: the SDK's work is measured

    async def one(body: dict[str, Any]) -> None:
        async with slots:
            while True:
                try:
                    await client.chat.completions.create(**body)
                    return
                except openai.RateLimitError:
                    continue

    try:
        await asyncio.gather(*(one(b) for b in bodies))
    finally:
        await client.close()
    return len(texts)


if __name__ == "__main__":
    baseline_main(sys.argv[1])
