"""The audit log: a hash chain that names the line where it was edited, cut or reordered."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.audit import GENESIS, AuditLog
from engine.cli.main import cli


def filled(tmp_path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(n):
        log.append("run_finished", {"run_id": f"run-{i}", "cost_usd": 0.5 * i, "status": "succeeded"})
    return log


def test_an_intact_log_verifies_and_its_head_is_the_last_hash(tmp_path: Path) -> None:
    log = filled(tmp_path)
    assert log.verify() == []
    entries = list(log.entries())
    assert [e["seq"] for e in entries] == [0, 1, 2, 3, 4]
    assert entries[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(entries))
    assert log.head() == entries[-1]["hash"]
    assert log.verify(expect_head=log.head()) == []


def test_an_edited_line_is_named(tmp_path: Path) -> None:
    log = filled(tmp_path)
    lines = log.path.read_text().splitlines()
    entry = json.loads(lines[2])
    entry["cost_usd"] = 0.0  # someone hides a run's cost
    lines[2] = json.dumps(entry, sort_keys=True)
    log.path.write_text("\n".join(lines) + "\n")
    problems = log.verify()
    assert [(p.line, "edited" in p.message) for p in problems] == [(3, True)]


def test_a_removed_or_moved_line_breaks_the_chain_where_it_was(tmp_path: Path) -> None:
    log = filled(tmp_path)
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    assert {p.line for p in log.verify()} == {2}
    log.path.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    assert 2 in {p.line for p in log.verify()}


def test_lines_cut_from_the_end_are_caught_with_the_head_kept_elsewhere(tmp_path: Path) -> None:
    log = filled(tmp_path)
    kept = log.head()
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join(lines[:-2]) + "\n")
    assert log.verify() == []  # the file alone cannot show it
    (problem,) = log.verify(expect_head=kept)
    assert "removed from the end" in problem.message


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")

    def writer(k: int) -> None:
        for i in range(25):
            AuditLog(log.path).append("run_started", {"run_id": f"{k}-{i}"})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.verify() == []
    assert len(list(log.entries())) == 100


def test_cli_verify_exits_1_naming_the_line(tmp_path: Path) -> None:
    log = filled(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(cli, ["audit", "verify", "--log", str(log.path)])
    assert ok.exit_code == 0 and "chain intact" in ok.output
    text = log.path.read_text().replace('"run-1"', '"run-X"')
    log.path.write_text(text)
    bad = runner.invoke(cli, ["audit", "verify", "--log", str(log.path)])
    assert bad.exit_code == 1
    assert f"{log.path}:2: error:" in bad.output
    head = runner.invoke(cli, ["audit", "head", "--log", str(log.path)])
    assert head.exit_code == 0 and len(head.output.strip()) == 64


def test_concurrent_appends_share_one_fsync_per_group_and_keep_the_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: while one group is being written, the appends that arrive wait and are written
    together as the next group, with one fsync; each caller returns its own entry, on disk."""
    from engine import audit

    log = AuditLog(tmp_path / "audit.jsonl")
    synced: list[int] = []
    release = threading.Event()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        if len(synced) == 1:  # hold the first group on disk until every other append is queued
            assert release.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(audit.os, "fsync", fsync)
    got: dict[int, dict[str, object]] = {}

    def append(i: int) -> None:
        got[i] = log.append("api", {"method": "POST", "n": i})

    first = threading.Thread(target=append, args=(0,))
    first.start()
    while not synced:  # the first append is inside its fsync
        time.sleep(0.001)
    others = [threading.Thread(target=append, args=(i,)) for i in range(1, 21)]
    for t in others:
        t.start()
    committer = audit._committer(log.path)
    while len(committer._queue) < 20:  # every other append waits for the group under way
        time.sleep(0.001)
    release.set()
    for t in [first, *others]:
        t.join(30)
    assert len(synced) == 2  # one fsync for the first group, one for the 20 queued behind it
    assert log.verify() == []
    on_disk = {e["n"]: e for e in log.entries()}
    assert sorted(on_disk) == list(range(21))
    assert all(got[i] == on_disk[i] for i in range(21))  # each caller got its own written entry
    assert [e["seq"] for e in log.entries()] == list(range(21))
