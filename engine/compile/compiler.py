"""The compile step: a checked pipeline in, a frozen :class:`Compiled` out, with every problem found.

The checks run in the order a run used to meet them, and each one runs on what the earlier ones could
build, so one pass reports every problem it can rather than stopping at the first:

1. stages and fusion (:func:`engine.optimizer.optimize`): a join, an op with no runtime, an op (a
   plugin's) with no behaviour registered to run it;
2. Arrow type names in the nodes' fields (``column_types: {id: integer64}``);
3. physical stages (:func:`engine.physical.build_physical`) and their outputs: an output equal to or
   inside an input, two sinks in one folder, a ``memory://`` path;
4. policy (:func:`engine.physical.check_policy`): paths outside the allowed roots, code from modules not
   allowed, the response cache's folder; the place for every deployment-policy check;
5. LLM pools (:func:`engine.physical.plan_pools`, :func:`engine.compile.providers.check_pools`): an
   unknown provider, a model with no default or no price, a provider that cannot be built;
6. when given, a tenant's placement and the cluster's nodes' capacity (:func:`placement_problems`,
   :func:`capacity_problems`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Literal

import pyarrow as pa

from engine.capacity import NodeResources
from engine.check import CheckedPipeline, locate
from engine.compile.compiled import Compiled
from engine.compile.providers import check_pools
from engine.compile.subpipelines import subpipeline_problems
from engine.errors import Diagnostic
from engine.optimizer import optimize
from engine.physical import (
    Placement,
    build_physical,
    check_capacity,
    check_outputs,
    check_placement,
    check_policy,
    plan_pools,
)
from engine.plan import Plan, Problem
from engine.policy import Policy, active_policy
from engine.spec.models import Pipeline
from engine.spec.registry import Kind, behaviour_kinds


def compile_pipeline(
    checked: CheckedPipeline,
    *,
    capacity: Sequence[NodeResources] | None = None,
    placement: Placement | None = None,
    policy: Policy | None = None,
    cache: bool = True,
    credentials: Literal["error", "warning"] = "error",
    _chain: tuple[str, ...] = (),
) -> Compiled:
    """Compile ``checked``; never raises for a problem of the pipeline (see :meth:`Compiled.raise_errors`).

    ``capacity`` (each alive Ray node's resources, name -> amount, as ``ray.nodes()`` gives) and ``placement``
    add the checks that need a cluster; ``policy`` defaults to the one in force (the run's inside a run,
    else the deployment's: :func:`engine.policy.active_policy`);
    ``cache=False`` compiles for a run that neither reads nor writes the response cache; ``credentials``
    is the severity of a provider's missing key (``validate`` warns: the machine that runs may have one).
    """
    pipeline = checked.loaded.spec
    policy = policy if policy is not None else active_policy()
    if _is_state_graph(pipeline):  # its `call` nodes' code is what the policy judges
        denied = _located(check_policy([], checked.plan.nodes.values(), policy), checked)
        subs = tuple(subpipeline_problems(checked, _chain, compile_pipeline))
        return Compiled(
            checked, "graph", (), (), (), None, policy, None, tuple(checked.warnings) + denied + subs
        )
    problems: list[Problem] = []
    stages, found = optimize(checked.plan)
    problems += found
    problems += _type_problems(checked.plan)
    problems += _behaviour_problems(checked.plan)
    physical = build_physical(stages, pipeline.defaults.batch_rows, checked.resolver(), policy)
    problems += check_outputs(physical)
    problems += check_policy(physical, checked.plan.nodes.values(), policy)
    pools, found = plan_pools(stages, pipeline.defaults)
    problems += found
    prices, found = check_pools(pools, pipeline, credentials=credentials)
    problems += found
    cache_url = checked.cache_url() if cache else None
    if cache_url is not None and pools and (refused := policy.path_problem(cache_url)) is not None:
        hint = "set `cache.url` (or HEADRACE_CACHE_DIR) inside an allowed root, or run with --no-cache"
        problems.append(Problem(("cache",), refused, hint, code="policy", at="key"))
    compiled = Compiled(
        checked,
        "dataflow",
        tuple(stages),
        tuple(physical),
        tuple(pools),
        prices,
        policy,
        cache_url,
        tuple(checked.warnings) + _located(problems, checked),
    )
    extra: list[Diagnostic] = []
    if placement is not None:
        extra += placement_problems(compiled, placement)
    if capacity is not None:
        extra += capacity_problems(compiled, capacity)
    if not extra:
        return compiled
    return dataclasses.replace(compiled, problems=compiled.problems + tuple(extra))


def placement_problems(compiled: Compiled, placement: Placement) -> list[Diagnostic]:
    """Tasks of ``compiled`` that could never be scheduled inside ``placement`` (LLM pools are shared
    cluster services, outside every tenant's group)."""
    found = check_placement(list(compiled.stages), placement)
    return list(_located(found, compiled.checked))


def capacity_problems(compiled: Compiled, capacity: Sequence[NodeResources]) -> list[Diagnostic]:
    """Tasks and LLM pool actors of ``compiled`` that no single node of ``capacity`` (each node's
    resources) could hold."""
    found = check_capacity(list(compiled.stages), capacity, compiled.pools)
    return list(_located(found, compiled.checked))


def _type_problems(plan: Plan) -> list[Problem]:
    """A problem for every Arrow type name that Arrow does not know (the run would crash reading it)."""
    problems = []
    for node in plan.nodes.values():
        for where, name in node.spec.arrow_types().items():
            try:
                pa.type_for_alias(name)
            except (ValueError, KeyError):
                problems.append(
                    Problem(
                        ("nodes", node.id, *where),
                        f"node '{node.id}': '{name}' is not an Arrow type name",
                        "use one of int8..int64, uint8..uint64, float, double, bool, string, large_string, "
                        "binary, date32, date64, timestamp[s|ms|us|ns], time32[s|ms], time64[us|ns]",
                        code="type",
                    )
                )
    return problems


_NEEDS: dict[str, Kind] = {"source": "reader", "sink": "writer"}


def _behaviour_problems(plan: Plan) -> list[Problem]:
    """A problem for every node whose op validates but has nothing registered to run it (a plugin that
    registered a model only): the run would stop at its first batch."""
    problems = []
    for node in plan.nodes.values():
        spec = node.spec
        need: Kind | None = _NEEDS.get(spec.kind)
        if spec.kind == "transform" and not spec.pooled:
            need = "state" if spec.barrier else "batch" if spec.per_batch else None
        if need is not None and need not in behaviour_kinds(spec.op):
            problems.append(
                Problem(
                    ("nodes", node.id, "op"),
                    f"op '{spec.op}' (node '{node.id}') validates but has no `{need}` behaviour registered, "
                    "so it cannot run",
                    f"its plugin registers it with register_op(Model, {need}=...)",
                    code="not_executable",
                )
            )
    return problems


def _located(problems: Iterable[Problem], checked: CheckedPipeline) -> tuple[Diagnostic, ...]:
    return tuple(locate(p, checked.loaded.document) for p in problems)


def _is_state_graph(pipeline: Pipeline) -> bool:
    return bool(pipeline.edges) or any(n.kind == "state" for n in pipeline.nodes.values())
