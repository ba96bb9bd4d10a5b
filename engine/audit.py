"""The audit log: who ran which pipeline on what, and what it cost, in an append-only, hash-chained file.

Every run appends a ``run_started`` and a ``run_finished`` entry (user, tenant, pipeline name and hash,
inputs, outputs, budget, cost, status). Each line carries the SHA-256 of the previous line's hash and its
own canonical JSON, so editing, reordering or deleting a line breaks the chain at that line and
``headrace audit verify`` names it. Removing lines from the end cannot be seen from the file alone:
``headrace audit head`` prints the last hash, to be kept elsewhere and checked with ``--expect-head``.

The log is JSON lines (never pickle); appends take an exclusive lock so concurrent runs on one machine
never interleave or fork the chain. Appends from many threads of one process are committed in groups
(:class:`_GroupCommit`): whoever finds no write under way writes every entry queued so far under one
lock with one ``fsync``, and each caller returns only once its own entry is on disk, so "appended before
the answer" still holds while a busy service pays one ``fsync`` per group rather than per request.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from engine.errors import HeadraceError
from engine.logs import redact_data

AUDIT_FORMAT = 1
GENESIS = "0" * 64
"""The ``prev`` of the first entry."""


class AuditError(HeadraceError):
    """The audit log cannot be written or read."""

    code = "audit"
    exit_code = 1


def default_audit_path(environ: Mapping[str, str] | None = None) -> Path:
    """``HEADRACE_AUDIT_LOG``, else ``$HEADRACE_HOME/audit.jsonl`` (``~/.local/share/headrace``)."""
    env = os.environ if environ is None else environ
    if env.get("HEADRACE_AUDIT_LOG"):
        return Path(env["HEADRACE_AUDIT_LOG"]).expanduser()
    home = env.get("HEADRACE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share", "headrace")
    return Path(home) / "audit.jsonl"


def actor(environ: Mapping[str, str] | None = None) -> str:
    """Who is starting the run: ``HEADRACE_ACTOR`` (e.g. a service token's name), else the OS user."""
    env = os.environ if environ is None else environ
    if env.get("HEADRACE_ACTOR"):
        return env["HEADRACE_ACTOR"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return f"uid:{os.getuid()}"


def _digest(prev: str, body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev}\n{canonical}".encode()).hexdigest()


@dataclass(frozen=True)
class Problem:
    """Where the chain breaks."""

    line: int
    message: str


class AuditLog:
    """One audit log file."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_audit_path()

    def append(self, event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Append one entry and return it (with its ``seq``, ``prev`` and ``hash``) once it is on disk;
        concurrent appends of this process to the same file share one lock and one ``fsync``."""
        redacted: dict[str, Any] = redact_data(dict(fields))  # a secret interpolated into a plain field
        return _committer(self.path).append(self, event, redacted)

    def _write(self, batch: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Append ``batch`` (event, redacted fields) under one lock with one ``fsync``; its entries."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked() as fh:
                last = _last_line(fh)
                prev, seq = (last["hash"], last["seq"] + 1) if last else (GENESIS, 0)
                entries, lines = [], []
                for event, fields in batch:
                    body = {"format": AUDIT_FORMAT, "seq": seq, "time": time.time(), "event": event, **fields}
                    entry = {**body, "prev": prev, "hash": _digest(prev, body)}
                    entries.append(entry)
                    lines.append(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
                    prev, seq = entry["hash"], seq + 1
                fh.seek(0, os.SEEK_END)
                fh.write("".join(lines).encode())
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise AuditError(f"cannot append to the audit log {self.path}: {exc}") from None
        return entries

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every entry, oldest first (a line that is not JSON raises ``AuditError`` naming it)."""
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                try:
                    entry = json.loads(raw)
                except ValueError:
                    raise AuditError(f"{self.path}:{number}: not a JSON line") from None
                yield entry

    def verify(self, expect_head: str | None = None) -> list[Problem]:
        """Every place the chain breaks (empty when the log is intact)."""
        problems: list[Problem] = []
        prev, seq, number = GENESIS, 0, 0
        try:
            for number, entry in enumerate(self.entries(), start=1):
                if not isinstance(entry, dict) or "hash" not in entry or "prev" not in entry:
                    problems.append(Problem(number, "not an audit entry"))
                    continue
                body = {k: v for k, v in entry.items() if k not in ("prev", "hash")}
                if entry["prev"] != prev:
                    problems.append(
                        Problem(number, "does not follow the line before it (a line was removed or moved)")
                    )
                if _digest(entry["prev"], body) != entry["hash"]:
                    problems.append(
                        Problem(number, "its content does not match its hash (the line was edited)")
                    )
                if entry.get("seq") != seq:
                    problems.append(Problem(number, f"sequence number {entry.get('seq')}, expected {seq}"))
                # one break is reported once: the next line is judged against this one
                prev = entry["hash"]
                seq = entry["seq"] + 1 if isinstance(entry.get("seq"), int) else seq + 1
        except AuditError as exc:
            problems.append(Problem(number + 1, str(exc)))
        if expect_head is not None and prev != expect_head:
            problems.append(
                Problem(
                    number,
                    f"the last hash is {prev[:16]}…, expected {expect_head[:16]}… "
                    "(lines were removed from the end)",
                )
            )
        return problems

    def head(self) -> str:
        """The hash of the last entry (``GENESIS`` for an empty log)."""
        last: dict[str, Any] | None = None
        for entry in self.entries():
            last = entry
        return str(last["hash"]) if last else GENESIS

    @contextmanager
    def _locked(self) -> Iterator[IO[bytes]]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "r+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield fh
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class _Pending:
    """One caller's entry waiting for its group's write."""

    __slots__ = ("entry", "error", "event", "fields", "written")

    def __init__(self, event: str, fields: dict[str, Any]) -> None:
        self.event, self.fields = event, fields
        self.entry: dict[str, Any] | None = None
        self.error: AuditError | None = None
        self.written = False


class _GroupCommit:
    """Group commit for one audit file in this process (leader and followers).

    A caller queues its entry; if no write is under way it becomes the writer, takes every entry queued
    so far (its own and those that arrived while the previous group was written) and writes them with
    one lock and one ``fsync``; the others wait until their entry is written (or failed). Order in the
    file is the order of arrival; the chain is computed under the file lock as before, so other
    processes appending to the same file interleave whole groups and never fork the chain.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._writing = False

    def append(self, log: AuditLog, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        json.dumps(fields)  # a field JSON cannot hold fails its own caller here, not the whole group
        mine = _Pending(event, fields)
        with self._cond:
            self._queue.append(mine)
            while self._writing and not mine.written:
                self._cond.wait()
            if not mine.written:  # no write under way: this caller writes the group
                group, self._queue, self._writing = self._queue, [], True
            else:
                group = []
        if group:
            try:
                written = log._write([(p.event, p.fields) for p in group])
                for pending, entry in zip(group, written, strict=True):
                    pending.entry = entry
            except AuditError as exc:
                for pending in group:
                    pending.error = exc
            finally:  # whatever happened, the followers are woken and the next group can be written
                with self._cond:
                    for pending in group:
                        pending.written = True
                    self._writing = False
                    self._cond.notify_all()
        if mine.error is not None:
            raise AuditError(str(mine.error))
        if mine.entry is None:  # the writer met something unexpected (its own caller sees the exception)
            raise AuditError("the audit entry was not written: the group it was in failed")
        return mine.entry


_committers: dict[str, _GroupCommit] = {}
_committers_lock = threading.Lock()


def _committer(path: Path) -> _GroupCommit:
    key = os.path.abspath(path)
    with _committers_lock:
        found = _committers.get(key)
        if found is None:
            found = _committers[key] = _GroupCommit()
        return found


def _last_line(fh: IO[bytes]) -> dict[str, Any] | None:
    """The last entry of the file, read backwards from its end (the log may be large)."""
    size = fh.seek(0, os.SEEK_END)
    if size == 0:
        return None
    block, data = 4096, b""
    while True:
        start = max(0, size - block)
        fh.seek(start)
        data = fh.read(size - start)
        lines = data.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or start == 0:
            try:
                last: dict[str, Any] = json.loads(lines[-1])
            except ValueError:
                raise AuditError(
                    "the audit log's last line is not JSON; run `headrace audit verify`"
                ) from None
            return last
        block *= 4
