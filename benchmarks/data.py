"""Deterministic input data for the benchmarks: a Parquet dataset and a CSV file of a given size.

Rows are ``id`` (int64, 0..n-1), ``text`` (100-200 characters of pseudo-words, some ending with a
comma and a few holding double quotes, so CSV fields are quoted and hold delimiters) and ``number``
(float64, uniform in [0, 1)). Everything derives from :data:`SEED`, so a dataset can be deleted and
regenerated bit for bit (with the same pyarrow and numpy versions). Text never holds a newline, so
CSV records are lines; the plain-Ray-tasks baseline relies on that to cut the file into byte ranges.

A dataset lives in its own folder with a ``_dataset.json`` describing it; a folder whose description
matches is reused, otherwise it is regenerated (into a temporary folder, renamed into place).
"""

from __future__ import annotations

import io
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

DATA_DIR = Path(__file__).resolve().parent / "data"
"""Where generated data goes by default (gitignored)."""

SEED = 20261125
GENERATOR_VERSION = 1
TEXT_MIN_CHARS, TEXT_MAX_CHARS = 100, 200
PARQUET_FILE_BYTES = 128_000_000
"""Target size of one Parquet file; each holds two row groups of about half that."""

LARGE_DATASET_BYTES = 1_000_000_000
"""Datasets of this target size or more (about 1 GB and up on disk) are deleted once measured, unless
asked to keep them; they regenerate bit for bit (a 1 GB Parquet + CSV pair in about 30 s on 2 cores)."""

_CHUNK_ROWS = 100_000
_VOCABULARY_WORDS = 4096

Format = Literal["parquet", "csv"]

SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string()), ("number", pa.float64())])
"""The schema of every generated dataset."""


@dataclass(frozen=True)
class Dataset:
    """A generated input: its folder, files, total bytes on disk and rows."""

    format: Format
    path: str
    files: list[str]
    bytes: int
    rows: int
    target_bytes: int
    seed: int = SEED
    version: int = GENERATOR_VERSION

    def as_dict(self) -> dict[str, object]:
        """The JSON form stored in ``_dataset.json`` and in results."""
        return asdict(self)


def size_label(size_bytes: int) -> str:
    """A folder-friendly label of a size in decimal units: 200_000_000 -> ``0.2gb``."""
    return f"{size_bytes / 1e9:g}gb"


def ensure_dataset(fmt: Format, size_bytes: int, root: Path | None = None) -> Dataset:
    """The dataset of ``fmt`` and about ``size_bytes``, generated unless an identical one exists."""
    folder = (root or DATA_DIR) / f"{fmt}_{size_label(size_bytes)}"
    existing = _load(folder)
    if existing is not None and existing.target_bytes == size_bytes:
        return existing
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if fmt == "parquet":
        files, rows = _write_parquet(tmp, size_bytes)
    else:
        files, rows = _write_csv(tmp, size_bytes)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    paths = [str(folder / f) for f in files]
    dataset = Dataset(fmt, str(folder), paths, sum(Path(p).stat().st_size for p in paths), rows, size_bytes)
    (folder / "_dataset.json").write_text(json.dumps(dataset.as_dict(), indent=2))
    return dataset


def remove_large_datasets(min_target_bytes: int, root: Path | None = None) -> list[str]:
    """Delete generated datasets whose target size is ``min_target_bytes`` or more (they regenerate
    identically); returns their folders."""
    removed = []
    for meta in sorted((root or DATA_DIR).glob("*/_dataset.json")):
        dataset = _load(meta.parent)
        if dataset is not None and dataset.target_bytes >= min_target_bytes:
            shutil.rmtree(meta.parent, ignore_errors=True)
            removed.append(dataset.path)
    return removed


def _load(folder: Path) -> Dataset | None:
    meta = folder / "_dataset.json"
    if not meta.exists():
        return None
    try:
        dataset = Dataset(**json.loads(meta.read_text()))
    except (TypeError, ValueError):
        return None
    if dataset.seed != SEED or dataset.version != GENERATOR_VERSION:
        return None
    if sum(Path(p).stat().st_size for p in dataset.files if Path(p).exists()) != dataset.bytes:
        return None
    return dataset


class _TextSource:
    """Pseudo-words from a fixed vocabulary, cut into strings of 100-200 characters."""

    def __init__(self) -> None:
        rng = np.random.default_rng([SEED, 0])
        letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
        words: list[bytes] = []
        for i in range(_VOCABULARY_WORDS):
            word = bytes(rng.choice(letters, size=int(rng.integers(2, 11))))
            if i % 10 == 0:
                word += b","  # a delimiter inside a quoted CSV field
            elif i % 97 == 0:
                word = b'"' + word + b'"'  # quotes, doubled when written to CSV
            words.append(word + b" ")
        self.flat = np.frombuffer(b"".join(words), dtype=np.uint8)
        self.lengths = np.array([len(w) for w in words], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])

    def strings(self, rng: np.random.Generator, n: int) -> pa.StringArray:
        """``n`` strings: consecutive slices of a random word stream."""
        sizes = rng.integers(TEXT_MIN_CHARS, TEXT_MAX_CHARS + 1, size=n)
        total = int(sizes.sum())
        words = rng.integers(0, len(self.lengths), size=total // 5 + 64)
        lengths = self.lengths[words]
        ends = np.cumsum(lengths)
        while ends[-1] < total:  # rare: the words drawn were short; draw more
            more = rng.integers(0, len(self.lengths), size=total // 5 + 64)
            words = np.concatenate([words, more])
            lengths = self.lengths[words]
            ends = np.cumsum(lengths)
        used = int(np.searchsorted(ends, total)) + 1
        words, lengths, ends = words[:used], lengths[:used], ends[:used]
        shift = np.repeat(self.offsets[words] - (ends - lengths), lengths)
        data = self.flat[shift + np.arange(int(ends[-1]))][:total]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data.tobytes()))


def _chunk(text: _TextSource, rng: np.random.Generator, first_id: int, n: int) -> pa.Table:
    ids = pa.array(np.arange(first_id, first_id + n, dtype=np.int64))
    return pa.Table.from_arrays([ids, text.strings(rng, n), pa.array(rng.random(n))], schema=SCHEMA)


def _bytes_per_row(fmt: Format, text: _TextSource) -> float:
    sample = _chunk(text, np.random.default_rng([SEED, 1]), 0, 20_000)
    buf = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(sample, buf)
    else:
        pacsv.write_csv(sample, buf)
    return buf.tell() / sample.num_rows


def _write_parquet(folder: Path, size_bytes: int) -> tuple[list[str], int]:
    text = _TextSource()
    n_files = max(2, round(size_bytes / PARQUET_FILE_BYTES))
    rows_per_file = max(2, math.ceil(size_bytes / n_files / _bytes_per_row("parquet", text)))
    group_rows = math.ceil(rows_per_file / 2)
    files = []
    for f in range(n_files):
        name = f"part-{f:04d}.parquet"
        rng = np.random.default_rng([SEED, 100, f])
        first = f * rows_per_file
        with pq.ParquetWriter(folder / name, SCHEMA) as writer:
            for g_start in range(0, rows_per_file, group_rows):
                g_rows = min(group_rows, rows_per_file - g_start)
                chunks = [
                    _chunk(text, rng, first + g_start + c, min(_CHUNK_ROWS, g_rows - c))
                    for c in range(0, g_rows, _CHUNK_ROWS)
                ]
                writer.write_table(pa.concat_tables(chunks), row_group_size=g_rows)
        files.append(name)
    return files, n_files * rows_per_file


def _write_csv(folder: Path, size_bytes: int) -> tuple[list[str], int]:
    text = _TextSource()
    rows = max(1, math.ceil(size_bytes / _bytes_per_row("csv", text)))
    rng = np.random.default_rng([SEED, 200])
    name = "data.csv"
    with open(folder / name, "wb") as fh, pacsv.CSVWriter(fh, SCHEMA) as writer:
        for start in range(0, rows, _CHUNK_ROWS):
            writer.write_table(_chunk(text, rng, start, min(_CHUNK_ROWS, rows - start)))
    return [name], rows
