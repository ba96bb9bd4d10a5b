"""The discovery file of a running ``headrace serve``: where it listens, its pid, and its bearer token.

The server writes ``$HEADRACE_HOME/engine.json`` (mode 0600, so only its user reads the token) once it
listens, and removes it on a clean stop. A client trusts the file only while its pid is alive and the
URL answers; a file left by a killed server is ignored (and replaced by the next server).

This module is on the light client path of ``headrace run``: standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

DISCOVERY_FILE = "engine.json"


@dataclass(frozen=True)
class EngineInfo:
    """Where a running engine listens and how to talk to it."""

    url: str
    """Base URL, e.g. ``http://127.0.0.1:8537``."""
    pid: int
    """The server's process id (on this machine)."""
    started: float
    """Start time, seconds since the epoch."""
    token: str
    """The bearer token every request but ``/healthz`` and ``/readyz`` carries."""


def headrace_home(env: Mapping[str, str] | None = None) -> Path:
    """``$HEADRACE_HOME``, else ``$XDG_DATA_HOME/headrace``, else ``~/.local/share/headrace`` (as the runs
    store's default, so a server and its clients agree on it)."""
    env = os.environ if env is None else env
    home = env.get("HEADRACE_HOME")
    if not home:
        xdg = env.get("XDG_DATA_HOME")
        base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
        home = str(base / "headrace")
    return Path(os.path.expanduser(home)).absolute()


def discovery_path(env: Mapping[str, str] | None = None) -> Path:
    """The discovery file under :func:`headrace_home`."""
    return headrace_home(env) / DISCOVERY_FILE


def write_info(info: EngineInfo, path: Path) -> None:
    """Write ``info`` to ``path`` atomically, readable by this user alone (it holds the token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(asdict(info), fh)
    os.chmod(tmp, 0o600)  # O_CREAT's mode is masked by the umask; the token must stay private anyway
    tmp.replace(path)


def read_info(path: Path) -> EngineInfo | None:
    """The engine the file names, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return EngineInfo(str(data["url"]), int(data["pid"]), float(data["started"]), str(data["token"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_info(path: Path, pid: int) -> None:
    """Remove the file if it still names process ``pid`` (another server may have replaced it)."""
    info = read_info(path)
    if info is not None and info.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, though not ours
        return True
    return True


def live_info(path: Path) -> EngineInfo | None:
    """The file's engine when its process is alive (whether it answers is the client's to try)."""
    info = read_info(path)
    return info if info is not None and pid_alive(info.pid) else None
