"""The state behind ``llm_reduce``: rows grouped, packed into prompts that fit, summarised in rounds.

Memory stays bounded by the number of groups times one call's input: when a group's pending text would
no longer fit in one call, it is summarised at once and the summary takes its place. At the end of the
stream, each group's remaining texts (rows and earlier summaries) are summarised into its one answer.

The state does not call providers itself: ``answer`` (given by the runtime) sends a table of prompt
contexts (the group's keys, ``items`` and ``group``) to the node's actor pool and returns it with the
node's output column. Summaries are asked for in parallel across groups.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from engine.errors import DataError
from engine.spec.expressions import render
from operators.llm import LlmReduce
from operators.stateful import BarrierState

Answer = Callable[[pa.Table], tuple[pa.Table, list[tuple[int, str]]]]
"""Sends prompt contexts to the node's pool; returns the answered table and (index, error) failures."""

_CHARS_PER_TOKEN = 3  # as the reservation estimate: generous for prose, safe for code and non-Latin text


@dataclass
class _Group:
    key: tuple[Any, ...]
    items: list[str] = field(default_factory=list)
    chars: int = 0
    final: bool = False  # items holds the group's one finished summary


class LlmReduceState(BarrierState):
    """``push``/``finish`` like every barrier state; see the module docstring."""

    def __init__(self, spec: LlmReduce, answer: Answer, params: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self._answer = answer
        self._item = render(spec.item)
        self._params = params or {}
        self._budget = max(spec.max_input_tokens * _CHARS_PER_TOKEN - len(spec.prompt), 1)
        self._groups: dict[tuple[Any, ...], _Group] = {}
        self.calls = 0

    def push(self, table: pa.Table) -> list[pa.Table]:
        """Take a batch; summarise at once the groups whose pending text would no longer fit one call."""
        for row in table.to_pylist():
            key = tuple(row.get(k) for k in self.spec.group_by)
            group = self._groups.setdefault(key, _Group(key))
            text = self._item({**row, "params": self._params, "row": row})
            # a row longer than one call is summarised in pieces, never cut short
            for piece in [text[i : i + self._budget] for i in range(0, max(len(text), 1), self._budget)]:
                if group.items and group.chars + len(piece) > self._budget:
                    self._reduce([group])
                group.items.append(piece)
                group.chars += len(piece)
        return []

    def finish(self) -> list[pa.Table]:
        """Summarise every group down to one answer; one row per group."""
        groups = list(self._groups.values())
        while pending := [g for g in groups if not g.final]:
            before = {id(g): len(g.items) for g in pending}
            self._reduce(pending)
            for group in pending:
                group.final = len(group.items) == 1
                if not group.final and len(group.items) >= before[id(group)]:
                    raise DataError(
                        f"llm_reduce: group {self._describe(group)}: summaries are too long to combine "
                        f"within max_input_tokens {self.spec.max_input_tokens}; lower `max_tokens` or "
                        "raise `max_input_tokens`"
                    )
        keys = {name: [g.key[i] for g in groups] for i, name in enumerate(self.spec.group_by)}
        return [pa.table({**keys, self.spec.output: [g.items[0] for g in groups]})] if groups else []

    def _reduce(self, groups: list[_Group]) -> None:
        """Replace each group's items by summaries of packs that fit one call (one round, in parallel)."""
        contexts: list[dict[str, Any]] = []
        owners: list[_Group] = []
        for group in groups:
            for pack in self._packs(group.items):
                keys = dict(zip(self.spec.group_by, group.key, strict=True))
                contexts.append({**keys, "items": pack, "group": keys})
                owners.append(group)
        names = [*self.spec.group_by, "items", "group"]
        answered, failures = self._answer(pa.table({name: [c[name] for c in contexts] for name in names}))
        self.calls += len(contexts)
        if failures:
            index, error = failures[0]
            raise DataError(f"llm_reduce: group {self._describe(owners[index])}: {error}")
        for group in groups:
            group.items, group.chars = [], 0
        for group, summary in zip(owners, answered.column(self.spec.output).to_pylist(), strict=True):
            group.items.append(summary)
            group.chars += len(summary)

    def _packs(self, items: list[str]) -> list[list[str]]:
        """Consecutive items in packs that fit one call."""
        packs: list[list[str]] = [[]]
        size = 0
        for text in items:
            if packs[-1] and size + len(text) > self._budget:
                packs.append([])
                size = 0
            packs[-1].append(text)
            size += len(text)
        return packs

    def _describe(self, group: _Group) -> str:
        return (
            str(dict(zip(self.spec.group_by, group.key, strict=True))) if self.spec.group_by else "(all rows)"
        )
