"""What ``headrace bench`` needs to know of the pipeline it measures: its sources (to build inputs of a
size and count input bytes), its sinks and dead-letter paths (to send outputs to a scratch folder), and
its LLM nodes' configured rate limits (to say what share of them a run reached).

The pipeline is checked here as ``headrace validate`` checks it (no Ray), with the run's ``--set``
values, so a broken file or a wrong ``--vary`` key is refused, located, before anything runs.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.check import CheckedPipeline, check_file


@dataclass(frozen=True)
class Source:
    """A source node: its op and the local files it reads."""

    node: str
    op: str
    files: tuple[str, ...]
    delimiter: str = ","
    quote_char: str | None = '"'
    header: bool = True
    """CSV only: how records are written, as the node reads them."""


@dataclass(frozen=True)
class RateLimit:
    """The rates an LLM node's provider account allows (per minute; None: no limit of that kind)."""

    provider: str
    requests_per_minute: float | None = None
    input_tokens_per_minute: float | None = None
    output_tokens_per_minute: float | None = None


@dataclass(frozen=True)
class PipelineFacts:
    """The parts of a checked pipeline that benchmarking acts on."""

    name: str
    kind: str
    """``dataflow`` or ``graph`` (a state graph: benchmarked too, without input figures)."""
    sources: tuple[Source, ...] = ()
    sinks: tuple[str, ...] = ()
    dead_letter_nodes: tuple[str, ...] = ()
    rate_limits: dict[str, RateLimit] = field(default_factory=dict)
    """By LLM node: its provider's configured limits (only nodes whose provider sets some)."""

    def input_bytes(self) -> int:
        """The size of the files the sources read (0 when they are not local files)."""
        return sum(os.path.getsize(f) for s in self.sources for f in s.files if os.path.isfile(f))

    def scratch_overrides(self, folder: str) -> list[str]:
        """``--set`` values that send every sink's output and dead letters under ``folder``."""
        sets = [f"nodes.{node}.path={os.path.join(folder, node)}" for node in self.sinks]
        sets += [
            f"nodes.{node}.on_error.dead_letter_path={os.path.join(folder, node + '.dead')}"
            for node in self.dead_letter_nodes
        ]
        return sets


def inspect_pipeline(path: str, overrides: Sequence[str]) -> PipelineFacts:
    """Check ``path`` with ``overrides`` and return the facts benchmarking needs."""
    return facts_of(check_file(path, overrides=overrides))


def facts_of(checked: CheckedPipeline) -> PipelineFacts:
    """The facts of an already checked pipeline."""
    spec = checked.loaded.spec
    plan = checked.plan
    resolve = checked.resolver()
    sources: list[Source] = []
    sinks: list[str] = []
    dead: list[str] = []
    limits: dict[str, RateLimit] = {}
    state = False
    for node in plan.nodes.values():
        if node.kind == "state":
            state = True
        elif node.kind == "source":
            paths = getattr(node.spec, "path", None)
            listed = [paths] if isinstance(paths, str) else list(paths or [])
            files = tuple(f for p in listed for f in _local_files(resolve(node.id, p)))
            sources.append(
                Source(
                    node.id,
                    node.op,
                    files,
                    getattr(node.spec, "delimiter", ","),
                    getattr(node.spec, "quote_char", '"'),
                    getattr(node.spec, "header", True),
                )
            )
        elif node.kind == "sink" and isinstance(getattr(node.spec, "path", None), str):
            sinks.append(node.id)
        if node.on_error.dead_letter_path:
            dead.append(node.id)
        provider = getattr(node.spec, "provider", None)
        settings = spec.providers.get(provider) if isinstance(provider, str) else None
        if isinstance(provider, str) and settings is not None and settings.rate_limits is not None:
            r = settings.rate_limits
            limits[node.id] = RateLimit(
                provider, r.requests_per_minute, r.input_tokens_per_minute, r.output_tokens_per_minute
            )
    return PipelineFacts(
        spec.name,
        "graph" if state else "dataflow",
        tuple(sources),
        tuple(sinks),
        tuple(dead),
        limits,
    )


def _local_files(path: str) -> tuple[str, ...]:
    """The files a source path names: a file, a folder's files, or a glob's matches (local only)."""
    if "://" in path and not path.startswith("file://"):
        return ()
    path = path.removeprefix("file://")
    if os.path.isdir(path):
        return tuple(
            sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                if not name.startswith((".", "_"))
            )
        )
    if any(c in path for c in "*?["):
        return tuple(sorted(glob.glob(path, recursive=True)))
    return (path,)
