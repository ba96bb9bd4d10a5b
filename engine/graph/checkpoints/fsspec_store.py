"""``FsspecStore``: checkpoints as plain files on any fsspec filesystem (a folder, ``memory://``, s3...).

Layout under the store's root::

    runs/<run_id>/run.json            the RunRecord, replaced whole (tmp + rename where that is atomic)
    runs/<run_id>/steps.jsonl         one StepRecord per line, appended   (layout "jsonl")
    runs/<run_id>/steps/000000012.json one StepRecord per object          (layout "objects")

``jsonl`` suits filesystems that can append (local disk, memory); object stores cannot append, so there
each step is its own object, whose PUT is atomic. ``layout="auto"`` picks by protocol; reading merges both
layouts, so a store can switch. A step line is written with one ``write`` call: a process killed
mid-append leaves at most a torn last line, which readers ignore and the next writer cuts off.

One writer per run: this store numbers steps from a per-process cache, checked under its lock. Two
processes appending to the *same* run of one folder are not detected (SQLite's store does detect it);
the runner owns each run it executes, so that does not arise in normal use.
"""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Sequence
from typing import Literal

from engine.graph.checkpoints import _rules
from engine.graph.checkpoints._core import StoreCore
from engine.graph.checkpoints.base import RunRecord, StepRecord
from engine.graph.checkpoints.errors import CheckpointCorrupt
from engine.graph.checkpoints.serial import decode_run, decode_step, encode

Layout = Literal["auto", "jsonl", "objects"]
_APPENDABLE = frozenset({"file", "local", "memory"})  # protocols whose "ab" mode really appends
_RENAME_ATOMIC = frozenset({"file", "local"})  # where mv is a rename(2); object PUTs are atomic anyway


class FsspecStore(StoreCore):
    """A ``CheckpointStore`` in files under ``url`` (any fsspec URL or a local folder)."""

    def __init__(self, url: str, *, layout: Layout = "auto") -> None:
        super().__init__()
        from connectors.files import filesystem  # connectors sit beside engine; imported on use

        self.url = url
        self._fs, root = filesystem(url)
        proto = self._fs.protocol
        self._protocol: str = proto[0] if isinstance(proto, tuple | list) else proto
        self._root = root.rstrip("/") or "/"
        if layout == "auto":
            layout = "jsonl" if self._protocol in _APPENDABLE else "objects"
        self.layout: Layout = layout
        # Per run this object writes: the number of its last own step (None: none yet).
        self._last: dict[str, int | None] = {}
        self._repaired: set[str] = set()  # runs this writer has prepared (log tail checked, folder made)

    def _where(self) -> str:
        return f"checkpoint store {self.url}"

    # -- paths ------------------------------------------------------------------------------------

    def _dir(self, run_id: str) -> str:
        return posixpath.join(self._root, "runs", run_id)

    def _run_file(self, run_id: str) -> str:
        return posixpath.join(self._dir(run_id), "run.json")

    def _log_file(self, run_id: str) -> str:
        return posixpath.join(self._dir(run_id), "steps.jsonl")

    def _step_file(self, run_id: str, step: int) -> str:
        return posixpath.join(self._dir(run_id), "steps", f"{step:09d}.json")

    # -- runs -------------------------------------------------------------------------------------

    def _load_run(self, run_id: str) -> RunRecord | None:
        path = self._run_file(run_id)
        try:
            data = self._fs.cat_file(path)
        except FileNotFoundError:
            return None
        return decode_run(data, where=self._show(path))

    def _all_runs(self) -> list[RunRecord]:
        top = posixpath.join(self._root, "runs")
        if not self._fs.exists(top):
            return []
        runs = []
        for entry in self._fs.ls(top, detail=False):
            # A folder without run.json is a run whose creation never finished: nothing to list.
            run = self._load_run(posixpath.basename(str(entry).rstrip("/")))
            if run is not None:
                runs.append(run)
        return runs

    def _save_run(self, run: RunRecord, *, new: bool) -> None:
        path = self._run_file(run.run_id)
        self._fs.makedirs(self._dir(run.run_id), exist_ok=True)
        self._write_whole(path, encode(run) + b"\n")
        if new:
            self._last[run.run_id] = None

    def _write_whole(self, path: str, data: bytes) -> None:
        """Replace a file so readers see the old bytes or the new, never a mix."""
        if self._protocol in _RENAME_ATOMIC:
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            self._fs.pipe_file(tmp, data)
            self._fs.mv(tmp, path)
        else:
            self._fs.pipe_file(path, data)

    # -- steps ------------------------------------------------------------------------------------

    def _own_steps(self, run_id: str, upto: int | None) -> list[StepRecord]:
        first = self._first(run_id)
        records = self._read_log(run_id, first)[0] + self._read_objects(run_id)
        records.sort(key=lambda r: r.step)
        for i, record in enumerate(records):
            if record.step != first + i:
                raise CheckpointCorrupt(
                    f"{self._show(self._dir(run_id))}: run '{run_id}' has step {record.step} where step "
                    f"{first + i} should be; its history is damaged (a step is missing or repeated)"
                )
        return records if upto is None else [r for r in records if r.step <= upto]

    def _read_log(self, run_id: str, first: int) -> tuple[list[StepRecord], bool]:
        """The steps of the run's JSONL log, and whether its last line is torn (to be cut off)."""
        path = self._log_file(run_id)
        try:
            data = self._fs.cat_file(path)
        except FileNotFoundError:
            return [], False
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline, as every complete write does
        records = []
        for number, line in enumerate(lines, start=1):
            where = f"{self._show(path)} line {number} (run '{run_id}', step {first + number - 1})"
            records.append(decode_step(line, where=where))
        torn = False
        if tail:
            try:
                records.append(decode_step(tail, where=self._show(path)))
            except CheckpointCorrupt:
                torn = True  # a write cut short by a crash: it never completed, so it never happened
        return records, torn

    def _read_objects(self, run_id: str) -> list[StepRecord]:
        folder = posixpath.join(self._dir(run_id), "steps")
        if self.layout != "objects" and not self._fs.exists(folder):
            return []
        try:
            paths = sorted(p for p in self._fs.ls(folder, detail=False) if str(p).endswith(".json"))
        except FileNotFoundError:
            return []
        return [decode_step(self._fs.cat_file(p), where=self._show(str(p))) for p in paths]

    def _own_last_number(self, run_id: str) -> int | None:
        # Trust the cache only for runs this object writes; a reader must see other processes' appends.
        if run_id in self._last:
            return self._last[run_id]
        if not self._fs.exists(self._run_file(run_id)):
            return None
        own = self._own_steps(run_id, None)
        return own[-1].step if own else None

    def _first(self, run_id: str) -> int:
        run = self._load_run(run_id)
        return 0 if run is None else _rules.first_step(run)

    def _repair_log(self, run_id: str) -> None:
        """Cut a torn last line off the log (or end a complete one), so appends start on a fresh line.

        Only a writer does this, once per run and process: a reader must never cut a line that a live
        writer is in the middle of appending.
        """
        self._repaired.add(run_id)
        path = self._log_file(run_id)
        try:
            data = self._fs.cat_file(path)
        except FileNotFoundError:
            return
        if not data or data.endswith(b"\n"):
            return
        _, torn = self._read_log(run_id, self._first(run_id))
        keep = data[: data.rfind(b"\n") + 1] if torn else data + b"\n"
        self._write_whole(path, keep)

    def _write_steps(self, records: Sequence[StepRecord]) -> None:
        by_run: dict[str, list[bytes]] = {}
        first: dict[str, int] = {}
        for r in records:  # every record encoded before any byte is written
            by_run.setdefault(r.run_id, []).append(encode(r) + b"\n")
            first.setdefault(r.run_id, r.step)
        for run_id, lines in by_run.items():
            if self.layout == "jsonl":
                if run_id not in self._repaired:
                    self._repair_log(run_id)
                # One write per batch: a crash tears at most the batch's last line.
                with self._fs.open(self._log_file(run_id), "ab") as f:
                    f.write(b"".join(lines))
            else:
                if run_id not in self._repaired:
                    self._repaired.add(run_id)
                    self._fs.makedirs(posixpath.join(self._dir(run_id), "steps"), exist_ok=True)
                for offset, line in enumerate(lines):
                    self._fs.pipe_file(self._step_file(run_id, first[run_id] + offset), line)
            self._last[run_id] = first[run_id] + len(lines) - 1

    def _delete_runs(self, run_ids: Sequence[str]) -> None:
        for run_id in run_ids:
            folder = self._dir(run_id)
            if self._fs.exists(folder):
                self._fs.rm(folder, recursive=True)
            self._last.pop(run_id, None)
            self._repaired.discard(run_id)

    def _show(self, path: str) -> str:
        return path if self._protocol in _RENAME_ATOMIC else f"{self._protocol}://{path.lstrip('/')}"
