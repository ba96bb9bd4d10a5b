"""Row-exact resume: committed splits are kept, the others re-run, nothing lost or duplicated."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from engine.check import check_file
from engine.runtime import run_checked
from tests.cli import HEADRACE

ROOT = Path(__file__).resolve().parents[2]


def _source(path: Path, rows: int) -> list[tuple[str, str]]:
    data = [(str(i), f'text "{i}", with\nnewline' if i % 5 == 0 else f"plain {i}") for i in range(rows)]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        writer.writerows(data)
    return data


def _pipeline(tmp_path: Path, src: Path, seconds: float, hold: Path | None = None) -> Path:
    """``src`` through a pause of ``seconds`` a batch (or, with ``hold``, rows from id 1000 on wait
    while that file exists) into a Parquet folder."""
    path = tmp_path / "pipe.yaml"
    fn, kwargs = "slow", f"{{seconds: {seconds}}}"
    if hold is not None:
        fn, kwargs = "hold_while", f"{{marker: '{hold}', from_id: 1000}}"
    path.write_text(
        f"""version: 1
name: resumable
nodes:
  input:
    op: read_csv
    path: {src}
    split_bytes: 4KiB
    batch_rows: 50
    column_types: {{id: string, text: string}}
  pause:
    op: map_batches
    input: input
    fn: tests.integration.udfs:{fn}
    kwargs: {kwargs}
  output: {{op: write_parquet, input: pause, path: {tmp_path / "out"}}}
""",
        encoding="utf-8",
    )
    return path


def _rows(folder: Path) -> Counter[tuple[str, str]]:
    table = pq.read_table(folder)
    return Counter(zip(table["id"].to_pylist(), table["text"].to_pylist(), strict=True))


@pytest.mark.usefixtures("ray_cluster")
def test_resume_reruns_only_missing_splits(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    data = _source(src, 2_000)
    path = _pipeline(tmp_path, src, 0.0)
    first = run_checked(check_file(str(path)), progress=False)
    assert first.status == "succeeded", first.error
    out = tmp_path / "out"
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) > 5  # split on record boundaries into many byte ranges
    # simulate a crash: the manifest was never written and two parts never committed
    (out / "_manifest.json").unlink()
    lost = parts[1].name, parts[-1].name
    lost_rows = sum(pq.read_table(out / name).num_rows for name in lost)
    for name in lost:
        (out / name).unlink()
    (out / ".part-00003.parquet.deadbeef.tmp").write_bytes(b"half a file")
    second = run_checked(check_file(str(path)), resume=first.run_id, progress=False)
    assert second.status == "succeeded", second.error
    assert second.run_id == first.run_id
    assert second.nodes["output"].rows == lost_rows  # only the missing splits ran again
    assert _rows(out) == Counter(data)
    assert not list(out.glob(".*.tmp"))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows"] == len(data) and len(manifest["parts"]) == len(parts)


@pytest.mark.usefixtures("ray_cluster")
def test_resume_refuses_another_run_or_a_changed_pipeline(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    _source(src, 100)
    path = _pipeline(tmp_path, src, 0.0)
    first = run_checked(check_file(str(path)), progress=False)
    other = run_checked(check_file(str(path)), resume="run-somebody-else", progress=False)
    assert other.status == "failed" and first.run_id in (other.error or "")
    changed = run_checked(
        check_file(str(path), overrides=["nodes.input.batch_rows=7"]), resume=first.run_id, progress=False
    )
    assert changed.status == "failed" and "pipeline changed" in (changed.error or "")


def test_kill_9_mid_run_then_resume_gives_exactly_the_rows_of_a_clean_run(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    data = _source(src, 3_000)
    hold = tmp_path / "hold"
    hold.touch()  # rows past id 1000 wait while it exists: the run is mid-way when it is killed
    path = _pipeline(tmp_path, src, 0.0, hold=hold)
    out = tmp_path / "out"
    cmd = [*HEADRACE, "run", str(path), "--json"]
    env = {**os.environ, "HEADRACE_OBJECT_STORE_BYTES": str(256 * 1024 * 1024), "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen(
        [*cmd, "--run-id", "run-killed"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ray_processes: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("part-*.parquet"))) < 3:
            assert driver.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no parts were committed in time"
            time.sleep(0.1)
        ray_processes = psutil.Process(driver.pid).children(recursive=True)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        # the driver's own local Ray outlives a SIGKILL; stop it so it does not linger
        for proc in ray_processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
    hold.unlink()
    assert not (out / "_manifest.json").exists()
    committed_before = len(list(out.glob("part-*.parquet")))
    resumed = subprocess.run(
        [*cmd, "--resume", "run-killed"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["status"] == "succeeded" and summary["run_id"] == "run-killed"
    assert summary["nodes"]["output"]["rows"] < len(data)  # the committed splits were not redone
    assert committed_before >= 3
    assert _rows(out) == Counter(data)


@pytest.mark.usefixtures("ray_cluster")
def test_a_run_past_max_seconds_stops_keeping_its_parts_and_resumes_to_the_exact_rows(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    data = _source(src, 3_000)
    marker = tmp_path / "hold"
    marker.touch()  # splits past the first wait while it exists, so the time limit always falls mid-run
    path = _pipeline(tmp_path, src, 0.0, hold=marker)
    limited = path.read_text().replace("name: resumable", "name: resumable\nbudget: {max_seconds: 10}")
    path.write_text(limited)
    first = run_checked(check_file(str(path)), progress=False)
    assert first.status == "budget_exceeded" and first.exit_code == 4
    assert "max_seconds 10" in (first.error or "")
    committed = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert committed  # the first split finished in time: kept, whole and readable
    assert all(pq.read_table(p).num_rows > 0 for p in committed)
    marker.unlink()
    path.write_text(limited.replace("max_seconds: 10", "max_seconds: 600"))
    resumed = run_checked(check_file(str(path)), resume=first.run_id, progress=False)
    assert resumed.status == "succeeded", resumed.error
    assert _rows(tmp_path / "out") == Counter(data)
