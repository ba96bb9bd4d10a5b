"""Expanding the paths a node names (files, folders, globs, URLs) through fsspec."""

from __future__ import annotations

import os
from dataclasses import dataclass

import fsspec
from fsspec.core import url_to_fs

from engine.errors import DataError
from engine.policy import active_policy


@dataclass(frozen=True)
class FileRef:
    """One input file: the URL as given (for messages), its filesystem protocol path, and size."""

    url: str
    size: int


def resolve(path: str, base_dir: str) -> str:
    """``path`` made absolute against ``base_dir`` when it is a relative local path."""
    if "://" in path or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir, path))


def expand(paths: list[str], *, node: str, suffixes: tuple[str, ...] = ()) -> list[FileRef]:
    """Every file the paths name, in a stable order; folders list their files recursively."""
    out: list[FileRef] = []
    policy = active_policy()  # the run's (a tenant's on a service), else this process's environment's
    for path in paths:
        fs, fs_path = url_to_fs(path)
        protocol = _protocol(fs)
        if any(ch in fs_path for ch in "*?["):
            found = sorted(fs.glob(fs_path))
        elif fs.isdir(fs_path):
            found = sorted(p for p in fs.find(fs_path) if not _hidden(p))
            if suffixes:
                found = [p for p in found if p.lower().endswith(suffixes)] or found
        elif fs.exists(fs_path):
            found = [fs_path]
        else:
            raise DataError(f"node '{node}': no such file or folder: {path}")
        for p in found:
            if fs.isdir(p):
                continue
            # a folder or glob may hold a symlink to somewhere the policy does not allow
            policy.check_path(_url(protocol, p), node)
            out.append(FileRef(_url(protocol, p), int(fs.size(p) or 0)))
        if not found:
            raise DataError(f"node '{node}': {path} matches no files")
    return out


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and in-filesystem path of ``url``."""
    fs, path = url_to_fs(url)
    return fs, path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local disk (so Arrow's native files can be used on its paths)."""
    return _protocol(fs) in ("file", "local")


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    proto = fs.protocol
    return proto[0] if isinstance(proto, (tuple, list)) else proto


def _url(protocol: str, path: str) -> str:
    if protocol in ("file", "local"):
        return path
    return f"{protocol}://{path}"


def _hidden(path: str) -> bool:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name.startswith((".", "_"))
