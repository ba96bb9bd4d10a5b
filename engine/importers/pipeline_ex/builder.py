"""The graph an imported pipeline_ex workflow becomes, built step by step, and its located problems.

:class:`GraphBuilder` walks the steps in order, names a node for each, joins them with edges (a
construct's ways out are *holes*, filled with whatever node follows it), keeps the comments written above
each step, and records every problem at the ``FILE:LINE:COL`` of the step or field at fault. What each
step type becomes is :mod:`engine.importers.pipeline_ex.handlers`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml.comments import CommentedMap, CommentedSeq

import engine.importers.pipeline_ex.steps as S

__all__ = [
    "AGENT_TYPES",
    "COMMON_FIELDS",
    "DEFAULT_KEYS",
    "HANDLED_FIELDS",
    "LLM_TYPES",
    "RUNTIME",
    "WORKFLOW_KEYS",
    "GraphBuilder",
    "Hole",
    "ImportProblem",
    "escape",
]

Hole = Callable[[str], None]
"""Links a construct's way out to the node that follows it."""

RUNTIME = "engine.importers.pipeline_ex.runtime"
COMMON_FIELDS = frozenset({"name", "type", "condition", "output_to_file"})
LLM_TYPES = {"claude", "claude_smart", "claude_extract", "claude_robust", "gemini", "gemini_instructor"}
AGENT_TYPES = {"claude_session", "codebase_query", "file_ops"}
HANDLED_FIELDS: dict[str, set[str]] = {
    "claude": {"prompt", "claude_options"},
    "claude_smart": {"prompt", "claude_options", "preset", "environment_aware"},
    "claude_extract": {"prompt", "claude_options", "preset", "extraction_config", "schema"},
    "claude_robust": {"prompt", "claude_options", "preset", "retry_config"},
    "claude_batch": {"prompt", "claude_options", "preset", "batch_config", "tasks"},
    "parallel_claude": {"parallel_tasks"},
    "gemini": {"prompt", "model", "token_budget", "output_schema", "timeout_ms"},
    "gemini_instructor": {"prompt", "model", "timeout_ms"},
    "set_variable": {"variables", "scope"},
    "data_transform": {"input_source", "operations", "output_field"},
    "for_loop": {"iterator", "data_source", "steps", "parallel", "max_parallel", "break_on_error"},
    "while_loop": {"steps", "max_iterations"},
    "switch": {"expression", "cases", "default"},
    "pipeline": {"pipeline_file", "inputs", "outputs", "config"},
    "checkpoint": {"checkpoint_name", "state", "include_workspace", "compress"},
}
WORKFLOW_KEYS = {
    "name",
    "description",
    "version",
    "steps",
    "defaults",
    "global_vars",
    "checkpoint_enabled",
    "workspace_dir",
    "checkpoint_dir",
}
DEFAULT_KEYS = {
    "claude_options",
    "claude_preset",
    "gemini_model",
    "gemini_token_budget",
    "output_dir",
    "claude_output_format",
}


@dataclass(frozen=True)
class ImportProblem:
    """One problem of a conversion, located in the pipeline_ex file."""

    path: str
    line: int
    col: int
    severity: Literal["error", "warning"]
    message: str

    def format(self) -> str:
        """``FILE:LINE:COL: SEVERITY: MESSAGE``, as ``headrace validate`` prints its problems."""
        return f"{self.path}:{self.line}:{self.col}: {self.severity}: {self.message}"


@dataclass
class GraphBuilder:
    path: str
    source_lines: list[str]
    base_dir: Path
    problems: list[ImportProblem] = field(default_factory=list)
    nodes: CommentedMap = field(default_factory=CommentedMap)
    edges: list[dict[str, Any]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # step name -> node name
    seen_steps: set[str] = field(default_factory=set)
    defaults: dict[str, Any] = field(default_factory=dict)
    nested: dict[str, str] = field(default_factory=dict)
    output_dir: str = "outputs"
    has_loops: bool = False

    # -- problems ------------------------------------------------------------------------------------

    def _at(self, node: Any, key: Any = None) -> tuple[int, int]:
        try:
            if key is not None and isinstance(node, (CommentedMap, CommentedSeq)):
                line, col = node.lc.key(key) if isinstance(node, CommentedMap) else node.lc.item(key)
            else:
                line, col = node.lc.line, node.lc.col
            return line + 1, col + 1
        except (AttributeError, KeyError, IndexError, TypeError):
            return 1, 1

    def warn(self, node: Any, key: Any, message: str) -> None:
        self.problems.append(ImportProblem(self.path, *self._at(node, key), "warning", message))

    def error(self, node: Any, key: Any, message: str) -> None:
        self.problems.append(ImportProblem(self.path, *self._at(node, key), "error", message))

    # -- the graph -----------------------------------------------------------------------------------

    def node_name(self, step: str) -> str:
        base = "".join(c if c.isalnum() or c in "_-" else "_" for c in step) or "step"
        base = base if (base[0].isalpha() or base[0] == "_") else f"s_{base}"
        name, n = base[:120], 2
        while name in self.nodes or name in ("START", "END"):
            name, n = f"{base[:116]}_{n}", n + 1
        return name

    def add_node(
        self, name: str, step: CommentedMap, fn: str, kwargs: dict[str, Any], description: str
    ) -> None:
        node = CommentedMap(op="call", fn=f"{RUNTIME}:{fn}", description=description)
        node["kwargs"] = escape(kwargs)
        self.nodes[name] = node
        comment = self._comment_above(step)
        if comment:
            self.nodes.yaml_set_comment_before_after_key(name, before=comment, indent=2)

    def _comment_above(self, step: Any) -> str | None:
        try:
            line = step.lc.line  # 0-based line of the step's first key
        except AttributeError:
            return None
        lines: list[str] = []
        i = line - 1
        while i >= 0:
            text = self.source_lines[i].strip()
            if text.startswith("- "):  # the step's own list dash sits on its first line
                break
            if not text.startswith("#"):
                break
            lines.insert(0, text.lstrip("#").strip())
            i -= 1
        return "\n".join(lines) if lines else None

    def chain(self, steps: Any, loop: str | None) -> tuple[str | None, list[Hole], int]:
        """Nodes for ``steps`` in order: (the first node, the ways out of the last, a bound on steps)."""
        first: str | None = None
        holes: list[Hole] = []
        bound = 0
        for step in steps or []:
            if not isinstance(step, CommentedMap):
                self.error(steps, None, f"a step must be a mapping, got {type(step).__name__}")
                continue
            built = self.step(step, loop)
            if built is None:
                continue
            entry, exits, cost = built
            for hole in holes:
                hole(entry)
            first = first or entry
            holes, bound = exits, bound + cost
        return first, holes, bound

    def link(self, source: str) -> Hole:
        return lambda target: self.edges.append({"from": source, "to": target})

    # -- steps ---------------------------------------------------------------------------------------

    def step(self, step: CommentedMap, loop: str | None) -> tuple[str, list[Hole], int] | None:
        name, kind = step.get("name"), step.get("type")
        if not isinstance(name, str) or not name:
            self.error(step, None, "step has no `name`; add `name: some_step`")
            return None
        if not isinstance(kind, str):
            self.error(step, "name", f"step {name!r} has no `type`")
            return None
        known = HANDLED_FIELDS.get(kind)
        if known is None and kind not in AGENT_TYPES:
            self.error(
                step,
                "type",
                f"step {name!r}: unknown step type {kind!r}; pipeline_ex runs none by that name either",
            )
            return None
        for key in step:
            if known is not None and key not in COMMON_FIELDS and key not in known:
                self.warn(
                    step,
                    key,
                    f"step {name!r}: field {key!r} is not converted (pipeline_ex's "
                    f"{kind} step does not read it, or headrace has no equivalent)",
                )
        node = self.node_name(name)
        self.names[name] = node
        common: dict[str, Any] = {"step": name}
        if step.get("condition") is not None and kind not in ("while_loop",):
            common["condition"] = S.plain(step["condition"])
        if loop:
            common["loop"] = loop
        if kind in LLM_TYPES | {"claude_batch", "parallel_claude", "data_transform"} | AGENT_TYPES:
            if step.get("output_to_file"):
                common["output_to_file"] = str(step["output_to_file"])
            common["output_dir"] = self.output_dir
        elif step.get("output_to_file"):
            self.warn(
                step,
                "output_to_file",
                f"step {name!r}: output_to_file is not honoured by pipeline_ex's {kind} step; not converted",
            )
        self.check_prompt(step, name)
        handler: Callable[..., Any] = getattr(self, "_agent" if kind in AGENT_TYPES else f"_{kind}")
        result = handler(step, node, common, loop)
        self.seen_steps.add(name)
        return result

    def check_prompt(self, step: CommentedMap, name: str) -> None:
        for i, part in enumerate(step.get("prompt") or [] if not isinstance(step.get("prompt"), str) else []):
            where = step["prompt"]
            if not isinstance(part, Mapping):
                self.error(where, i, f"step {name!r}: a prompt part must be a mapping")
                continue
            kind = part.get("type")
            if kind == "previous_response":
                ref = part.get("step")
                if ref not in self.seen_steps:
                    self.error(
                        part,
                        "step",
                        f"step {name!r}: previous_response names step {ref!r}, which does not run before it",
                    )
            elif kind == "static" and "content" not in part:
                self.error(part, None, f"step {name!r}: a static prompt part needs `content`")
            elif kind == "file" and "path" not in part:
                self.error(part, None, f"step {name!r}: a file prompt part needs `path`")
            elif kind not in ("static", "file", "previous_response"):
                self.warn(
                    part,
                    "type",
                    f"step {name!r}: prompt part type {kind!r} is not converted "
                    "(pipeline_ex's PromptBuilder renders it as an empty line, and so does this)",
                )

    _chain: tuple[str, ...] = ()
    # converts a sub-workflow (path, base_dir, chain) -> Conversion; set by convert_workflow, which this
    # module cannot import (convert imports the handlers, which build on this)
    convert_sub: Callable[..., Any] | None = None


def escape(value: Any) -> Any:
    """Strings with ``${`` written as ``$${``: headrace reads ``${VAR}`` from the environment."""
    if isinstance(value, str):
        return value if value.startswith("${PIPELINE_EX_") else value.replace("${", "$${")
    if isinstance(value, Mapping):
        return {k: escape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape(v) for v in value]
    return value
