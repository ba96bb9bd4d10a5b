"""The "LLM steps" family: how close an ``llm_classify`` node comes to the bound N / latency.

A pipeline ``read_csv -> llm_classify -> write_parquet`` runs against the loopback server of the tests
(``tests/loopback``), which answers every request after a fixed latency, so with N requests in flight the
best possible rate is N / latency rows per second. The real ``anthropic`` SDK talks HTTP to it from the
node's pool actor. Cases:

- ``throughput``: latency 50 ms and 200 ms, N in {16, 64}; N = 64 also with two actors in the pool
  (``resources: {concurrency: 2}``, ``concurrency: 32`` each, so N stays 64 in all);
- ``faults_429``: the same with 10% of requests answered 429 (``retry-after: 0``); the node retries
  with its default policy;
- ``sdk_loop``: 20 ms, N = 64, on the ``openai`` and the ``anthropic`` provider, each against the same
  SDK's bare loop: both are CPU-bound there, so the ratio is headrace's per-row CPU against the SDK's;
- ``overhead``: 50 ms, N = 64, plain, with a rate limit that never binds (1e6 requests per minute), with
  a run budget (1e6 USD), and with both: the pool actor leases blocks of both from the cluster's limiter
  and ledger service and spends them locally, so a call awaits neither (a round trip per block).

The baseline is the best one process can do: a plain asyncio loop with ``anthropic.AsyncAnthropic`` (or
``openai.AsyncOpenAI`` for the ``openai`` cases)
(``max_retries=0``, 429s retried at once) and an ``asyncio.Semaphore(N)``, sending the same requests
(same body as the node's) to the same server. It runs in a child process, so that neither it nor
headrace's pool actor shares a GIL with the server. How each system is run and measured is in
``benchmarks.llm_systems``; this module picks the cases, keeps the machine quiet and writes results.

The server runs in this (the driver's) process, on the same 2 cores as Ray and the client: its CPU
(about 1 ms per request) is part of every figure. Two rates come out of each run:

- ``rows_per_s``: rows / wall seconds of the run (headrace: ``check_file`` + ``run_checked``, which
  includes starting the run's ledger and pool actors; the baseline: creating the client and the loop);
- ``call_rows_per_s``: rows answered / seconds from the first request the server received to the last
  answer it sent: the rate of the call phase, where the bound applies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.harness import Mode, RunOptions, ray_running
from benchmarks.llm_cache import CacheCase, measure_cache
from benchmarks.llm_systems import (
    DISTURBED_SHARE,
    MAX_EXTRA_REPEATS,
    ROOT,
    CpuByRole,
    LlmCase,
    headrace_once,
    loopback_server,
    measure_baseline,
    measure_headrace,
)

REPEATS = 3
MAX_LOAD = 1.5
"""A one-minute load average above this before the family starts is waited out (the machine is shared)."""
LOAD_WAITS = 6
LOAD_WAIT_S = 30.0
TARGET_SHARE = 0.9
"""The issue's target: at 200 ms latency, at least this share of N / 0.2 s rows per second."""

SDK_LOOP_CASES = (
    # 20 ms, N = 64: the bound (3,200 rows/s) is far beyond what 2 cores serve, so both systems run
    # CPU-bound and the ratio is per-row CPU: headrace's pool against one process with the bare SDK
    LlmCase("sdk_loop", 0.02, 64, 3_000, provider="openai"),
    LlmCase("sdk_loop", 0.02, 64, 3_000),
)
"""Issue 22's per-row check, on each SDK: headrace's calls at ≥ 0.9× the rows/s of a bare SDK loop."""
SDK_LOOP_SHARE = 0.9

OVERHEAD_CASES = (
    LlmCase("throughput", 0.05, 64, 3_000),
    LlmCase("overhead", 0.05, 64, 3_000, limiter=True, budget=True),
)
"""Issue 22 point 3: a run with a budget and a rate limit (leased in blocks) against the same run without
them, at 50 ms and N = 64, in the same session; the target is at least ``TARGET_SHARE`` of it."""

QUICK_CASES = (
    # rows for about 4.5 s of calls at the bound, so that every run lasts 5 s or more
    LlmCase("throughput", 0.2, 16, 360),
    LlmCase("throughput", 0.2, 64, 1_440),
    LlmCase("throughput", 0.2, 64, 1_440, actors=2, only_if_one_actor_short=True),
    *SDK_LOOP_CASES,
)
"""``--quick``: throughput at 200 ms, N in {16, 64} (about 3 minutes on 2 cores when the machine is
quiet); the 429 and overhead cases are in the full run only."""

FULL_CASES = (
    # 200 ms: about 8 s of calls at the bound
    LlmCase("throughput", 0.2, 16, 640),
    LlmCase("throughput", 0.2, 64, 2_560),
    LlmCase("throughput", 0.2, 64, 2_560, actors=2),
    LlmCase("faults_429", 0.2, 16, 640, rate_429=0.1),
    LlmCase("faults_429", 0.2, 64, 2_560, rate_429=0.1),
    # 50 ms: the bound (320 and 1,280 rows/s) is beyond what 2 cores serve with the server on them
    # (about 300-450 requests/s), so rows are sized for that rate, for runs of 5 s or more
    LlmCase("throughput", 0.05, 16, 2_000),
    LlmCase("throughput", 0.05, 64, 3_000),
    LlmCase("throughput", 0.05, 64, 3_000, actors=2),
    LlmCase("overhead", 0.05, 64, 3_000, limiter=True),
    LlmCase("overhead", 0.05, 64, 3_000, budget=True),
    *OVERHEAD_CASES[1:],
    *SDK_LOOP_CASES,
)
"""The full family: both latencies, and the overhead of the limiter and the ledger at 50 ms."""

TINY_CASES = (
    # one short case through every part: 429s, the shared limiter and the budget ledger
    LlmCase("faults_429", 0.05, 8, 40, rate_429=0.1, limiter=True, budget=True),
)
"""The hidden ``--tiny`` plumbing check: one repeat, no warm-up, no waiting for a quiet machine."""

CACHE_CASES: dict[Mode, CacheCase] = {
    "full": CacheCase(entries=1_000_000, small=2_000, big=22_000),
    "quick": CacheCase(entries=200_000, small=2_000, big=12_000),
    "tiny": CacheCase(entries=600, small=50, big=150, repeats=1),
}
"""The cache at size (``benchmarks.llm_cache``): the issue's 1 million entries in the full run."""

SCALES: dict[Mode, tuple[tuple[LlmCase, ...], int]] = {
    "full": (FULL_CASES, REPEATS),
    "quick": (QUICK_CASES, REPEATS),
    "tiny": (TINY_CASES, 1),
}
"""The cases and repeats of each mode."""


# --- a quiet machine -------------------------------------------------------------------------------


def wait_for_quiet(
    max_load: float = MAX_LOAD, waits: int = LOAD_WAITS, wait_s: float = LOAD_WAIT_S
) -> dict[str, Any]:
    """Wait (at most ``waits`` times ``wait_s``) for the one-minute load average to fall to ``max_load``.

    For the start of the family, before any process of ours runs: later, our own Ray session counts in
    the load average, so :func:`others_share` judges instead.
    """
    readings = [round(os.getloadavg()[0], 2)]
    while readings[-1] > max_load and len(readings) <= waits:
        print(f"  load average {readings[-1]} > {max_load}: waiting {wait_s:.0f} s", flush=True)
        time.sleep(wait_s)
        readings.append(round(os.getloadavg()[0], 2))
    return {
        "load_1min": readings,
        "waited_s": (len(readings) - 1) * wait_s,
        "quiet": readings[-1] <= max_load,
    }


def others_share(seconds: float = 1.5) -> float:
    """The share of all cores that processes outside this process's tree use, over ``seconds``."""
    with CpuByRole() as cpu:
        time.sleep(seconds)
    return round(cpu.other_cpu_share, 3)


def wait_for_others(
    max_share: float = DISTURBED_SHARE, waits: int = LOAD_WAITS, wait_s: float = LOAD_WAIT_S
) -> dict[str, Any]:
    """Before a measurement: wait while other processes take more than ``max_share`` of the CPU."""
    shares = [others_share()]
    while shares[-1] > max_share and len(shares) <= waits:
        print(f"  other processes use {shares[-1]:.0%} of the CPU: waiting {wait_s:.0f} s", flush=True)
        time.sleep(wait_s)
        shares.append(others_share())
    return {
        "others_cpu_share": shares,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "waited_s": (len(shares) - 1) * wait_s,
    }


# --- the family ----------------------------------------------------------------------------------------


def _print_line(case: LlmCase, system: str, r: dict[str, Any]) -> None:
    print(
        f"  {case.name} {system}: {r['rows_per_s']:.0f} rows/s ({r['ratio_to_ideal']:.0%} of "
        f"{case.ideal_rows_per_s:.0f}), calls {r['call_rows_per_s']:.0f} rows/s "
        f"({r['call_ratio_to_ideal']:.0%}); first request after {r['first_request_after_s']:.2f} s; "
        f"{r['cpu_ms_per_row']:.2f} CPU ms/row; others took up to {r['other_cpu_share_max']:.0%}",
        flush=True,
    )


def run_cases(
    cases: Sequence[LlmCase],
    repeats: int = REPEATS,
    *,
    work_dir: Path | None = None,
    warm_up: bool = True,
    gate: bool = True,
    in_session: Callable[[], object] | None = None,
) -> list[dict[str, Any]]:
    """Measure every case on headrace and the baseline it shares with others; one result per case.

    Baselines run first, each in a child process, before any Ray session; then headrace runs every case
    in one Ray session (reused if one is initialised), after one untimed warm-up run. With ``gate``,
    each measurement first waits while other processes take more than :data:`DISTURBED_SHARE` of the
    CPU (see :func:`wait_for_others`). ``in_session`` runs last, in the same Ray session (a second
    ``ray.init`` in one process is slow to start and, on a loaded machine, timed out).
    """
    owned = work_dir is None
    base = Path(tempfile.mkdtemp(prefix="bench-llm-")) if owned else work_dir
    assert base is not None
    baselines: dict[tuple[float, int, float, int], dict[str, Any]] = {}
    results: list[dict[str, Any]] = []

    def measured(system: str, case: LlmCase) -> dict[str, Any]:
        before = wait_for_others() if gate else {}
        began = time.perf_counter()
        work = base / f"{system}-{case.name}"
        if system == "baseline":
            result = measure_baseline(case, repeats, work, MAX_EXTRA_REPEATS if gate else 0)
        else:
            extra = MAX_EXTRA_REPEATS if gate else 0
            result = measure_headrace(case, repeats, work, extra, wait_for_others)
        result["before"] = before
        result["harness_seconds"] = round(time.perf_counter() - began, 1)
        _print_line(case, system, result)
        return result

    try:
        for case in cases:
            if case.baseline_key not in baselines:
                baselines[case.baseline_key] = measured("baseline", case)
        with ray_running() as started:
            if warm_up:
                first = cases[0]
                with loopback_server(first) as server:
                    small = LlmCase("throughput", first.latency_s, first.in_flight, first.in_flight * 4)
                    headrace_once(small, server, base / "warm-up")
            for case in cases:
                enough = _one_actor_enough(case, results)
                if enough:
                    results.append({"case": case.name, **asdict(case), "skipped": enough})
                    print(f"  {case.name}: not measured, {enough}", flush=True)
                    continue
                h = measured("headrace", case)
                h["ray_session"] = "started" if started else "reused"
                b = baselines[case.baseline_key]
                results.append(
                    {
                        "case": case.name,
                        **asdict(case),
                        "ideal_rows_per_s": round(case.ideal_rows_per_s, 1),
                        "systems": {"headrace": h, "baseline": b},
                        "headrace_over_baseline": _ratio(h["rows_per_s"], b["rows_per_s"]),
                        "call_headrace_over_baseline": _ratio(h["call_rows_per_s"], b["call_rows_per_s"]),
                    }
                )
            if in_session is not None:
                in_session()
    finally:
        if owned:
            shutil.rmtree(base, ignore_errors=True)
    return results


def _one_actor_enough(case: LlmCase, results: list[dict[str, Any]]) -> str | None:
    """Why ``case`` need not be measured (one actor already reached the target), else None."""
    if not case.only_if_one_actor_short:
        return None
    for r in results:
        alone = r.get("kind") == "throughput" and r["actors"] == 1 and "systems" in r
        if alone and (r["latency_s"], r["in_flight"]) == (case.latency_s, case.in_flight):
            share = r["systems"]["headrace"]["call_ratio_to_ideal"]
            if share >= TARGET_SHARE:
                return f"one actor reached {share:.0%} of the bound in the call phase"
    return None


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def run_family(options: RunOptions) -> dict[str, Any]:
    """Run the family in the options' mode; write ``<date>-llm[-mode]`` ``.json``, ``.md`` and ``.png``,
    and copies of the last two as ``latest-llm.md`` and ``llm.png``; returns the results document."""
    from benchmarks.harness import machine_info, print_targets, write_json
    from benchmarks.report import evaluate_llm_targets, render_llm_markdown, render_llm_plot

    began = time.perf_counter()
    machine = machine_info()
    machine["versions"]["anthropic"] = _version("anthropic")
    machine["source"] = _source_state()
    cases, repeats = SCALES[options.mode]
    tiny = options.mode == "tiny"
    print(f"LLM steps: {len(cases)} cases, {repeats} repeats each", flush=True)
    machine["load_gate"] = options.gate if options.gate is not None else wait_for_quiet()
    cache_case = CACHE_CASES[options.mode]
    measured: dict[str, Any] = {}

    def cache_at_size() -> None:
        print(f"LLM steps: the response cache at {cache_case.entries:,} entries", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-llm-cache-") as cache_work:
            gate = (lambda: None) if tiny else wait_for_others
            measured.update(measure_cache(cache_case, Path(cache_work), gate))

    results = run_cases(cases, repeats, warm_up=not tiny, gate=not tiny, in_session=cache_at_size)
    cache = measured
    print(
        f"  {cache['case']}: {cache['rows_per_s']} rows/s from the cache ({cache['rows_per_s_min']}-"
        f"{cache['rows_per_s_max']}; whole run {cache['whole_run_rows_per_s']}); filled in "
        f"{cache['fill_seconds']} s",
        flush=True,
    )
    name = "llm" + ("" if options.mode == "full" else f"-{options.mode}")
    doc: dict[str, Any] = {
        "family": "LLM steps",
        "name": name,
        "mode": options.mode,
        "command": options.command,
        "machine": machine,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "method": {
            "pipeline": "read_csv -> llm_classify (provider anthropic, real SDK over HTTP) -> write_parquet",
            "server": "tests/loopback LLMServer in the driver process, latency as a sleep; it shares the "
            f"machine's {os.cpu_count()} cores with Ray, the pool actor and the baseline client",
            "ideal_rows_per_s": "N requests in flight / server latency",
            "rows_per_s": "rows / wall seconds of the run; median of the repeats (min and max kept). "
            "headrace: check_file + run_checked(progress=False, cache=False), including the start of the "
            "run's ledger and pool actors; baseline: client creation and the asyncio loop",
            "call_rows_per_s": "answered rows / seconds from the first request the server received to its "
            "last answer",
            "baseline": "one child process: anthropic.AsyncAnthropic(max_retries=0) + asyncio.Semaphore(N), "
            "the same request bodies; 429s re-sent at once",
            "headrace_session": "one Ray session for every headrace case (num_cpus = cores), one untimed "
            "warm-up run first; baselines run before it, with no Ray session up",
            "load": (
                f"before the family starts the 1-minute load average must be <= {MAX_LOAD} (waits up to "
                f"{LOAD_WAITS} x {LOAD_WAIT_S:.0f} s; machine.load_gate)"
                if options.gate is None
                else "the family ran after another of the same session, which the load average still "
                "counts, so the session checked other processes' CPU instead (machine.load_gate)"
            )
            + "; before each measurement other "
            f"processes' share of the CPU over 1.5 s must be <= {DISTURBED_SHARE} (same waits; 'before'), "
            f"and a repeat during which they took more is run again (at most {MAX_EXTRA_REPEATS} times, "
            "a headrace one after the same wait; discarded_repeats)",
            "cpu_s_by_role": "CPU seconds of the driver's process tree by process role (Ray process titles), "
            "sampled at 5 Hz over the run; the driver's share includes the loopback server",
        },
        "results": results,
        "cache": cache,
    }
    doc["targets"] = evaluate_llm_targets(results, cache)
    doc["wall_seconds"] = round(time.perf_counter() - began, 1)
    results_dir = options.results_dir
    path = write_json(doc, name, results_dir)
    # the dated files keep this run's report and plot; latest-llm.md and llm.png show the last run
    dated_plot = render_llm_plot(doc, path.with_suffix(".png"))
    path.with_suffix(".md").write_text(render_llm_markdown(doc, dated_plot.name))
    shutil.copyfile(dated_plot, results_dir / "llm.png")
    (results_dir / "latest-llm.md").write_text(render_llm_markdown(doc))
    print(f"results: {path} and .md, .png; {results_dir / 'latest-llm.md'}, {results_dir / 'llm.png'}")
    print_targets(doc)
    return doc


def _source_state() -> dict[str, Any]:
    """The commit measured, and the files of engine/ and operators/ that differ from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "engine", "operators").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_engine_files": len(changed)}


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
