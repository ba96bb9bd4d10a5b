"""The warm engine's compile cache: a pipeline is checked and compiled once per content, overrides and
environment.

A key is the file's name, a hash of its bytes, the ``--set`` values, the directory they are relative to,
whether the run uses the response cache and the policy it is checked under (a tenant's, see
:meth:`engine.service.runs.ServedRuns.policy_for`). An entry remembers which variables the check looked up
(``${NAME}`` references, the policy's) and their values, so it serves only a request whose environment
gives them the same values; any change to the file's bytes (the format has no includes: a pipeline is
one file) makes a new key, so a changed file is compiled afresh. Refusals are cached too: an invalid
file is answered from the cache until it changes.

The policy is the server's, never the request's: the caller gives it (the server's environment's, widened
by the tenant's), and ``HEADRACE_POLICY`` and ``HEADRACE_ALLOWED_*`` are never read from the values a
client sends for its references.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from engine.check import check_file
from engine.compile import Compiled, compile_pipeline
from engine.errors import ConfigError
from engine.policy import Policy

_Key = tuple[str, str, tuple[str, ...], str | None, bool, Policy]
_SERVER_SIDE = ("HEADRACE_POLICY", "HEADRACE_ALLOWED_")


@dataclass(frozen=True)
class CacheStats:
    """How the cache served so far."""

    hits: int
    misses: int
    entries: int


class _LookupRecorder(Mapping[str, str]):
    """An environment that remembers every name the check asked about (set or not); the policy's
    variables come from the server's environment."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.asked: dict[str, str | None] = {}

    def _source(self, name: str) -> Mapping[str, str]:
        return os.environ if name.startswith(_SERVER_SIDE) else self._env

    def __getitem__(self, name: str) -> str:
        source = self._source(name)
        self.asked[name] = source.get(name)
        return source[name]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        source = self._source(name)
        self.asked[name] = source.get(name)
        return name in source

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


@dataclass(frozen=True)
class _Entry:
    asked: tuple[tuple[str, str | None], ...]
    compiled: Compiled | None
    refusal: ConfigError | None


class CompileCache:
    """Compiled pipelines by content, overrides and the environment values they used (LRU-bounded)."""

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[_Key, list[_Entry]] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = 0

    def check(
        self,
        path: str,
        content: bytes,
        *,
        overrides: Sequence[str],
        env: Mapping[str, str],
        cwd: str | None,
        cache: bool = True,
        policy: Policy | None = None,
    ) -> Compiled:
        """The compiled pipeline for ``content`` (read from ``path``) under ``policy``, from the cache when
        it holds one made with the same overrides, policy and environment values; raises
        :class:`ConfigError` as ``validate`` would refuse it. ``cache``: whether the run uses the LLM
        response cache; ``policy`` defaults to the server's environment's."""
        policy = Policy.from_env() if policy is None else policy
        key: _Key = (path, hashlib.sha256(content).hexdigest(), tuple(overrides), cwd, cache, policy)
        current = _LookupRecorder(env)
        with self._lock:
            for entry in self._entries.get(key, ()):
                if all(current.get(name) == value for name, value in entry.asked):
                    self._entries.move_to_end(key)
                    self._hits += 1
                    return _outcome(entry)
            self._misses += 1
        recorder = _LookupRecorder(env)
        compiled: Compiled | None = None
        refusal: ConfigError | None = None
        try:
            checked = check_file(path, content=content, overrides=overrides, env=recorder, cwd=cwd)
            compiled = compile_pipeline(checked, cache=cache, policy=policy).raise_errors()
        except ConfigError as exc:
            refusal = exc
        entry = _Entry(tuple(sorted(recorder.asked.items())), compiled, refusal)
        with self._lock:
            variants = self._entries.setdefault(key, [])
            variants.insert(0, entry)
            del variants[4:]  # a few environments per key; more is a client varying them on purpose
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return _outcome(entry)

    def stats(self) -> CacheStats:
        """Hits, misses and entries so far."""
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._entries))


def _outcome(entry: _Entry) -> Compiled:
    if entry.refusal is not None:
        raise ConfigError(entry.refusal.diagnostics)
    assert entry.compiled is not None
    return entry.compiled
