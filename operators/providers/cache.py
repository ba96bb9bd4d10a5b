"""A content-addressed store of LLM answers, so that asking the same request twice pays once.

An answer is stored under its request's fingerprint (``LlmRequest.fingerprint``) in any fsspec location::

    <root>/<fp[:2]>/<fp>.json      {"format": 1, "request": request.to_json(), "response": response.to_json()}

Files are JSON, never pickle: a cache may be shared or downloaded, and unpickling it would run its code.

``get`` returns the stored ``LlmResponse`` unchanged (its ``source`` still says how it was first obtained),
or None; the caller knows a non-None answer came from the cache, and charges nothing for it. ``get`` never
gives a wrong answer and never raises over a bad file: the stored request must equal the asked one (all
of ``to_json`` but ``timeout_s``), so a hash collision, a hand-edited file or an entry written by an
older request shape is a miss; a file that cannot be read or parsed is a miss and one warning.

``put`` writes to a temporary name in the entry's folder and renames it into place (``os.replace`` on a
local disk), so concurrent writers in many threads, processes or Ray workers never expose half a file; the
last writer of a key wins, and any of them is right. Folders are made on first write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

from connectors.files import filesystem, is_local
from operators.providers.base import LlmRequest, LlmResponse, identity_of

FORMAT = 1
CACHE_DIR_VARIABLE = "HEADRACE_CACHE_DIR"


class CacheWarning(UserWarning):
    """A cache entry could not be read (a miss) or written (the answer is kept, just not cached)."""


@dataclass(frozen=True)
class CacheStats:
    """What one ``ResponseCache`` instance has done since it was made (counts are per process)."""

    hits: int = 0
    misses: int = 0
    writes: int = 0


def default_cache_url(environ: Mapping[str, str] | None = None) -> str:
    """``$HEADRACE_CACHE_DIR``, else ``$XDG_CACHE_HOME/headrace/llm``, else ``~/.cache/headrace/llm``."""
    env = os.environ if environ is None else environ
    configured = env.get(CACHE_DIR_VARIABLE)
    if configured:
        return configured
    xdg = env.get("XDG_CACHE_HOME")
    # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = xdg if xdg and os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "headrace", "llm")


class ResponseCache:
    """LLM answers keyed by request fingerprint, under ``url`` (a local path or any fsspec URL).

    ``url`` defaults to ``default_cache_url()``. An instance pickles as its URL, so it can be sent to Ray
    workers; each copy counts its own ``stats``.
    """

    def __init__(self, url: str | None = None) -> None:
        url = default_cache_url() if url is None else url
        self.url = url if "://" in url else os.path.expanduser(url)
        self._fs, root = filesystem(self.url)
        self._root = root.rstrip("/")
        self._local = is_local(self._fs)
        self._lock = threading.Lock()
        self._counts = {"hits": 0, "misses": 0, "writes": 0}
        self._warned: set[str] = set()
        self._made_dirs: set[str] = set()

    def __repr__(self) -> str:
        return f"ResponseCache({self.url!r})"

    def __reduce__(self) -> tuple[type[ResponseCache], tuple[str]]:
        return (type(self), (self.url,))

    @property
    def stats(self) -> CacheStats:
        """Hits, misses and writes so far, as one consistent snapshot."""
        with self._lock:
            return CacheStats(**self._counts)

    def path(self, request: LlmRequest) -> str:
        """Where the answer to ``request`` is stored (in the cache's filesystem)."""
        return self._path(request.fingerprint())

    def _path(self, fingerprint: str) -> str:
        return f"{self._root}/{fingerprint[:2]}/{fingerprint}.json"

    def get(self, request: LlmRequest) -> LlmResponse | None:
        """The stored answer to ``request``, or None (never an exception over a missing or bad file)."""
        identity = request.identity_json()  # hashed for the path, compared with the stored request
        path = self._path(hashlib.sha256(identity.encode("utf-8")).hexdigest())
        response = self._read(path, identity)
        self._count("hits" if response is not None else "misses")
        return response

    def put(self, request: LlmRequest, response: LlmResponse) -> bool:
        """Store ``response`` as the answer to ``request``; False (and one warning) if storage failed.

        A failed write does not raise: the answer is still good, only not cached (a read-only or full
        cache must not fail a run). Values that are not JSON raise ``TypeError``: that is a bug.
        """
        entry = {"format": FORMAT, "request": request.to_json(), "response": response.to_json()}
        data = json.dumps(entry, sort_keys=True, ensure_ascii=False).encode("utf-8")
        path = self.path(request)
        folder, name = path.rsplit("/", 1)
        temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"  # unique per writer; never a ``.json`` name
        try:
            # A local folder may be deleted under us (a user clearing the cache), so it is made every time,
            # which costs a syscall; object stores need no folders, so they are "made" once per instance.
            if self._local or folder not in self._made_dirs:
                self._fs.makedirs(folder, exist_ok=True)
                self._made_dirs.add(folder)
            self._fs.pipe_file(temporary, data)
            if self._local:
                os.replace(temporary, path)  # atomic, and overwrites, on POSIX and Windows alike
            else:
                self._fs.mv(temporary, path)
        except OSError as exc:
            self._remove_quietly(temporary)
            self._warn_once(f"write:{type(exc).__name__}", f"could not write cache entry {path}: {exc}", 3)
            return False
        self._count("writes")
        return True

    def _read(self, path: str, identity: str) -> LlmResponse | None:
        try:
            if self._local:  # a plain read: fsspec's local layer costs as much again as the read itself
                with open(path, "rb") as fh:
                    raw = fh.read()
            else:
                raw = self._fs.cat_file(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            self._warn_once(path, f"could not read cache entry {path} ({exc}); treating it as a miss", 4)
            return None
        try:
            entry = json.loads(raw)
            if not isinstance(entry, dict) or entry.get("format") != FORMAT:
                raise ValueError(f"not a format {FORMAT} cache entry")
            stored = entry["request"]
            if not isinstance(stored, Mapping):
                raise TypeError(f"the stored request is a {type(stored).__name__}, not an object")
            if identity_of(stored) != identity:
                return None  # a collision, an edit, or an older request shape: never answer another request
            return LlmResponse.from_json(entry["response"])
        except (ValueError, KeyError, TypeError) as exc:
            self._warn_once(path, f"unreadable cache entry {path} ({exc}); treating it as a miss", 4)
            return None

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _warn_once(self, key: str, message: str, stacklevel: int) -> None:
        """Warn about ``key`` once per instance; ``stacklevel`` points the warning at our caller's line."""
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        warnings.warn(message, CacheWarning, stacklevel=stacklevel)

    def _remove_quietly(self, path: str) -> None:
        with contextlib.suppress(OSError):
            self._fs.rm_file(path)
