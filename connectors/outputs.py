"""The life of a sink's output folder: claimed by a run, filled with parts, sealed by a manifest.

A run claims a folder with ``_run.json`` (run id, spec hash). A part is committed when its final name
exists (the rename is atomic), so after a crash ``--resume RUN_ID`` keeps exactly the committed parts
and re-runs the other splits. ``_manifest.json`` is written last and lists every part: its presence
means the output is complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

import pyarrow.parquet as pq

from connectors.files import filesystem
from connectors.sinks import FileSink
from connectors.writers import PartInfo, part_index
from engine.errors import OutputError, RunError

MANIFEST = "_manifest.json"
RUN_FILE = "_run.json"


def claim_output(
    spec: FileSink, folder: str, node: str, run_id: str, spec_hash: str, *, replace: bool = False
) -> None:
    """Make ``folder`` ready for a new run: refuse to clobber an earlier run unless `overwrite`
    (or ``replace``, when a resumed run starts a stage over)."""
    fs, path = filesystem(folder)
    if fs.exists(path) and not fs.isdir(path):
        raise OutputError(
            f"node '{node}': output path {folder} is a file; sinks write a folder of parts: give the "
            "node a folder path"
        )
    try:
        fs.makedirs(path, exist_ok=True)
        ours = [p for p in fs.ls(path, detail=False) if _is_ours(p)]
    except OSError as exc:
        raise OutputError(
            f"node '{node}': output folder {folder} cannot be created or read: "
            f"{exc.strerror or type(exc).__name__}: give the node a path this process may write"
        ) from None
    if ours and not (spec.overwrite or replace):
        raise OutputError(
            f"node '{node}': output folder {folder} already holds the output of an earlier run; "
            "set `overwrite: true` on the node, write somewhere else, or resume that run with --resume"
        )
    try:
        for p in ours:
            fs.rm(p)
        _write_json(
            folder,
            RUN_FILE,
            {
                "run_id": run_id,
                "spec_hash": spec_hash,
                "node": node,
                "started": datetime.now(timezone.utc).isoformat(),
            },
        )
    except OSError as exc:
        raise OutputError(
            f"node '{node}': output folder {folder} cannot be written: "
            f"{exc.strerror or type(exc).__name__}: give the node a path this process may write"
        ) from None


def resume_output(folder: str, node: str, run_id: str, spec_hash: str) -> tuple[bool, list[PartInfo]]:
    """For ``--resume``: whether the output is already complete, and the parts committed so far."""
    fs, path = filesystem(folder)
    claim = _read_json(folder, RUN_FILE)
    if claim is None:
        raise RunError(f"node '{node}': {folder} holds no run to resume (no {RUN_FILE})")
    if claim.get("run_id") != run_id:
        raise RunError(f"node '{node}': {folder} belongs to run {claim.get('run_id')}, not {run_id}")
    if claim.get("spec_hash") != spec_hash:
        raise RunError(
            f"node '{node}': the pipeline changed since run {run_id} started; resume needs the same "
            "pipeline file and --set overrides"
        )
    manifest = _read_json(folder, MANIFEST)
    if manifest is not None and manifest.get("run_id") == run_id:
        return True, [PartInfo(**p) for p in manifest["parts"]]
    parts = []
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(".part-") and name.endswith(".tmp"):
            fs.rm(entry)  # an attempt that died before its rename
            continue
        index = part_index(name)
        if index is not None:
            parts.append(PartInfo(index, "", name, _count_rows(fs, entry), int(fs.size(entry))))
    return False, parts


def write_manifest(folder: str, run_id: str, pipeline: str, spec_hash: str, parts: list[PartInfo]) -> str:
    """Seal a finished output with its manifest (written atomically); returns the manifest's URL."""
    body = {
        "run_id": run_id,
        "pipeline": pipeline,
        "spec_hash": spec_hash,
        "rows": sum(p.rows for p in parts),
        "parts": [asdict(p) for p in sorted(parts, key=lambda p: p.split_index)],
    }
    _write_json(folder, MANIFEST, body)
    return f"{folder}/{MANIFEST}"


def _count_rows(fs: object, path: str) -> int:
    if path.endswith(".parquet"):
        with fs.open(path, "rb") as fh:  # type: ignore[attr-defined]
            return int(pq.ParquetFile(fh).metadata.num_rows)
    if path.endswith(".jsonl"):
        with fs.open(path, "rb") as fh:  # type: ignore[attr-defined]
            return sum(1 for _ in fh)
    import pyarrow.csv as pacsv

    # one parser block for the whole part: a field larger than pyarrow's default 1 MiB block would
    # otherwise fail the count ("straddling object")
    size = int(fs.size(path) or 0)  # type: ignore[attr-defined]
    with fs.open(path, "rb") as fh:  # type: ignore[attr-defined]
        return int(
            pacsv.read_csv(
                fh,
                read_options=pacsv.ReadOptions(block_size=max(size + 1, 1 << 16)),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
            ).num_rows
        )


def _is_ours(path: str) -> bool:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return (
        name in (MANIFEST, RUN_FILE)
        or part_index(name) is not None
        or (name.startswith(".part-") and name.endswith(".tmp"))
    )


def _write_json(folder: str, name: str, body: dict[str, object]) -> None:
    fs, path = filesystem(folder)
    tmp = f"{path}/.{name}.tmp"
    with fs.open(tmp, "w") as fh:
        json.dump(body, fh, indent=2)
    fs.mv(tmp, f"{path}/{name}")


def _read_json(folder: str, name: str) -> dict[str, Any] | None:
    fs, path = filesystem(folder)
    target = f"{path}/{name}"
    if not fs.exists(target):
        return None
    with fs.open(target, "r") as fh:
        data = json.load(fh)
    return data if isinstance(data, dict) else None


def clear_dead_letters(folder: str, nodes: Iterable[str]) -> None:
    """Remove dead-letter files an earlier run of this stage (its ``nodes``) left in ``folder``: files
    are named ``dead-NODE[+NODE...]-SPLIT.jsonl`` after the nodes whose rows failed."""
    fs, path = filesystem(folder)
    mine = set(nodes)
    if fs.exists(path):
        for entry in fs.glob(f"{path}/dead-*.jsonl"):
            label = entry.rstrip("/").rsplit("/", 1)[-1][len("dead-") :].rsplit("-", 1)[0]
            if mine & set(label.split("+")):
                fs.rm(entry)
