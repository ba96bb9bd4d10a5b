"""``headrace import pipeline-ex``: a pipeline_ex ``workflow:`` file as a headrace state graph.

The workflow's steps run in order in pipeline_ex; here each step is a ``call`` node of
:mod:`engine.importers.pipeline_ex.runtime`, joined by edges in the same order. Loops become a head node
and a conditional edge back to it (``max_steps`` bounds them), ``switch`` a conditional edge to each
case's steps, nested ``pipeline`` files are converted too and run as one node. The state holds what
pipeline_ex's context held: ``steps`` (results by step name), ``vars``, ``inputs`` and ``loops``.

Comments above a step are kept above its node, and the file's leading comments at its top. A field the
tool cannot convert is a warning at its ``FILE:LINE:COL`` naming the step and the field; a file it
cannot convert at all is one error per problem, also located. v1 and v2 files (pipeline_ex has no
version marker) are read alike: v2 only adds step types and fields.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

import engine.importers.pipeline_ex.steps as S
from engine.importers.pipeline_ex.builder import DEFAULT_KEYS, WORKFLOW_KEYS, ImportProblem, escape
from engine.importers.pipeline_ex.handlers import StepConverter

__all__ = ["Conversion", "ImportProblem", "convert_workflow"]


@dataclass
class Conversion:
    """The headrace pipeline (YAML text), the sub-workflows converted with it, and the problems."""

    text: str | None
    problems: list[ImportProblem] = field(default_factory=list)
    nested: dict[str, str] = field(default_factory=dict)  # output path -> YAML text of each sub-workflow

    @property
    def ok(self) -> bool:
        return self.text is not None and not any(p.severity == "error" for p in self.problems)


def convert_workflow(path: str, *, base_dir: Path | None = None, _chain: tuple[str, ...] = ()) -> Conversion:
    """Convert the pipeline_ex workflow at ``path``; sub-workflows (``pipeline_file``) are read relative
    to ``base_dir`` (pipeline_ex reads them relative to its working directory; default: this one)."""
    base = base_dir or Path.cwd()
    if path in _chain[:-1]:
        cycle = " -> ".join(_chain)
        return Conversion(
            None, [ImportProblem(path, 1, 1, "error", f"sub-workflows include each other: {cycle}")]
        )
    try:
        source = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        return Conversion(None, [ImportProblem(path, 1, 1, "error", f"cannot read: {exc.strerror or exc}")])
    try:
        doc = YAML(typ="rt").load(source)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        return Conversion(None, [ImportProblem(path, line, col, "error", f"not valid YAML: {exc.problem}")])
    conv = StepConverter(path, source.splitlines(), base)
    conv._chain = _chain or (path,)
    conv.convert_sub = convert_workflow
    workflow = doc.get("workflow") if isinstance(doc, CommentedMap) else None
    if not isinstance(workflow, CommentedMap):
        conv.error(doc, None, "not a pipeline_ex workflow: the file has no `workflow:` mapping")
        return Conversion(None, conv.problems)
    for key in workflow:
        if key not in WORKFLOW_KEYS:
            conv.warn(workflow, key, f"workflow field {key!r} is not converted")
    defaults = workflow.get("defaults") or {}
    for key in defaults:
        if key not in DEFAULT_KEYS:
            conv.warn(defaults, key, f"defaults.{key} is not converted")
    conv.defaults = dict(defaults)
    conv.output_dir = str(defaults.get("output_dir") or "outputs")
    if not isinstance(workflow.get("name"), str):
        conv.error(workflow, None, "the workflow has no `name`")
    if not isinstance(workflow.get("steps"), CommentedSeq) or not workflow["steps"]:
        conv.error(workflow, None, "the workflow has no `steps` (a non-empty list)")
        return Conversion(None, conv.problems)
    first, holes, bound = conv.chain(workflow["steps"], None)
    if first is None or any(p.severity == "error" for p in conv.problems):
        return Conversion(None, conv.problems, conv.nested)
    conv.edges.insert(0, {"from": "START", "to": first})
    for hole in holes:
        hole("END")
    text = _render(conv, workflow, source, bound, path)
    return Conversion(text, conv.problems, conv.nested)


def _render(conv: StepConverter, workflow: CommentedMap, source: str, bound: int, path: str) -> str:
    out = CommentedMap()
    out["version"] = 1
    out["name"] = str(workflow["name"])[:200]
    description = workflow.get("description")
    out["description"] = (
        str(description).strip() if description else f"Imported from pipeline_ex {Path(path).name}"
    )
    if conv.has_loops:
        out["max_steps"] = bound + len(conv.nodes) + 1
    fields = CommentedMap()
    fields["steps"] = {
        "type": "object",
        "default": {},
        "reducer": "merge",
        "description": "Each step's result by step name (pipeline_ex's context.results).",
    }
    fields["vars"] = {
        "type": "object",
        "default": escape(S.plain(workflow.get("global_vars") or {})),
        "reducer": "merge",
        "description": "Variables set by set_variable steps (and global_vars).",
    }
    fields["inputs"] = {"type": "object", "default": {}, "description": "The inputs of a nested run."}
    fields["loops"] = {
        "type": "object",
        "default": {},
        "reducer": "merge",
        "description": "The frame of each running loop: item, index, done.",
    }
    out["state"] = {"fields": fields}
    out["nodes"] = conv.nodes
    out["edges"] = [_flow(e) for e in conv.edges]
    header = [line.lstrip("#").strip() for line in _leading_comments(source)]
    header = [
        f"Imported from {Path(path).name} by `headrace import pipeline-ex`.",
        "LLM steps use ${PIPELINE_EX_CLAUDE_PROVIDER:-anthropic} and ${PIPELINE_EX_GEMINI_PROVIDER:-gemini}.",
        *(["", *header] if header else []),
    ]
    out.yaml_set_start_comment("\n".join(header))
    yaml = YAML(typ="rt")
    yaml.width = 110
    yaml.indent(mapping=2, sequence=4, offset=2)
    buffer = io.StringIO()
    yaml.dump(out, buffer)
    return buffer.getvalue()


def _flow(edge: dict[str, Any]) -> CommentedMap:
    out = CommentedMap(edge)
    if "to" in edge:
        out.fa.set_flow_style()
    else:
        seq = CommentedSeq()
        for b in edge["branches"]:
            m = CommentedMap(b)
            m.fa.set_flow_style()
            seq.append(m)
        out["branches"] = seq
    return out


def _leading_comments(source: str) -> Sequence[str]:
    lines = []
    for line in source.splitlines():
        if line.strip().startswith("#"):
            lines.append(line.strip())
        elif line.strip():
            break
    return lines
