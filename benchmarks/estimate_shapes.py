"""The input shapes the ``estimate`` family measures, and a generated file as large as wanted.

Each shape is a pipeline ``read → [filter] → llm_classify (anthropic, claude-haiku-4-5) → write_parquet``
over input written here, deterministically (a seeded generator), with rows whose texts change along the
input in one way each (:data:`SHAPES`). Texts hold commas and quotes, so CSV fields are quoted and a
window's quote state matters.

:class:`GeneratedCsv` is a read-only fsspec filesystem (protocol ``generated``) whose one file, of any
size, is a CSV computed from the offset asked for: a 10 GB input without 10 GB on disk, whose true row
count is known, and which counts the bytes read from it.
"""

from __future__ import annotations

import csv
import io
import json
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fsspec import AbstractFileSystem
from fsspec.spec import AbstractBufferedFile

MODEL = "claude-haiku-4-5"
LABELS = ("bug", "billing", "feature", "other")
_WORDS = (
    "the app crashes when I open settings, again",
    'my invoice says "paid" but it was not',
    "please add dark mode",
    "login fails after the update",
    "refund requested for order",
    "export to CSV, with quotes, breaks",
    "slow sync on mobile",
    "great product, thanks",
)


@dataclass(frozen=True)
class Shape:
    """One input shape: how to write it, and whether its pipeline filters."""

    name: str
    title: str
    write: Callable[[Path, int], Path]
    """Writes the input for about ``rows`` rows under a folder; returns the path the pipeline reads."""
    source_op: str = "read_csv"
    filter_where: str | None = None
    prompt: str = "Classify this support ticket: {{ text }}"


def _text(rng: random.Random, words: int) -> str:
    out: list[str] = []
    while len(out) < words:
        out.extend(rng.choice(_WORDS).split(" "))
    return " ".join(out[:words])


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _rows(
    n: int, words: Callable[[int], int], spam: Callable[[int], bool], seed: int
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {"id": i, "status": "spam" if spam(i) else "open", "text": _text(rng, words(i))} for i in range(n)
    ]


def _growing(first: int, last: int, n: int) -> Callable[[int], int]:
    return lambda i: first + (last - first) * i // max(n - 1, 1)


def _issue(folder: Path, n: int) -> Path:
    # texts growing from 5 to 300 words; every third row of the second half is spam, which the filter drops
    rows = _rows(n, _growing(5, 300, n), lambda i: i >= n // 2 and i % 3 == 0, 1)
    return _write_csv(folder / "tickets.csv", rows)


def _uniform(folder: Path, n: int) -> Path:
    rng = random.Random(2)
    lengths = [rng.randint(40, 80) for _ in range(n)]
    return _write_csv(folder / "tickets.csv", _rows(n, lambda i: lengths[i], lambda i: False, 2))


def _grow(folder: Path, n: int) -> Path:
    return _write_csv(folder / "tickets.csv", _rows(n, _growing(5, 300, n), lambda i: False, 3))


def _shrink(folder: Path, n: int) -> Path:
    return _write_csv(folder / "tickets.csv", _rows(n, _growing(300, 5, n), lambda i: False, 4))


def _one_part(folder: Path, n: int) -> Path:
    # 60 words a row; in the third quarter only, nine rows in ten are spam
    rows = _rows(n, lambda i: 60, lambda i: n // 2 <= i < 3 * n // 4 and i % 10 != 0, 5)
    return _write_csv(folder / "tickets.csv", rows)


def _folder(folder: Path, n: int) -> Path:
    # five files of very unequal sizes and row lengths, in the order a folder lists them
    where = folder / "tickets"
    where.mkdir(parents=True, exist_ok=True)
    shares = ((0.05, 200), (0.4, 20), (0.1, 120), (0.35, 8), (0.1, 60))
    at = 0
    for i, (share, words) in enumerate(shares):
        count = max(1, round(n * share))
        rows = _rows(count, lambda _i, w=words: w, lambda _i: False, 10 + i)
        for row in rows:
            row["id"] += at
        at += count
        _write_csv(where / f"part-{i}.csv", rows)
    return where


def _jsonl(folder: Path, n: int) -> Path:
    # nested objects whose text grows through the file, and a list of tags of varying length
    rng = random.Random(6)
    path = folder / "tickets.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            words = 10 + 200 * i // max(n - 1, 1)
            record = {
                "id": i,
                "ticket": {"subject": _text(rng, 6), "body": {"text": _text(rng, words), "lang": "en"}},
                "tags": [rng.choice(LABELS) for _ in range(rng.randint(0, 6))],
            }
            fh.write(json.dumps(record) + "\n")
    return path


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape(
            "issue_example",
            "the issue's example: texts growing 5 → 300 words, a filter dropping a third of the second half",
            _issue,
            filter_where="status <> 'spam'",
        ),
        Shape("uniform", "uniform rows (40-80 words)", _uniform),
        Shape("growing", "rows growing through the file (5 → 300 words)", _grow),
        Shape("shrinking", "rows shrinking through the file (300 → 5 words)", _shrink),
        Shape(
            "filter_one_part",
            "a selective filter only in one part (90% dropped in the third quarter)",
            _one_part,
            filter_where="status <> 'spam'",
        ),
        Shape("folder", "a folder of five unequal files (5-40% of rows, 8-200 words a row)", _folder),
        Shape(
            "jsonl_nested",
            "JSONL with nested text growing 10 → 210 words, and lists",
            _jsonl,
            source_op="read_jsonl",
            prompt="Classify this ticket. Subject: {{ ticket.subject }}. Tags: {{ tags | join(', ') }}. "
            "Body: {{ ticket.body.text }}",
        ),
    )
}
"""Every shape, in the order the family runs them."""


def answer(request: Any) -> Any:
    """The loopback server's answer to a classify call: a label drawn from the prompt (each about as
    likely), as a model spreads its answers; None (the server's default) for anything else."""
    schema = request.get("schema") or {}
    enum = schema.get("properties", {}).get("value", {}).get("enum")
    if not enum:
        return None
    return {"value": enum[zlib.crc32(request["prompt"].encode("utf-8")) % len(enum)]}


def pipeline_yaml(shape: Shape, path: Path | str, out: Path, url: str, concurrency: int = 32) -> str:
    """The pipeline of ``shape`` reading ``path``, against the loopback server at ``url``."""
    types = (
        ", column_types: {id: int64, status: string, text: string}" if shape.source_op == "read_csv" else ""
    )
    upstream = "input"
    lines = [
        "version: 1",
        f"name: bench-estimate-{shape.name}",
        "providers:",
        "  anthropic:",
        f'    config: {{base_url: "{url}", api_key: "${{HEADRACE_BENCH_KEY}}"}}',
        "nodes:",
        f"  input: {{op: {shape.source_op}, path: {json.dumps(str(path))}{types}}}",
    ]
    if shape.filter_where is not None:
        lines.append(f"  kept: {{op: filter, input: input, where: {json.dumps(shape.filter_where)}}}")
        upstream = "kept"
    lines += [
        "  classify:",
        "    op: llm_classify",
        f"    input: {upstream}",
        "    provider: anthropic",
        f"    model: {MODEL}",
        f"    prompt: {json.dumps(shape.prompt)}",
        f"    labels: {json.dumps(list(LABELS))}",
        f"    concurrency: {concurrency}",
        f"  output: {{op: write_parquet, input: classify, path: {json.dumps(str(out))}, overwrite: true}}",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- a generated file of any size


def generated_block(rows: int = 1000, seed: int = 7) -> bytes:
    """The CSV rows :class:`GeneratedCsv` repeats: texts growing 5 → 300 words through the block, quoted."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    rng = random.Random(seed)
    for i in range(rows):
        writer.writerow([i, "open", _text(rng, 5 + 295 * i // max(rows - 1, 1))])
    return buffer.getvalue().encode("utf-8")


class GeneratedCsv(AbstractFileSystem):  # type: ignore[misc]
    """``generated://<bytes>.csv``: a CSV of about that many bytes (a header, then :func:`generated_block`
    repeated), computed from the offsets read; ``bytes_read`` counts what every open file returned."""

    protocol = "generated"
    header = b"id,status,text\n"
    block = b""
    block_rows = 1000
    bytes_read: ClassVar[int] = 0

    @classmethod
    def rows(cls, path: str) -> int:
        """The file's true row count."""
        return cls._blocks(path) * cls.block_rows

    @classmethod
    def _blocks(cls, path: str) -> int:
        if not cls.block:
            cls.block = generated_block(cls.block_rows)
        wanted = int(cls._strip_protocol(path).split("/")[-1].split(".")[0])
        return max(1, wanted // len(cls.block))

    @classmethod
    def _size(cls, path: str) -> int:
        return len(cls.header) + cls._blocks(path) * len(cls.block)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return {"name": self._strip_protocol(path), "size": self._size(path), "type": "file"}

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        entry = self.info(path)
        return [entry] if detail else [entry["name"]]

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, **kwargs: Any) -> _GeneratedFile:
        return _GeneratedFile(self, path, mode, block_size=block_size or 64 * 1024, cache_type="none")

    def fetch(self, path: str, start: int, end: int) -> bytes:
        """The bytes [start, end) of the file at ``path``."""
        size = self._size(path)
        end = min(end, size)
        out = bytearray()
        at = start
        head = len(self.header)
        while at < end:
            if at < head:
                piece = self.header[at : min(end, head)]
            else:
                inner = (at - head) % len(self.block)
                piece = self.block[inner : inner + (end - at)]
            out += piece
            at += len(piece)
        GeneratedCsv.bytes_read += len(out)
        return bytes(out)


class _GeneratedFile(AbstractBufferedFile):  # type: ignore[misc]
    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs.fetch(self.path, start, end)  # type: ignore[no-any-return]
