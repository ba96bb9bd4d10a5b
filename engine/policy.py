"""What a pipeline may touch: allowed roots and URL schemes for its files, allowed modules for its code.

The policy is the operator's, not the pipeline author's, so it comes from the environment of the process
that runs pipelines (or a service's configuration, :meth:`Policy.from_mapping`), never from the pipeline
file. There are two named policies:

- ``open`` (the default of ``headrace run`` on one's own machine): files anywhere, the usual URL schemes,
  code from any module, each narrowed by the variables below when they are set;
- ``closed`` (``HEADRACE_POLICY=closed``; what anything accepting pipelines from others starts with, see
  :meth:`Policy.closed`): nothing is allowed until it is listed, every root, scheme and module.

::

    HEADRACE_POLICY            ``open`` (default) or ``closed``
    HEADRACE_ALLOWED_ROOTS     folders and URL prefixes files must lie under, separated by ``os.pathsep``
                               (e.g. ``/data:/srv/out:s3://team-bucket/``); open: unset means anywhere
    HEADRACE_ALLOWED_SCHEMES   URL schemes a path may use, comma-separated; open default
                               ``file,s3,gs,gcs,az,abfs,abfss,http,https,hf``; closed default: the
                               schemes of the allowed roots (a folder allows ``file``)
    HEADRACE_ALLOWED_MODULES   module prefixes user code may come from (``map_batches``, ``flat_map``,
                               ``call``, plugin entry points), comma-separated (``mycompany.etl,tests``);
                               open: unset means any

A run carries its policy: the service compiles each run under its tenant's policy (the server's widened
by the tenant's, :meth:`Policy.widened`), the compiled plan holds it, and the runtime puts it in force
(:meth:`Policy.active`) around the run in the driver and around each task in a worker, so every later
check (a folder expanded, code imported in a worker) judges by the run's policy, not by the environment
of the process it happens in. Outside a run, :func:`active_policy` is the environment's.

A local path is judged by where it really is: ``..`` is resolved and symlinks are followed, so a link
inside an allowed folder that points outside it is refused, both when the pipeline is checked and when a
folder or glob is expanded in a worker. Code is judged by where it is *defined*: an import path must name
a function or class whose ``__module__`` is allowed, so ``mycompany:subprocess.run`` (reached through an
allowed module) is refused before anything is called.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

from engine.errors import DataError

DEFAULT_SCHEMES = frozenset({"file", "s3", "gs", "gcs", "az", "abfs", "abfss", "http", "https", "hf"})
PolicyName = Literal["open", "closed"]
ENV_VARIABLES = (
    "HEADRACE_POLICY",
    "HEADRACE_ALLOWED_ROOTS",
    "HEADRACE_ALLOWED_SCHEMES",
    "HEADRACE_ALLOWED_MODULES",
)
"""The variables that carry the policy to every process that runs a pipeline's tasks."""


class PolicyViolation(DataError):
    """A path or module the operator's policy does not allow."""

    code = "policy"
    exit_code = 1


@dataclass(frozen=True)
class Policy:
    """A named policy: allowed roots (None: anywhere), URL schemes and module prefixes (None: any)."""

    roots: tuple[str, ...] | None = None
    schemes: frozenset[str] = DEFAULT_SCHEMES
    modules: tuple[str, ...] | None = None
    name: PolicyName = "open"

    @classmethod
    def open(
        cls,
        *,
        roots: Iterable[str | os.PathLike[str]] | None = None,
        schemes: Iterable[str] | None = None,
        modules: Iterable[str] | None = None,
    ) -> Policy:
        """Everything allowed except what a given list narrows."""
        return cls(
            roots=None if roots is None else tuple(_root(r) for r in roots),
            schemes=DEFAULT_SCHEMES if schemes is None else frozenset(s.strip().lower() for s in schemes),
            modules=None if modules is None else tuple(m.strip() for m in modules),
            name="open",
        )

    @classmethod
    def closed(
        cls,
        *,
        roots: Iterable[str | os.PathLike[str]] = (),
        schemes: Iterable[str] | None = None,
        modules: Iterable[str] = (),
    ) -> Policy:
        """Nothing allowed but the roots, schemes and modules given. Without ``schemes``, the schemes of
        the roots are allowed (a local folder allows ``file``, ``s3://bucket/`` allows ``s3``)."""
        kept = tuple(_root(r) for r in roots)
        return cls(
            roots=kept,
            schemes=frozenset(_scheme(r) for r in kept)
            if schemes is None
            else frozenset(s.strip().lower() for s in schemes),
            modules=tuple(m.strip() for m in modules),
            name="closed",
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Policy:
        """The policy the environment sets (``HEADRACE_POLICY`` and ``HEADRACE_ALLOWED_*``)."""
        env = os.environ if environ is None else environ
        name = (env.get("HEADRACE_POLICY") or "open").strip().lower()
        if name not in ("open", "closed"):
            raise PolicyViolation(f"HEADRACE_POLICY={name!r}: choose `open` or `closed`")
        roots = env.get("HEADRACE_ALLOWED_ROOTS")
        schemes = env.get("HEADRACE_ALLOWED_SCHEMES")
        modules = env.get("HEADRACE_ALLOWED_MODULES")
        lists = {
            "roots": [r for r in _split_roots(roots) if r.strip()] if roots else None,
            "schemes": [s for s in schemes.split(",") if s.strip()] if schemes else None,
            "modules": [m for m in modules.split(",") if m.strip()] if modules else None,
        }
        if name == "closed":
            return cls.closed(
                roots=lists["roots"] or (), schemes=lists["schemes"], modules=lists["modules"] or ()
            )
        return cls.open(**lists)

    @classmethod
    def from_mapping(cls, data: Any, *, document: Any = None, at: tuple[str | int, ...] = ()) -> Policy:
        """The policy a configuration's ``policy:`` mapping declares (``name``: open | closed, ``roots``,
        ``schemes``, ``modules``). ``document`` (an ``engine.spec.positions.Document``) and ``at`` (where
        the mapping sits in it) place each problem at its line and column; raises ``ConfigError``."""
        from engine.policy_config import policy_from_mapping

        return policy_from_mapping(data, document=document, at=at)

    def widened(self, other: Policy) -> Policy:
        """What ``self`` or ``other`` allows: a tenant's policy applied to the server's adds to it (roots,
        schemes and modules of either; anywhere or any module if either is unrestricted; closed only if
        both are). Safe because both come from the operator's own configuration, never from a request."""
        return Policy(
            roots=_join(self.roots, other.roots, "/"),
            schemes=self.schemes | other.schemes,
            modules=_join(self.modules, other.modules, "."),
            name="closed" if self.name == other.name == "closed" else "open",
        )

    @contextmanager
    def active(self) -> Iterator[Policy]:
        """Put this policy in force for what runs in this context (this thread, or this task's
        coroutines) until the block ends: :func:`active_policy` answers it."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def environ(self) -> dict[str, str]:
        """This policy as the ``HEADRACE_*`` variables, for the workers of a service that holds it."""
        out = {"HEADRACE_POLICY": self.name, "HEADRACE_ALLOWED_SCHEMES": ",".join(sorted(self.schemes))}
        if self.roots is not None:
            out["HEADRACE_ALLOWED_ROOTS"] = os.pathsep.join(self.roots)
        if self.modules is not None:
            out["HEADRACE_ALLOWED_MODULES"] = ",".join(self.modules)
        return out

    def path_problem(self, url: str) -> str | None:
        """Why ``url`` is not allowed, or None."""
        scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
        if scheme not in self.schemes:
            allowed = ", ".join(sorted(self.schemes)) or "none"
            return (
                f"{url}: the URL scheme '{scheme}' is not allowed by the {self.name} policy "
                f"(allowed: {allowed}; HEADRACE_ALLOWED_SCHEMES)"
            )
        if self.roots is None:
            return None
        where = _where(url)
        if any(where == root or where.startswith(root.rstrip("/") + "/") for root in self.roots):
            return None
        shown = f"{url} (really {where})" if where != url else url
        if not self.roots:
            return f"{shown}: the {self.name} policy allows no files (list folders in HEADRACE_ALLOWED_ROOTS)"
        return (
            f"{shown} is outside the allowed roots {list(self.roots)} of the {self.name} policy "
            "(HEADRACE_ALLOWED_ROOTS)"
        )

    def check_path(self, url: str, node: str) -> None:
        """Raise ``PolicyViolation`` naming ``node`` when ``url`` is not allowed."""
        problem = self.path_problem(url)
        if problem is not None:
            raise PolicyViolation(f"node '{node}': {problem}")

    def module_allowed(self, module: str) -> bool:
        """True when code defined in ``module`` may run."""
        if self.modules is None:
            return True
        return any(module == m or module.startswith(m + ".") for m in self.modules)

    def module_problem(self, import_path: str) -> str | None:
        """Why code may not be imported from ``import_path`` (``pkg.mod:fn``), or None. Only the text is
        read here (no import): :func:`import_object` also checks where the named object is defined."""
        module, _, attr = import_path.partition(":")
        dunder = next((p for p in attr.split(".") if p.startswith("__")), None)
        if dunder is not None:
            return f"'{import_path}' reads '{dunder}'; name a function or class, not Python internals"
        if self.module_allowed(module):
            return None
        listed = list(self.modules or ()) or "none"
        return (
            f"module '{module}' is not in the allowed modules {listed} of the {self.name} policy "
            "(HEADRACE_ALLOWED_MODULES)"
        )


_ACTIVE: ContextVar[Policy | None] = ContextVar("headrace_policy", default=None)


def active_policy() -> Policy:
    """The policy in force here: the run's (see :meth:`Policy.active`), else the environment's."""
    found = _ACTIVE.get()
    return found if found is not None else Policy.from_env()


def _within(item: str, prefixes: Iterable[str], sep: str) -> bool:
    return any(item == p or item.startswith(p.rstrip(sep) + sep) for p in prefixes)


def _join(mine: tuple[str, ...] | None, theirs: tuple[str, ...] | None, sep: str) -> tuple[str, ...] | None:
    """The prefixes (folders, URL prefixes, module names) of either list, each once and none inside
    another; None stands for anything, so it wins."""
    if mine is None or theirs is None:
        return None
    both = set(mine) | set(theirs)
    return tuple(sorted(p for p in both if not _within(p, both - {p}, sep)))


def _root(given: str | os.PathLike[str]) -> str:
    text = os.fspath(given).strip()
    return text.rstrip("/") if "://" in text else os.path.realpath(os.path.expanduser(text))


def _split_roots(text: str) -> list[str]:
    """``HEADRACE_ALLOWED_ROOTS`` split on ``os.pathsep``, keeping URLs whole (``/data:s3://bucket``)."""
    parts = text.split(os.pathsep)
    out: list[str] = []
    for part in parts:
        if out and part.startswith("//") and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", out[-1].strip()):
            out[-1] = f"{out[-1].strip()}:{part}"  # the scheme of a URL split off on ':' (POSIX pathsep)
        else:
            out.append(part)
    return out


def _scheme(root: str) -> str:
    return root.split("://", 1)[0].lower() if "://" in root else "file"


def _where(url: str) -> str:
    """Where a path really is: local paths with ``..`` and symlinks resolved; URLs as written."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        if scheme.lower() not in ("file", "local"):
            return f"{scheme.lower()}://{os.path.normpath(rest)}" if rest else url
        url = rest
    return os.path.realpath(url)


def defined_in(obj: object) -> str | None:
    """The module an object was defined in: its ``__module__``, else its type's (an instance)."""
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        module = getattr(type(obj), "__module__", None)
    return module if isinstance(module, str) else None


def import_object(path: str, policy: Policy | None = None) -> object:
    """The function or class an import path (``package.module:name`` or ``:Class.method``) names.

    The policy is checked on the text first (nothing is imported from a module it does not allow), then
    on every object along the attribute path: none may be a module (``pkg:subprocess.run`` leaves the
    module it names) and each must be defined in an allowed module (``pkg:run`` where ``pkg`` did
    ``from subprocess import run`` is refused unless ``subprocess`` is allowed). Nothing is called.

    Raises ``PolicyViolation``, or ``ImportError`` / ``AttributeError`` saying what is missing.
    """
    policy = active_policy() if policy is None else policy
    problem = policy.module_problem(path)
    if problem is not None:
        raise PolicyViolation(f"{path}: {problem}")
    module_name, _, attr = path.partition(":")
    if not attr:
        raise PolicyViolation(f"{path}: name a function or class as `module:name`, not a module")
    target: object = importlib.import_module(module_name)
    walked = module_name
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AttributeError(f"module {module_name!r} has no {attr!r}") from None
        walked += ("." if walked != module_name else ":") + part
        if isinstance(target, ModuleType):
            raise PolicyViolation(
                f"{path}: '{walked}' is the module '{target.__name__}', reached through '{module_name}'; "
                "name a function or class defined in an allowed module"
            )
        owner = defined_in(target)
        if owner is None or not policy.module_allowed(owner):
            raise PolicyViolation(
                f"{path}: '{walked}' is defined in '{owner or 'an unknown module'}', which the {policy.name} "
                f"policy does not allow (allowed modules: {list(policy.modules or ()) or 'none'}; "
                "HEADRACE_ALLOWED_MODULES)"
            )
    if not callable(target):
        raise PolicyViolation(f"{path}: names a {type(target).__name__}, not a function or class")
    return target
