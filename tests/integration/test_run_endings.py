"""Every run is recorded as what it was: an internal error is ``failed``, SIGTERM stops a run as Ctrl-C
does, a driver that died is found ``died``, and a run or an output folder has one owner at a time."""

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
import ray

from engine.audit import AuditLog
from engine.check import check_file
from engine.errors import InUseError
from engine.records import open_records
from engine.runtime import run_checked
from engine.runtime.graphs import default_url
from tests.cli import HEADRACE, run_headrace

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _source(path: Path, rows: int) -> list[tuple[str, str]]:
    data = [(str(i), f"plain {i}") for i in range(rows)]
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
name: endings
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
  output: {{op: write_parquet, input: pause, path: {tmp_path / "out"}, overwrite: true}}
""",
        encoding="utf-8",
    )
    return path


def _rows(folder: Path) -> Counter[tuple[str, str]]:
    table = pq.read_table(folder)
    return Counter(zip(table["id"].to_pylist(), table["text"].to_pylist(), strict=True))


def _audit(run_id: str) -> list[dict[str, object]]:
    return [e for e in AuditLog().entries() if e.get("run_id") == run_id]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HEADRACE_OBJECT_STORE_BYTES": str(256 * 1024 * 1024),
        "PYTHONPATH": str(ROOT),
    }


def _start(tmp_path: Path, path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*HEADRACE, "run", str(path), "--json", "--no-engine", *args],
        env=_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_parts(driver: subprocess.Popen[str], out: Path, count: int) -> None:
    deadline = time.monotonic() + 180
    while len(list(out.glob("part-*.parquet"))) < count:
        assert driver.poll() is None, f"the run ended too soon: {driver.communicate()}"
        assert time.monotonic() < deadline, "no parts were committed in time"
        time.sleep(0.1)


@pytest.mark.usefixtures("ray_cluster")
def test_an_internal_error_is_recorded_failed_in_the_record_the_audit_log_and_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in.csv"
    _source(src, 100)
    path = _pipeline(tmp_path, src, 0.0)

    def broken(*args: object, **kwargs: object) -> str:
        raise ZeroDivisionError("a bug on the way out")

    # a bug after every split ran: the summary was built as succeeded and only HeadraceError was caught
    monkeypatch.setattr("engine.runtime.execute.write_manifest", broken)
    summary = run_checked(check_file(str(path)), progress=False)
    assert summary.status == "failed" and summary.exit_code == 70
    assert "internal error: ZeroDivisionError: a bug on the way out" in (summary.error or "")
    store = open_records(default_url())
    header = store.header(summary.run_id)
    assert header is not None and header.status == "failed" and "ZeroDivisionError" in (header.error or "")
    assert [e.data["code"] for e in store.events(summary.run_id, kinds={"error"})] == ["internal"]
    kinds = [e["event"] for e in _audit(summary.run_id)]
    assert kinds == ["run_started", "run_finished"]
    assert _audit(summary.run_id)[-1]["status"] == "failed"


@pytest.mark.usefixtures("ray_cluster")
def test_run_json_prints_one_object_with_status_and_error_on_an_internal_error(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    _source(src, 10)
    path = tmp_path / "pipe.yaml"
    path.write_text(
        f"""version: 1
name: bug-on-the-way-out
nodes:
  input: {{op: read_csv, path: {src}}}
  output: {{op: write_jsonl, input: input, path: {tmp_path / "out"}}}
"""
    )
    # a bug planted in the driver (a real CLI process): writing the manifest raises
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('HEADRACE_PLANT_BUG'):\n"
        "    import engine.runtime.execute as execute\n"
        "    def broken(*args, **kwargs):\n"
        "        raise ZeroDivisionError('planted bug')\n"
        "    execute.write_manifest = broken\n"
    )
    env = {
        "HEADRACE_OBJECT_STORE_BYTES": str(128 << 20),
        "PYTHONPATH": f"{inject}:{ROOT}",
        "HEADRACE_PLANT_BUG": "1",
    }
    address = ray.get_runtime_context().gcs_address  # the session's Ray: no second one to start
    done = run_headrace("run", path, "--json", "--address", address, env=env)
    assert done.returncode == 70, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, done.stdout
    summary = json.loads(lines[0])
    assert summary["status"] == "failed" and summary["exit_code"] == 70
    assert "internal error: ZeroDivisionError: planted bug" in summary["error"]
    listed = json.loads(run_headrace("runs", "list", "--json").stdout)
    assert {r["run_id"]: r["status"] for r in listed}[summary["run_id"]] == "failed"
    shown = json.loads(run_headrace("runs", "show", summary["run_id"], "--json").stdout)
    assert shown["status"] == "failed" and shown["record"]["errors"][0]["code"] == "internal"


def test_run_json_prints_one_object_for_a_run_refused_before_it_starts(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"""version: 1
name: bad-types
nodes:
  input: {{op: read_csv, path: {tmp_path / "in.csv"}, column_types: {{id: integer64}}}}
  output: {{op: write_jsonl, input: input, path: {tmp_path / "out"}}}
"""
    )
    done = run_headrace("run", path, "--json", "--no-engine")
    assert done.returncode == 1, done.stderr
    refused = json.loads(done.stdout)
    assert refused["status"] == "failed" and refused["exit_code"] == 1 and "integer64" in refused["error"]


@pytest.mark.usefixtures("ray_cluster")
def test_sigterm_stops_a_run_as_ctrl_c_does_then_resume_gives_the_exact_rows(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    data = _source(src, 3_000)
    hold = tmp_path / "hold"
    hold.touch()  # rows past id 1000 wait while it exists: the run is mid-way for as long as needed
    path = _pipeline(tmp_path, src, 0.0, hold=hold)
    out = tmp_path / "out"
    # the driver joins the session's Ray (a second local Ray may not start in time on a loaded machine)
    address = ray.get_runtime_context().gcs_address
    driver = _start(tmp_path, path, "--run-id", "run-termed", "--address", address)
    try:
        _wait_for_parts(driver, out, 2)
        # while it runs, the run and its output folder have one owner: a second driver is refused
        # (before it touches Ray or the folder: these calls need no cluster)
        with pytest.raises(InUseError, match=r"run run-termed is being run now by run run-termed \(pid"):
            run_checked(check_file(str(path)), resume="run-termed", progress=False)
        with pytest.raises(InUseError, match=f"output folder {out} is being written now") as refused:
            run_checked(check_file(str(path)), progress=False)  # `overwrite: true` on the same folder
        assert refused.value.exit_code == 1
        os.kill(driver.pid, signal.SIGTERM)
        time.sleep(1.0)
        hold.unlink()  # splits in flight may finish; no new ones start
        stdout, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 143, stderr
    summary = json.loads(stdout)
    assert summary["status"] == "cancelled" and summary["exit_code"] == 143
    assert "stopped by SIGTERM" in summary["error"] and "--resume run-termed" in summary["error"]
    assert "Stack trace" not in stderr and "*** SIGTERM" not in stderr and "Fatal Python" not in stderr
    kept = sorted(out.glob("part-*.parquet"))
    assert kept and all(pq.read_table(p).num_rows > 0 for p in kept)  # committed parts are whole
    assert not (out / "_manifest.json").exists()
    shown = json.loads(run_headrace("runs", "show", "run-termed", "--json").stdout)
    assert shown["status"] == "cancelled"
    assert [e["status"] for e in _audit("run-termed") if e["event"] == "run_finished"] == ["cancelled"]
    resumed = run_checked(check_file(str(path)), resume="run-termed", progress=False)
    assert resumed.status == "succeeded", resumed.error
    assert resumed.nodes["output"].rows < len(data)
    assert _rows(out) == Counter(data)


def test_a_driver_killed_9_is_found_died_by_runs_list_show_and_resume(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    data = _source(src, 3_000)
    hold = tmp_path / "hold"
    hold.touch()  # rows past id 1000 wait while it exists: the run is mid-way when it is killed
    path = _pipeline(tmp_path, src, 0.0, hold=hold)
    out = tmp_path / "out"
    driver = _start(tmp_path, path, "--run-id", "run-died")
    ray_processes: list[psutil.Process] = []
    try:
        _wait_for_parts(driver, out, 2)
        ray_processes = psutil.Process(driver.pid).children(recursive=True)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        for proc in ray_processes:  # the driver's own local Ray outlives a SIGKILL
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        hold.unlink()
    listed = json.loads(run_headrace("runs", "list", "--status", "died", "--json").stdout)
    assert "run-died" in [r["run_id"] for r in listed]
    shown = run_headrace("runs", "show", "run-died")
    assert shown.stdout.startswith("run run-died: died"), shown.stdout
    resumed = run_headrace("run", path, "--resume", "run-died", "--json", cwd=tmp_path, env=_env())
    assert resumed.returncode == 0, resumed.stderr
    assert "run run-died died earlier" in resumed.stderr
    assert _rows(out) == Counter(data)
    events = open_records(default_url()).events("run-died", kinds={"run_finished"})
    assert [e.data["status"] for e in events] == ["died", "succeeded"]
