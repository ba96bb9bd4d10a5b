"""What a pipeline may touch: allowed roots and URL schemes for its files, allowed modules for its code.

The policy is the operator's, not the pipeline author's, so it comes from the environment of the process
that runs pipelines (a service sets it once), never from the pipeline file:

    HEADRACE_ALLOWED_ROOTS     folders and URL prefixes files must lie under, separated by ``os.pathsep``
                               (e.g. ``/data:/srv/out:s3://team-bucket/``); unset: anywhere
    HEADRACE_ALLOWED_SCHEMES   URL schemes a path may use, comma-separated; default
                               ``file,s3,gs,gcs,az,abfs,abfss,http,https,hf``
    HEADRACE_ALLOWED_MODULES   module prefixes user code may be imported from (``map_batches``,
                               ``flat_map``, ``call``), comma-separated (``mycompany.etl,tests``); unset: any

A local path is judged by where it really is: ``..`` is resolved and symlinks are followed, so a link
inside an allowed folder that points outside it is refused, both when the pipeline is checked and when a
folder or glob is expanded in a worker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from engine.errors import DataError

DEFAULT_SCHEMES = frozenset({"file", "s3", "gs", "gcs", "az", "abfs", "abfss", "http", "https", "hf"})


class PolicyViolation(DataError):
    """A path or module the operator's policy does not allow."""

    code = "policy"
    exit_code = 1


@dataclass(frozen=True)
class Policy:
    """Allowed roots (None: anywhere), URL schemes and module prefixes (None: any)."""

    roots: tuple[str, ...] | None = None
    schemes: frozenset[str] = DEFAULT_SCHEMES
    modules: tuple[str, ...] | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Policy:
        """The policy the environment sets."""
        env = os.environ if environ is None else environ
        roots = env.get("HEADRACE_ALLOWED_ROOTS")
        schemes = env.get("HEADRACE_ALLOWED_SCHEMES")
        modules = env.get("HEADRACE_ALLOWED_MODULES")
        return cls(
            roots=tuple(_root(r) for r in roots.split(os.pathsep) if r.strip()) if roots else None,
            schemes=frozenset(s.strip().lower() for s in schemes.split(",") if s.strip())
            if schemes
            else DEFAULT_SCHEMES,
            modules=tuple(m.strip() for m in modules.split(",") if m.strip()) if modules else None,
        )

    def path_problem(self, url: str) -> str | None:
        """Why ``url`` is not allowed, or None."""
        scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
        if scheme not in self.schemes:
            allowed = ", ".join(sorted(self.schemes))
            return (
                f"{url}: the URL scheme '{scheme}' is not allowed "
                f"(allowed: {allowed}; HEADRACE_ALLOWED_SCHEMES)"
            )
        if self.roots is None:
            return None
        where = _where(url)
        if any(where == root or where.startswith(root.rstrip("/") + "/") for root in self.roots):
            return None
        shown = f"{url} (really {where})" if where != url else url
        return f"{shown} is outside the allowed roots {list(self.roots)} (HEADRACE_ALLOWED_ROOTS)"

    def check_path(self, url: str, node: str) -> None:
        """Raise ``PolicyViolation`` naming ``node`` when ``url`` is not allowed."""
        problem = self.path_problem(url)
        if problem is not None:
            raise PolicyViolation(f"node '{node}': {problem}")

    def module_problem(self, import_path: str) -> str | None:
        """Why code may not be imported from ``import_path`` (``pkg.mod:fn``), or None."""
        if self.modules is None:
            return None
        module = import_path.partition(":")[0]
        if any(module == m or module.startswith(m + ".") for m in self.modules):
            return None
        return (
            f"module '{module}' is not in the allowed modules {list(self.modules)} (HEADRACE_ALLOWED_MODULES)"
        )


def _root(text: str) -> str:
    text = text.strip()
    return text.rstrip("/") if "://" in text else os.path.realpath(os.path.expanduser(text))


def _where(url: str) -> str:
    """Where a path really is: local paths with ``..`` and symlinks resolved; URLs as written."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        if scheme.lower() not in ("file", "local"):
            return f"{scheme.lower()}://{os.path.normpath(rest)}" if rest else url
        url = rest
    return os.path.realpath(url)


def import_object(path: str) -> object:
    """The object an import path (``package.module:name.attr``) names, if the policy allows its module.

    Raises ``PolicyViolation``, or ``ImportError`` / ``AttributeError`` saying what is missing.
    """
    import importlib

    problem = Policy.from_env().module_problem(path)
    if problem is not None:
        raise PolicyViolation(f"{path}: {problem}")
    module_name, _, attr = path.partition(":")
    target: object = importlib.import_module(module_name)
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AttributeError(f"module {module_name!r} has no {attr!r}") from None
    return target
