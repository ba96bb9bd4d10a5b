"""Load a pipeline file and build its plan, with every problem located as file:line:col."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from connectors.files import resolve
from engine.errors import ConfigError, Diagnostic
from engine.plan import Plan, PlanProblems, Problem, build_plan
from engine.spec.document import Document, format_path
from engine.spec.loader import LoadedPipeline, load_pipeline
from operators.pii import insert_pii_masks, unreadable_prompt_inputs
from operators.providers.cache import default_cache_url


@dataclass(frozen=True)
class CheckedPipeline:
    """A pipeline that passed every load-time check, its plan, and any warnings."""

    loaded: LoadedPipeline
    plan: Plan
    warnings: list[Diagnostic]
    cwd: str | None = None
    """The directory ``--set`` paths (and a stdin pipeline's paths) are relative to; None: the process's
    (a warm engine runs pipelines for clients in other directories)."""

    def base_dir(self) -> str:
        """The folder relative paths in the file are relative to (the cwd for stdin)."""
        path = self.loaded.document.path
        if path in ("-", "<stdin>"):
            return self.cwd or os.getcwd()
        return os.path.dirname(os.path.abspath(os.path.join(self.cwd or os.getcwd(), path)))

    def resolver(self) -> Callable[[str, str], str]:
        """``resolve(node, path)``: a node's path made absolute. Paths in the file are relative to the
        file; those given with ``--set``, to the current directory."""
        file_dir = self.base_dir()
        origin = self.loaded.document.source_map.origin

        def resolve_path(node: str, path: str) -> str:
            return resolve(path, (self.cwd or os.getcwd()) if origin(("nodes", node, "path")) else file_dir)

        return resolve_path

    def cache_url(self) -> str | None:
        """Where the LLM response cache lives (None when the pipeline turns it off)."""
        settings = self.loaded.spec.cache
        if not settings.enabled:
            return None
        return default_cache_url() if settings.url is None else resolve(settings.url, self.base_dir())


def check_file(
    path: str,
    *,
    content: bytes | str | None = None,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> CheckedPipeline:
    """Validate ``path`` completely; raise :class:`ConfigError` with every error (and warning).

    ``env`` holds the values of ``${NAME}`` references (default: this process's environment); ``cwd`` is
    the directory a relative ``path`` and ``--set`` paths are relative to (default: this process's; with
    another, give the file's ``content`` too)."""
    loaded = load_pipeline(path, content=content, overrides=overrides, env=env)
    try:
        plan, problems = build_plan(loaded.spec)
        masked = insert_pii_masks(loaded.spec)
        if masked is not loaded.spec:  # checked above as written, so problems point at the user's nodes
            plan = build_plan(masked)[0]
            problems = [*problems, *unreadable_prompt_inputs(plan)]
    except PlanProblems as exc:
        located = [locate(p, loaded.document) for p in exc.problems]
        raise ConfigError(loaded.warnings + sorted(located, key=lambda d: (d.line, d.col))) from None
    warnings = loaded.warnings + [locate(p, loaded.document) for p in problems]
    return CheckedPipeline(loaded, plan, warnings, cwd)


def locate(problem: Problem, doc: Document) -> Diagnostic:
    """Place a plan problem in the file it came from."""
    span = doc.source_map.locate(problem.where, prefer=problem.at)
    return Diagnostic(
        doc.file_of(span),
        span.line,
        span.col,
        problem.message,
        severity=problem.severity,
        code=problem.code,
        json_path=format_path(problem.where),
        hint=problem.hint,
        origin=doc.source_map.origin(problem.where),
    )
