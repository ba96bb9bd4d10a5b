"""What each pipeline_ex step type becomes in the graph: one ``call`` node (or a loop head and its
body, a switch and its cases) with the step's settings as the node's ``kwargs``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap

import engine.importers.pipeline_ex.steps as S
from engine.importers.pipeline_ex.builder import COMMON_FIELDS, RUNTIME, GraphBuilder, Hole

__all__ = ["StepConverter"]

_TRANSFORM_OPS = {"filter", "map", "aggregate", "join", "group_by", "sort"}
_FOR_LOOP_BOUND = 1000  # pipeline_ex's @max_iterations: the most items a loop is planned for


class StepConverter(GraphBuilder):
    """A :class:`GraphBuilder` with a ``_TYPE`` method per pipeline_ex step type."""

    def _single(
        self, node: str, step: CommentedMap, fn: str, kwargs: dict[str, Any]
    ) -> tuple[str, list[Hole], int]:
        self.add_node(node, step, fn, kwargs, f"pipeline_ex {step['type']} step {step['name']!r}")
        return node, [self.link(node)], 1

    def _claude_options(self, step: CommentedMap, name: str) -> dict[str, Any]:
        options = {
            **S.plain(self.defaults.get("claude_options") or {}),
            **S.plain(step.get("claude_options") or {}),
        }
        where = step.get("claude_options") if isinstance(step.get("claude_options"), CommentedMap) else step
        for key in options:
            if key in S.CLAUDE_AGENT_OPTIONS or key in S.CLAUDE_SESSION_OPTIONS:
                continue
            if key not in ("model", "system_prompt", "append_system_prompt"):
                self.warn(
                    where,
                    key if key in where else None,
                    f"step {name!r}: claude_options.{key} is not converted",
                )
        return options

    def _llm(
        self,
        step: CommentedMap,
        node: str,
        common: dict[str, Any],
        preset: str | None,
        extra: dict[str, Any] | None = None,
        **more: Any,
    ) -> tuple[str, list[Hole], int]:
        name = str(step["name"])
        options = self._claude_options(step, name)
        agent_keys = sorted(k for k in options if k in S.CLAUDE_AGENT_OPTIONS and options[k])
        if agent_keys:
            return self._agent(step, node, common, None, reason=f"claude_options {', '.join(agent_keys)}")
        kwargs = {
            **common,
            "call": S.claude_call(options, preset),
            "prompt": S.prompt_parts(step.get("prompt")),
        }
        if extra:
            kwargs["extra"] = extra
        kwargs.update(more)
        return self._single(node, step, "llm", kwargs)

    def _preset(self, step: CommentedMap, fallback: str) -> str:
        return str(step.get("preset") or self.defaults.get("claude_preset") or fallback)

    def _claude(self, step: CommentedMap, node: str, common: dict[str, Any], loop: str | None) -> Any:
        return self._llm(step, node, common, None)

    def _claude_smart(self, step: CommentedMap, node: str, common: dict[str, Any], loop: str | None) -> Any:
        preset = self._preset(step, "development")
        meta = {
            "preset_applied": preset,
            "environment_aware": bool(step.get("environment_aware")),
            "optimization_applied": True,
        }
        return self._llm(step, node, common, preset, {"claude_smart_metadata": meta})

    def _claude_extract(self, step: CommentedMap, node: str, common: dict[str, Any], loop: str | None) -> Any:
        config = step.get("extraction_config") or {}
        for key in config:
            if key in ("format", "include_metadata") and (key != "format" or config[key] == "text"):
                continue
            if key == "use_content_extractor" or (key == "post_processing" and not config[key]):
                continue
            self.warn(
                config,
                key,
                f"step {step['name']!r}: extraction_config.{key} ({json.dumps(S.plain(config[key]))}) "
                "is not converted: the answer's text is kept as is",
            )
        if "schema" in step:
            self.warn(
                step,
                "schema",
                f"step {step['name']!r}: `schema` is not read by pipeline_ex's "
                "claude_extract step; not converted",
            )
        return self._llm(step, node, common, self._preset(step, "analysis"), {"extraction_applied": True})

    def _claude_robust(self, step: CommentedMap, node: str, common: dict[str, Any], loop: str | None) -> Any:
        retry = S.plain(step.get("retry_config") or {})
        return self._llm(
            step,
            node,
            common,
            self._preset(step, "development"),
            None,
            retries=int(retry.get("max_retries", 3)),
            retry_delay_ms=int(retry.get("base_delay_ms", 1000)),
            fallback=str(retry.get("fallback_action", "graceful_degradation")),
        )

    def _claude_batch(self, step: CommentedMap, node: str, common: dict[str, Any], loop: str | None) -> Any:
        options = self._claude_options(step, str(step["name"]))
        config = S.plain(step.get("batch_config") or {})
        tasks = []
        for i, task in enumerate(S.plain(step.get("tasks") or [])):
            task_id = str(task.get("task_id") or f"task_{i}")
            if isinstance(task.get("prompt"), list):
                parts = task["prompt"]
            elif isinstance(task.get("prompt"), str) and not task.get("file"):
                parts = [{"type": "static", "content": task["prompt"]}]
            elif task.get("file"):
                parts = [
                    {"type": "file", "path": task["file"]},
                    {"type": "static", "content": task.get("prompt") or "Analyze this file"},
                ]
            else:
                parts = [
                    {"type": "static", "content": f"Task context: {json.dumps(task)}"},
                    *(
                        S.prompt_parts(step.get("prompt"))
                        or [{"type": "static", "content": "Process this task"}]
                    ),
                ]
            tasks.append({"task_id": task_id, "file": task.get("file"), "prompt": parts})
        if not tasks:
            tasks = [
                {
                    "task_id": "default_task",
                    "file": None,
                    "prompt": S.prompt_parts(step.get("prompt"))
                    or [{"type": "static", "content": "Default batch task"}],
                }
            ]
        kwargs = {
            **common,
            "call": S.claude_call(options, self._preset(step, "development")),
            "tasks": tasks,
            "max_parallel": int(config.get("max_parallel", 3)),
            "consolidate": bool(config.get("consolidate_results", True)),
        }
        return self._single(node, step, "batch", kwargs)

    def _parallel_claude(
        self, step: CommentedMap, node: str, common: dict[str, Any], loop: str | None
    ) -> Any:
        tasks = []
        for i, task in enumerate(step.get("parallel_tasks") or []):
            options = {
                **S.plain(self.defaults.get("claude_options") or {}),
                **S.plain(task.get("claude_options") or {}),
            }
            if any(options.get(k) for k in S.CLAUDE_AGENT_OPTIONS):
                self.warn(
                    step["parallel_tasks"],
                    i,
                    f"step {step['name']!r}: task {task.get('id')!r} asks for "
                    "tools; they are not converted (the task is one call without tools)",
                )
            entry = {
                "id": str(task.get("id") or f"task_{i}"),
                "call": S.claude_call(options, None),
                "prompt": S.prompt_parts(task.get("prompt")),
            }
            if task.get("output_to_file"):
                entry["output_to_file"] = str(task["output_to_file"])
            tasks.append(entry)
        return self._single(node, step, "parallel", {**common, "tasks": tasks})

    def _gemini(
        self,
        step: CommentedMap,
        node: str,
        common: dict[str, Any],
        loop: str | None,
        instructor: bool = False,
    ) -> Any:
        if step.get("functions"):
            self.warn(
                step,
                "functions",
                f"step {step['name']!r}: Gemini function calling is not converted "
                "(the step becomes one call answering in text)",
            )
        call = S.gemini_call(step, self.defaults, instructor)
        if not instructor and step.get("output_schema"):
            call["output_schema"] = S.plain(step["output_schema"])
        return self._single(
            node, step, "llm", {**common, "call": call, "prompt": S.prompt_parts(step.get("prompt"))}
        )

    def _gemini_instructor(
        self, step: CommentedMap, node: str, common: dict[str, Any], loop: str | None
    ) -> Any:
        if step.get("output_schema"):
            self.warn(
                step,
                "output_schema",
                f"step {step['name']!r}: pipeline_ex's gemini_instructor "
                "ignores output_schema and always answers {text, analysis, summary}; so does this",
            )
        return self._gemini(step, node, common, loop, instructor=True)

    def _set_variable(self, step: CommentedMap, node: str, common: dict[str, Any], loop: str | None) -> Any:
        kwargs = {
            **common,
            "variables": S.plain(step.get("variables") or {}),
            "scope": str(step.get("scope") or "global"),
        }
        return self._single(node, step, "set_variable", kwargs)

    def _data_transform(self, step: CommentedMap, node: str, common: dict[str, Any], loop: str | None) -> Any:
        for i, op in enumerate(step.get("operations") or []):
            if isinstance(op, Mapping) and op.get("operation") not in _TRANSFORM_OPS:
                self.error(
                    step["operations"],
                    i,
                    f"step {step['name']!r}: unknown data_transform operation "
                    f"{op.get('operation')!r}; known: {', '.join(sorted(_TRANSFORM_OPS))}",
                )
        if not step.get("input_source"):
            self.error(step, "name", f"step {step['name']!r}: data_transform needs `input_source`")
        kwargs = {
            **common,
            "input_source": str(step.get("input_source")),
            "operations": S.plain(step.get("operations") or []),
        }
        if step.get("output_field"):
            kwargs["output_field"] = str(step["output_field"])
        return self._single(node, step, "data_transform", kwargs)

    def _loop(self, step: CommentedMap, node: str, common: dict[str, Any], kind: str) -> Any:
        self.has_loops = True
        name = str(step["name"])
        kwargs = {**{k: v for k, v in common.items() if k != "loop"}, "kind": kind}
        if kind == "for_loop":
            if not step.get("data_source") or not step.get("iterator"):
                self.error(step, "name", f"step {name!r}: for_loop needs `iterator` and `data_source`")
            kwargs.update(
                data_source=str(step.get("data_source")),
                iterator=str(step.get("iterator") or "item"),
                max_iterations=_FOR_LOOP_BOUND,
            )
            if step.get("parallel"):
                self.warn(
                    step,
                    "parallel",
                    f"step {name!r}: a parallel for_loop runs its iterations one "
                    "after another here (the results are the same)",
                )
        else:
            if not isinstance(step.get("condition"), str):
                self.error(step, "name", f"step {name!r}: while_loop needs a string `condition`")
            limit = step.get("max_iterations")
            limit = min(limit, 1000) if isinstance(limit, int) and limit > 0 else 100
            kwargs.update(while_condition=S.plain(step.get("condition")), max_iterations=limit)
        self.add_node(node, step, "loop", kwargs, f"pipeline_ex {kind} {name!r}: the head of each iteration")
        if not step.get("steps"):
            self.error(step, "name", f"step {name!r}: a loop needs `steps`")
        first, holes, cost = self.chain(step.get("steps"), name)
        for hole in holes:
            hole(node)
        iterations = kwargs["max_iterations"]
        body = first or node

        def out(target: str) -> None:
            self.edges.append(
                {
                    "from": node,
                    "branches": [{"when": f"loops[{json.dumps(name)}].done", "to": target}, {"to": body}],
                }
            )

        return node, [out], (iterations + 1) * (cost + 1)

    def _for_loop(self, step: CommentedMap, node: str, common: dict[str, Any], loop: str | None) -> Any:
        return self._loop(step, node, common, "for_loop")

    def _while_loop(self, step: CommentedMap, node: str, common: dict[str, Any], loop: str | None) -> Any:
        return self._loop(step, node, common, "while_loop")

    def _switch(self, step: CommentedMap, node: str, common: dict[str, Any], loop: str | None) -> Any:
        name = str(step["name"])
        self.warn(
            step,
            "type",
            f"step {name!r}: pipeline_ex's runtime refuses step type 'switch' (only its "
            "v2 documentation describes it); converted as documented",
        )
        cases = step.get("cases") or {}
        if not isinstance(cases, Mapping) or not step.get("expression"):
            self.error(step, "name", f"step {name!r}: switch needs `expression` and a mapping of `cases`")
            cases = {}
        kwargs = {"step": name, "expression": str(step.get("expression")), "cases": [str(c) for c in cases]}
        if loop:
            kwargs["loop"] = loop
        self.add_node(node, step, "switch", kwargs, f"pipeline_ex switch {name!r}")
        self.seen_steps.add(name)
        holes: list[Hole] = []
        routes: list[tuple[str | None, str | None]] = []
        bound = 0
        for case, case_steps in [*cases.items(), ("default", step.get("default"))]:
            first, exits, cost = self.chain(case_steps, loop)
            holes += exits
            bound = max(bound, cost)
            routes.append((None if case == "default" else str(case), first))

        def out(target: str) -> None:
            branches = [
                {"when": f"steps[{json.dumps(name)}].case == {json.dumps(case)}", "to": first or target}
                for case, first in routes
                if case is not None
            ]
            default = routes[-1][1]
            branches.append({"to": default or target})
            self.edges.append({"from": node, "branches": branches})

        return node, [out, *holes], bound + 1

    def _pipeline(self, step: CommentedMap, node: str, common: dict[str, Any], loop: str | None) -> Any:
        name = str(step["name"])
        source = step.get("pipeline_file")
        if not isinstance(source, str):
            key = "pipeline" if "pipeline" in step else ("pipeline_ref" if "pipeline_ref" in step else "name")
            self.error(
                step,
                key,
                f"step {name!r}: only `pipeline_file` sub-workflows are converted "
                "(pipeline_ex itself refuses `pipeline_ref`); move an inline `pipeline` into a file",
            )
            return None
        sub_path = self.base_dir / source
        target = str(Path(source).with_suffix("")) + ".headrace.yaml"
        if not sub_path.is_file():
            self.error(
                step,
                "pipeline_file",
                f"step {name!r}: pipeline_file {source!r} not found (looked at {sub_path})",
            )
            return None
        if str(sub_path) in self._chain:
            chain = " -> ".join((*self._chain, str(sub_path)))
            self.error(step, "pipeline_file", f"sub-workflows include each other: {chain}")
            return None
        assert self.convert_sub is not None, "convert_workflow sets convert_sub"
        sub = self.convert_sub(str(sub_path), base_dir=self.base_dir, _chain=(*self._chain, str(sub_path)))
        self.problems += sub.problems
        if sub.text is not None:
            self.nested[target] = sub.text
            self.nested.update(sub.nested)
        if step.get("config"):
            self.warn(
                step,
                "config",
                f"step {name!r}: the sub-workflow's `config` (context inheritance, "
                "depth limits) is not converted: it runs on its own inputs",
            )
        kwargs = {
            **{k: v for k, v in common.items() if k not in ("output_dir", "output_to_file")},
            "path": target,
            "inputs": S.plain(step.get("inputs") or {}),
        }
        if step.get("outputs"):
            kwargs["outputs"] = S.plain(step["outputs"])
        return self._single(node, step, "nested", kwargs)

    def _checkpoint(self, step: CommentedMap, node: str, common: dict[str, Any], loop: str | None) -> Any:
        self.warn(
            step,
            "type",
            f"step {step['name']!r}: pipeline_ex's runtime refuses step type "
            "'checkpoint' (only documented); headrace checkpoints after every step, so this node only "
            "records that it was reached",
        )
        kwargs = {"step": str(step["name"])}
        if step.get("checkpoint_name"):
            kwargs["checkpoint_name"] = str(step["checkpoint_name"])
        return self._single(node, step, "checkpoint", kwargs)

    def _agent(
        self,
        step: CommentedMap,
        node: str,
        common: dict[str, Any],
        loop: str | None,
        reason: str | None = None,
    ) -> Any:
        kind = str(step["type"])
        why = reason or f"step type {kind}"
        self.warn(
            step,
            "type",
            f"step {step['name']!r}: {why} needs an agent with tools; converted to a call "
            f"of {RUNTIME}:agent, which runs the handler registered for {kind!r} "
            "(see README, 'Importing pipeline_ex workflows')",
        )
        settings = {k: S.plain(v) for k, v in step.items() if k not in COMMON_FIELDS and k != "prompt"}
        kwargs = {
            **common,
            "step_type": kind,
            "settings": settings,
            "prompt": S.prompt_parts(step.get("prompt")),
        }
        return self._single(node, step, "agent", kwargs)
