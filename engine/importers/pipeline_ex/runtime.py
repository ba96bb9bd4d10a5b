"""The node functions an imported pipeline_ex workflow runs: one per kind of pipeline_ex step.

``headrace import pipeline-ex`` writes a state graph whose nodes are ``op: call`` nodes naming these
functions with the step's settings as ``kwargs``. Each reads the state (``steps``: every step's result by
name, pipeline_ex's ``context.results``; ``vars``: what ``set_variable`` wrote; ``inputs``: a nested run's
inputs; ``loops``: the frame of each running loop) and returns the update pipeline_ex would have made:
the step's result under its name, with the same fields (``text``, ``success``... for an LLM step).

A step's ``condition`` is evaluated here, as pipeline_ex evaluates it before running a step: when it
does not hold, the step records pipeline_ex's skipped result and calls nothing. LLM calls go through
headrace's providers (``operators.providers``: ``anthropic``, ``gemini``, ``offline``, ``replay``...),
so the same converted file runs against the vendors, the loopback test server or offline.

Steps that need an agent with tools (``claude_session``, ``codebase_query``, ``file_ops``, Claude's
``allowed_tools``) call :func:`agent`, the extension point: register a handler with
:func:`register_agent_handler` (or the ``headrace.pipeline_ex_agents`` entry-point group).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from engine.importers.pipeline_ex.expressions import Scope, build_prompt, evaluate_condition, interpolate
from engine.importers.pipeline_ex.transforms import apply_operations
from operators.providers.base import LlmRequest, LlmResponse
from operators.providers.errors import ProviderError
from operators.providers.registry import get_provider

__all__ = [
    "AGENT_ENTRY_POINT_GROUP",
    "PROVIDER_CONFIG_VARIABLE",
    "agent",
    "batch",
    "checkpoint",
    "data_transform",
    "llm",
    "loop",
    "nested",
    "parallel",
    "register_agent_handler",
    "set_variable",
    "switch",
]

AGENT_ENTRY_POINT_GROUP = "headrace.pipeline_ex_agents"
AgentHandler = Callable[[Mapping[str, Any], str, Mapping[str, Any]], Any]
_agent_handlers: dict[str, AgentHandler] = {}


def _scope(state: Any, loop_name: str | None = None) -> Scope:
    loops = dict(state.loops or {}) if hasattr(state, "loops") else {}
    frame = loops.get(loop_name) if loop_name else None
    return Scope(dict(state.steps or {}), dict(state.vars or {}), dict(state.inputs or {}), frame)


def _skipped(state: Any, step: str, condition: Any) -> dict[str, Any] | None:
    """pipeline_ex's result of a step whose condition does not hold (None when it holds)."""
    if condition is None or evaluate_condition(condition, dict(state.steps or {})):
        return None
    reason = f"Condition not met: {condition if isinstance(condition, str) else json.dumps(condition)}"
    return {"steps": {step: {"success": True, "skipped": True, "reason": reason}}}


def _save(output_to_file: str | None, output_dir: str, result: Any) -> None:
    """``output_to_file``: the result (text as is, anything else as pretty JSON) under ``output_dir``."""
    if not output_to_file:
        return
    target = Path(output_dir) / output_to_file
    target.parent.mkdir(parents=True, exist_ok=True)
    text = result if isinstance(result, str) else json.dumps(result, indent=2, default=str)
    target.write_text(text, encoding="utf-8")


PROVIDER_CONFIG_VARIABLE = "PIPELINE_EX_PROVIDER_CONFIG"
"""A JSON object of provider configs by provider name (e.g. ``{"replay": {"path": "rec.jsonl"}}``), for
the providers that need one (``replay``); the SDKs' own variables configure the vendors'."""


def _provider_config(name: str) -> Mapping[str, Any]:
    raw = os.environ.get(PROVIDER_CONFIG_VARIABLE)
    if not raw:
        return {}
    try:
        configs = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"${PROVIDER_CONFIG_VARIABLE} is not JSON: {exc}") from None
    config = configs.get(name, {}) if isinstance(configs, Mapping) else None
    if not isinstance(config, Mapping):
        raise ValueError(f"${PROVIDER_CONFIG_VARIABLE} must map provider names to config objects")
    return config


async def _ask(call: Mapping[str, Any], prompt: str) -> LlmResponse:
    name = str(call["provider"])
    provider = get_provider(name, {**_provider_config(name), **(call.get("provider_config") or {})})
    try:
        return await provider.call(
            LlmRequest(
                provider=str(call["provider"]),
                model=str(call["model"]),
                prompt=prompt,
                max_tokens=int(call.get("max_tokens") or 4096),
                system=call.get("system"),
                temperature=call.get("temperature"),
                output_schema=call.get("output_schema"),
                timeout_s=float(call.get("timeout_s") or 300.0),
            )
        )
    finally:
        await provider.close()


def _result(response: LlmResponse, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """pipeline_ex's result of an LLM step: ``text``, ``success``, ``cost``, ``model`` (+ parsed fields)."""
    parsed = response.parsed
    text = response.text if response.text is not None else json.dumps(parsed)
    result: dict[str, Any] = {"text": text, "success": True, "cost": 0.0, "model": response.model}
    result["tokens"] = {"input": response.input_tokens, "output": response.output_tokens}
    if isinstance(parsed, Mapping):
        result.update(parsed)  # output_schema: the documented fields, readable as steps.NAME.FIELD
    result.update(extra or {})
    return result


async def llm(
    state: Any,
    *,
    step: str,
    call: Mapping[str, Any],
    prompt: Sequence[Mapping[str, Any]],
    condition: Any = None,
    output_to_file: str | None = None,
    output_dir: str = "outputs",
    base_dir: str = ".",
    loop: str | None = None,
    retries: int = 0,
    retry_delay_ms: int = 0,
    fallback: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``claude``, ``gemini``, ``claude_smart``/``_extract``/``_robust`` or ``gemini_instructor`` step."""
    skipped = _skipped(state, step, condition)
    if skipped is not None:
        return skipped
    scope = _scope(state, loop)
    text = build_prompt(interpolate(list(prompt), scope), scope, base_dir)
    attempt = 0
    while True:
        try:
            response = await _ask(interpolate(dict(call), scope), text)
            break
        except ProviderError as exc:
            if attempt >= retries:
                if fallback is None:
                    raise
                result = _fallback(step, fallback, str(exc))
                _save(output_to_file, output_dir, result)
                return {"steps": {step: result}}
            await asyncio.sleep(retry_delay_ms * (2**attempt) / 1000)
            attempt += 1
    result = _result(response, extra)
    if retries:
        result["robustness_metadata"] = {"attempt_number": attempt + 1, "recovery_successful": attempt > 0}
    _save(output_to_file, output_dir, result)
    return {"steps": {step: result}}


def _fallback(step: str, action: str, error: str) -> dict[str, Any]:
    """claude_robust's answer when every attempt failed (its ``fallback_action``)."""
    text = f"Step {step} could not complete ({error}); this is a degraded response."
    return {
        "success": True,
        "text": text,
        "degraded_mode": True,
        "original_error": error,
        "fallback_type": action,
    }


async def parallel(
    state: Any,
    *,
    step: str,
    tasks: Sequence[Mapping[str, Any]],
    condition: Any = None,
    output_to_file: str | None = None,
    output_dir: str = "outputs",
    base_dir: str = ".",
    loop: str | None = None,
) -> dict[str, Any]:
    """``parallel_claude``: every task at once; ``individual_results`` by id, ``combined_results`` text."""
    skipped = _skipped(state, step, condition)
    if skipped is not None:
        return skipped
    scope = _scope(state, loop)

    async def one(task: Mapping[str, Any]) -> dict[str, Any]:
        text = build_prompt(interpolate(list(task["prompt"]), scope), scope, base_dir)
        result = _result(await _ask(interpolate(dict(task["call"]), scope), text), None)
        _save(task.get("output_to_file"), output_dir, result)
        return result

    answers = await asyncio.gather(*(one(t) for t in tasks))
    individual = {str(t["id"]): a for t, a in zip(tasks, answers, strict=True)}
    combined = "\n".join(f"\n===[{tid}]===\n{a['text']}" for tid, a in individual.items())
    result = {"combined_results": combined, "individual_results": individual}
    _save(output_to_file, output_dir, result)
    return {"steps": {step: result}}


async def batch(
    state: Any,
    *,
    step: str,
    call: Mapping[str, Any],
    tasks: Sequence[Mapping[str, Any]],
    max_parallel: int = 3,
    consolidate: bool = True,
    condition: Any = None,
    output_to_file: str | None = None,
    output_dir: str = "outputs",
    base_dir: str = ".",
    loop: str | None = None,
) -> dict[str, Any]:
    """``claude_batch``: its tasks, ``max_parallel`` at a time; a failed task is recorded, not raised."""
    skipped = _skipped(state, step, condition)
    if skipped is not None:
        return skipped
    scope = _scope(state, loop)
    gate = asyncio.Semaphore(max(1, max_parallel))

    async def one(task: Mapping[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {"task_id": task["task_id"], "file": task.get("file")}
        async with gate:
            try:
                text = build_prompt(interpolate(list(task["prompt"]), scope), scope, base_dir)
                answer = _result(await _ask(interpolate(dict(call), scope), text), None)
            except (ProviderError, OSError, KeyError) as exc:
                return {**entry, "status": "error", "error": str(exc)}
        return {**entry, "status": "success", "result": answer}

    results = await asyncio.gather(*(one(t) for t in tasks))
    ok = [r for r in results if r["status"] == "success"]
    result: dict[str, Any] = {
        "success": True,
        "batch_processed": True,
        "total_tasks": len(results),
        "successful_tasks": len(ok),
        "failed_tasks": len(results) - len(ok),
        "batch_results": list(results),
    }
    if consolidate:
        sections = [
            f"## Task: {r['task_id']}\n**File**: {r.get('file') or 'N/A'}\n**Status**: "
            + (
                "Success\n\n" + r["result"]["text"]
                if r["status"] == "success"
                else f"ERROR\n**Error**: {r['error']}"
            )
            for r in results
        ]
        result["text"] = "\n".join(sections)
    _save(output_to_file, output_dir, result)
    return {"steps": {step: result}}


def set_variable(
    state: Any,
    *,
    step: str,
    variables: Mapping[str, Any],
    scope: str = "global",
    condition: Any = None,
    loop: str | None = None,
) -> dict[str, Any]:
    """``set_variable``: each value resolved (a ``{{ path }}`` keeps its type), then stored."""
    skipped = _skipped(state, step, condition)
    if skipped is not None:
        return skipped
    values = interpolate(dict(variables), _scope(state, loop))
    result = {"success": True, "variables_set": list(values), "scope": scope, "variable_count": len(values)}
    return {"vars": values, "steps": {step: result}}


def data_transform(
    state: Any,
    *,
    step: str,
    input_source: str,
    operations: Sequence[Mapping[str, Any]],
    output_field: str | None = None,
    condition: Any = None,
    output_to_file: str | None = None,
    output_dir: str = "outputs",
    loop: str | None = None,
) -> dict[str, Any]:
    """``data_transform``: ``operations`` applied in order to the data ``input_source`` names."""
    skipped = _skipped(state, step, condition)
    if skipped is not None:
        return skipped
    steps = dict(state.steps or {})
    data = _source(input_source, steps, dict(state.vars or {}))
    if data is None:
        raise KeyError(f"step {step!r}: input_source {input_source!r} not found")
    out = apply_operations(data, list(operations), steps)
    result = {output_field or step: out, "success": True}
    _save(output_to_file, output_dir, result)
    return {"steps": {step: result}}


def _source(source: str, steps: Mapping[str, Any], variables: Mapping[str, Any]) -> Any:
    parts = source.split(":", 2)
    if parts[0] == "previous_response" and len(parts) >= 2:
        found = steps.get(parts[1])
        for key in parts[2].split(".") if len(parts) == 3 else []:
            found = found.get(key) if isinstance(found, Mapping) else None
        return found
    return variables.get(source, steps.get(source))


def loop(
    state: Any,
    *,
    step: str,
    kind: str,
    max_iterations: int,
    data_source: str | None = None,
    iterator: str = "item",
    condition: Any = None,
    while_condition: Any = None,
) -> dict[str, Any]:
    """The head of a ``for_loop``/``while_loop``: visited before each iteration, it sets the loop's frame
    (``loops.NAME``: ``item``, ``index``, ``done``) that the graph's branch reads, and the loop's result
    once it is done."""
    frame = dict((state.loops or {}).get(step) or {})
    steps = dict(state.steps or {})
    if not frame:
        skipped = _skipped(state, step, condition)
        if skipped is not None:
            return {**skipped, "loops": {step: {"done": True}}}
        frame = {"index": -1, "iterator": iterator, "done": False}
        if kind == "for_loop":
            data = _loop_data(str(data_source), steps, dict(state.vars or {}))
            if not isinstance(data, list):
                raise ValueError(f"for_loop {step!r}: data_source {data_source!r} is not a list: {data!r}")
            frame["data"] = data
    index = int(frame["index"]) + 1
    if kind == "for_loop":
        data = frame["data"]
        done = index >= len(data)
        frame.update(index=index, done=done, item=None if done else data[index], total=len(data))
        result = {"success": True, "total_items": len(data), "completed_items": min(index, len(data))}
    else:
        reached = index >= max_iterations
        holds = not reached and evaluate_condition(while_condition, steps)
        frame.update(index=index, done=not holds)
        result = {"success": not reached, "iterations": index}
        result.update({"max_iterations_reached": True} if reached else {"condition_met": False})
    update: dict[str, Any] = {"loops": {step: frame}}
    if frame["done"]:
        update["steps"] = {step: result}
    return update


def _loop_data(source: str, steps: Mapping[str, Any], variables: Mapping[str, Any]) -> Any:
    name, _, field = source.partition(":")
    value = variables.get(name) if not field and name in variables else steps.get(name)
    for key in field.split(".") if field else []:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def switch(
    state: Any, *, step: str, expression: str, cases: Sequence[str], loop: str | None = None
) -> dict[str, Any]:
    """A ``switch``: its expression's value picks a case (``default`` when none matches)."""
    text = expression if "{{" in expression else "{{" + expression + "}}"
    value = interpolate(text, _scope(state, loop))
    value = None if value == text else value
    key = str(value).lower() if isinstance(value, bool) else str(value)
    case = key if key in cases else "default"
    return {"steps": {step: {"success": True, "value": value, "case": case}}}


def checkpoint(state: Any, *, step: str, checkpoint_name: str | None = None) -> dict[str, Any]:
    """A ``checkpoint`` step: headrace checkpoints every step, so this only records that it was reached."""
    return {"steps": {step: {"success": True, "checkpoint": checkpoint_name or step}}}


def nested(
    state: Any,
    *,
    step: str,
    path: str,
    inputs: Mapping[str, Any] | None = None,
    outputs: Sequence[Any] | None = None,
    condition: Any = None,
    loop: str | None = None,
) -> dict[str, Any]:
    """A ``pipeline`` step: run the converted sub-workflow at ``path`` with ``inputs``; its step results
    (or the ``outputs`` it names, ``{path, as}`` or a step name) become this step's result."""
    from engine.graph.spec import graph_from_spec, recursion_limit_of
    from engine.spec.loader import load_pipeline

    skipped = _skipped(state, step, condition)
    if skipped is not None:
        return skipped
    resolved = interpolate(dict(inputs or {}), _scope(state, loop))
    pipeline = load_pipeline(path).spec
    app = graph_from_spec(pipeline).compile()
    final = app.invoke({"inputs": resolved}, recursion_limit=recursion_limit_of(pipeline))
    results = dict(final.steps)
    if outputs:
        picked: dict[str, Any] = {}
        for output in outputs:
            if isinstance(output, str):
                if output not in results:
                    raise KeyError(
                        f"step {step!r}: output {output!r} not found in the sub-workflow's results"
                    )
                picked[output] = results[output]
            else:
                found: Any = results
                for key in str(output["path"]).split("."):
                    found = found.get(key) if isinstance(found, Mapping) else None
                if found is None:
                    raise KeyError(f"step {step!r}: output path {output['path']!r} not found")
                picked[str(output.get("as") or output["path"])] = found
        results = picked
    result = {"result": results} if resolved else results
    return {"steps": {step: result}}


def register_agent_handler(step_type: str, handler: AgentHandler) -> None:
    """Make ``handler(settings, prompt, steps)`` answer the imported steps of ``step_type``."""
    _agent_handlers[step_type] = handler


def _agent_handler(step_type: str) -> AgentHandler | None:
    if step_type not in _agent_handlers:
        for ep in entry_points(group=AGENT_ENTRY_POINT_GROUP):
            if ep.name == step_type:
                _agent_handlers[step_type] = ep.load()
    return _agent_handlers.get(step_type)


async def agent(
    state: Any,
    *,
    step: str,
    step_type: str,
    settings: Mapping[str, Any],
    prompt: Sequence[Mapping[str, Any]] = (),
    condition: Any = None,
    output_to_file: str | None = None,
    output_dir: str = "outputs",
    base_dir: str = ".",
    loop: str | None = None,
) -> dict[str, Any]:
    """A step that needs an agent with tools: answered by the handler registered for ``step_type``."""
    skipped = _skipped(state, step, condition)
    if skipped is not None:
        return skipped
    handler = _agent_handler(step_type)
    if handler is None:
        raise LookupError(
            f"step {step!r} ({step_type}) needs an agent with tools, and no handler is registered for "
            f"{step_type!r}: register one with engine.importers.pipeline_ex.runtime.register_agent_handler "
            f"or the {AGENT_ENTRY_POINT_GROUP!r} entry-point group"
        )
    scope = _scope(state, loop)
    text = build_prompt(interpolate(list(prompt), scope), scope, base_dir)
    answer = handler(interpolate(dict(settings), scope), text, scope.steps)
    if isinstance(answer, Awaitable):
        answer = await answer
    _save(output_to_file, output_dir, answer)
    return {"steps": {step: answer}}
