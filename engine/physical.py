"""Physical planning: turn stages into Ray task specifications with resource options.

Reservations are checked against the cluster's nodes here, at compile time: a task or an LLM pool actor
that asks for more than any one node has would wait forever, so it is refused with a clear error.
The same holds inside a :class:`Placement` (a tenant's CPU quota): a task larger than one of its bundles,
or pool actors that leave no room for the tasks, are refused before the run starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.capacity import NodeResources, needs, refusal, short_of
from engine.optimizer import Stage
from engine.plan import Problem
from engine.policy import Policy
from engine.spec.models import Defaults, ErrorPolicy, NodeSpec, Pipeline, Resources, RetryPolicy
from operators.llm import LlmSpec
from operators.llm_rows import Target
from operators.providers.pricing import PriceTable, UnknownPrice
from operators.providers.registry import DEFAULT_MODELS, available_providers

LLM_RETRY = RetryPolicy(max_attempts=6, initial_backoff_s=0.5, max_backoff_s=30.0)
"""Retries of one LLM call when neither the node nor the defaults set a policy (429s do not count)."""


@dataclass(frozen=True)
class StageJob:
    """Everything a worker needs to run one stage on one split; plain, picklable data."""

    source_id: str
    source: NodeSpec
    transforms: tuple[tuple[str, NodeSpec], ...]
    sink_id: str
    sink: NodeSpec
    output: str
    batch_rows: int
    retry: RetryPolicy
    on_error: Mapping[str, ErrorPolicy] = field(default_factory=dict)
    """Error policy of each node whose failed rows are skipped or dead-lettered (absent: fail)."""
    dead_letters: str | None = None
    """Resolved folder for this stage's dead-letter files."""
    emit: bool = False
    """True when a barrier follows: the head returns its batches instead of writing a part."""
    pools: Mapping[str, Any] = field(default_factory=dict)
    """Each pooled (LLM) node's way to its shared pool (a ``PoolClient``); filled in by the runtime."""
    trace: Mapping[str, str] = field(default_factory=dict)
    """The run's trace context for the task's spans (see engine.telemetry); empty: tracing is off."""
    policy: Policy | None = None
    """The run's policy, in force in the worker while it runs the task (code it imports is judged by it,
    not by the worker's environment); None: the worker's environment's."""


@dataclass(frozen=True)
class TailJob:
    """A barrier node and the per-batch ops fused after it; the last tail writes the sink's parts."""

    barrier_id: str
    barrier: NodeSpec
    transforms: tuple[tuple[str, NodeSpec], ...]
    sink_id: str
    sink: NodeSpec | None
    output: str | None
    on_error: Mapping[str, ErrorPolicy] = field(default_factory=dict)
    dead_letters: str | None = None
    pools: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    """The pipeline's params (an LLM barrier renders templates with them)."""
    trace: Mapping[str, str] = field(default_factory=dict)
    """The run's trace context for the task's spans (see engine.telemetry); empty: tracing is off."""
    policy: Policy | None = None
    """The run's policy, in force in the worker while it runs the task (as :attr:`StageJob.policy`)."""


@dataclass(frozen=True)
class PoolPlan:
    """The actor pool of one LLM node: where its calls go, how they retry, how many actors it has."""

    node: str
    spec: NodeSpec
    targets: tuple[Target, ...]
    """The node's provider and model, then its fallbacks, in order."""
    retry: RetryPolicy
    size: int
    ray_options: Mapping[str, Any]


@dataclass(frozen=True)
class PhysicalStage:
    """A stage ready to submit: its job, its resolved input URLs and its Ray options."""

    job: StageJob
    inputs: tuple[str, ...]
    ray_options: Mapping[str, Any]
    tails: tuple[TailJob, ...] = ()
    concurrency: int | None = None
    """The most head tasks of this stage in flight at once (its nodes' tightest ``concurrency``)."""


@dataclass(frozen=True)
class Placement:
    """Where every Ray task and actor of one run goes when something confines it (a tenant's CPU quota,
    see :mod:`engine.runtime.tenant_cpus`); lower layers only merge ``options`` and ask :meth:`refusal`.
    """

    options: Mapping[str, Any]
    """Ray options merged into every task's and actor's options (a ``scheduling_strategy``)."""
    cpus: float
    """CPUs the run's tasks and actors may hold at once, all together."""
    max_task_cpus: float
    """The most CPU one task or actor may ask for and still be scheduled (the largest bundle)."""
    owner: str
    """What confines the run, for messages: ``tenant 'acme' (max_cpus=2)``."""

    def apply(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` with the placement's own merged in."""
        return {**options, **self.options}

    def refusal(self, node: str, cpus: float) -> str | None:
        """Why one task of ``node`` asking for ``cpus`` could never be scheduled here, if it could not."""
        if cpus <= self.max_task_cpus + 1e-9:
            return None
        return (
            f"node '{node}' needs {cpus:g} CPU per task, but {self.owner} holds its CPUs in bundles of "
            f"{self.max_task_cpus:g} CPU and a task must fit in one bundle"
        )


def ray_options(resources: Resources) -> dict[str, Any]:
    """Ray task options for one task of a stage (one CPU unless the nodes ask otherwise)."""
    return resources.ray_options(default_cpus=1.0)


def build_physical(
    stages: list[Stage],
    batch_rows: int,
    resolve: Callable[[str, str], str],
    policy: Policy | None = None,
) -> list[PhysicalStage]:
    """Physical stages; ``resolve(node, path)`` makes a node's relative path absolute; ``policy`` (the
    run's) travels with every task to be in force in the worker."""
    out = []
    for stage in stages:
        src, sink = stage.source.spec, stage.sink.spec
        paths = src.path if isinstance(src.path, list) else [src.path]  # type: ignore[attr-defined]
        job = StageJob(
            source_id=stage.source.id,
            source=src,
            transforms=tuple((t.id, t.spec) for t in stage.transforms),
            sink_id=stage.sink.id,
            sink=sink,
            output=resolve(stage.sink.id, sink.path),  # type: ignore[attr-defined]
            batch_rows=getattr(src, "batch_rows", None) or batch_rows,
            retry=max((n.retry for n in stage.nodes), key=lambda r: r.max_attempts),
            on_error={n.id: n.on_error for n in stage.nodes if n.on_error.mode != "fail"},
            dead_letters=_dead_letter_folder(stage, resolve),
            emit=bool(stage.barriers),
            policy=policy,
        )
        tails = tuple(
            TailJob(
                barrier_id=b.node.id,
                barrier=b.node.spec,
                transforms=tuple((t.id, t.spec) for t in b.transforms),
                sink_id=stage.sink.id,
                sink=sink if i == len(stage.barriers) - 1 else None,
                output=job.output if i == len(stage.barriers) - 1 else None,
                on_error=job.on_error,
                dead_letters=job.dead_letters,
                policy=policy,
            )
            for i, b in enumerate(stage.barriers)
        )
        inputs = tuple(resolve(stage.source.id, p) for p in paths)
        options = ray_options(stage.resources)
        out.append(PhysicalStage(job, inputs, options, tails, stage.resources.concurrency))
    return out


def check_outputs(stages: list[PhysicalStage]) -> list[Problem]:
    """Problems for sinks that would write into one folder, or over or inside an input, and for
    paths that workers on other processes cannot see."""
    problems = []
    for stage in stages:
        named = [(stage.job.source_id, u) for u in stage.inputs] + [(stage.job.sink_id, stage.job.output)]
        for node, url in named:
            if url.startswith("memory://"):
                problems.append(
                    Problem(
                        ("nodes", node, "path"),
                        f"{url}: a memory:// filesystem lives in one "
                        "process, and Ray workers are other processes",
                        "use a local path, file://, or a shared filesystem such as s3:// or gs://",
                        code="path",
                    )
                )
    seen: dict[str, str] = {}
    inputs = [(s.job.source_id, _norm(i)) for s in stages for i in s.inputs]
    for stage in stages:
        sink, folder = stage.job.sink_id, _norm(stage.job.output)
        where = ("nodes", sink, "path")
        if folder in seen:
            problems.append(
                Problem(
                    where,
                    f"sinks '{seen[folder]}' and '{sink}' write to the same folder {stage.job.output}",
                    "give each sink its own path",
                    code="output",
                )
            )
        seen[folder] = sink
        for source, path in inputs:
            if path == folder or path.startswith(folder + "/") or folder.startswith(path + "/"):
                problems.append(
                    Problem(
                        where,
                        f"sink '{sink}' would write into the input of '{source}' ({path})",
                        "outputs never overwrite inputs; choose another path",
                        code="output",
                    )
                )
    return problems


def _norm(url: str) -> str:
    return url.rstrip("/")


def _dead_letter_folder(stage: Stage, resolve: Callable[[str, str], str]) -> str | None:
    for node in stage.nodes:
        if node.on_error.mode == "dead_letter" and node.on_error.dead_letter_path:
            return resolve(node.id, node.on_error.dead_letter_path)
    return None


def check_capacity(
    stages: list[Stage], nodes: Sequence[NodeResources], pools: Sequence[PoolPlan] = ()
) -> list[Problem]:
    """Problems for a stage's task or an LLM pool's actor that no single one of ``nodes`` (each alive
    Ray node's resources) could hold: Ray places each on one node, and would keep it pending for ever."""
    problems = []
    asked: list[tuple[str, str, dict[str, float]]] = []
    for stage in stages:
        need = needs(ray_options(stage.resources))
        # name the node whose request is short (else the one asking for something beyond a CPU)
        named = short_of(need, nodes) or [k for k in need if k != "CPU"] or ["CPU"]
        node = _asking(stage, named[0])
        asked.append((node, f"node '{node}' needs, per task,", need))
    for pool in pools:
        asked.append((pool.node, f"LLM node '{pool.node}' needs, per pool actor,", needs(pool.ray_options)))
    for node, what, need in asked:
        if (why := refusal(what, need, nodes)) is None:
            continue
        missing = short_of(need, nodes)
        key = missing[0] if missing else None
        field = {"CPU": ("num_cpus",), "GPU": ("num_gpus",), "memory": ("memory",)}.get(
            key or "", ("custom", key) if key else ()
        )
        problems.append(
            Problem(
                ("nodes", node, "resources", *field),
                why,
                "lower the request, or add a node that offers it (on an autoscaling cluster, one the "
                "autoscaler can start)",
                code="capacity",
            )
        )
    return problems


def check_placement(stages: list[Stage], placement: Placement) -> list[Problem]:
    """Problems for tasks that could never be scheduled inside ``placement``: one larger than a bundle.
    (LLM pools are cluster services, outside every tenant's group: they hold none of its CPUs.)"""
    problems: list[Problem] = []
    hint = f"lower the node's num_cpus to {placement.max_task_cpus:g} or less, or raise the tenant's max_cpus"
    for stage in stages:
        cpus = ray_options(stage.resources)["num_cpus"]
        node = _asking(stage, "CPU")
        if (refusal := placement.refusal(node, cpus)) is not None:
            where = ("nodes", node, "resources", "num_cpus")
            problems.append(Problem(where, refusal, hint, code="capacity"))
    return problems


def _asking(stage: Stage, key: str) -> str:
    for node in stage.nodes:
        if node.spec.pooled:  # its resources are its pool actors', not the task's
            continue
        r = node.resources
        value = {"CPU": r.num_cpus, "GPU": r.num_gpus, "memory": r.memory}.get(key, r.custom.get(key))
        if value:
            return node.id
    return stage.sink.id


def plan_pools(stages: list[Stage], defaults: Defaults) -> tuple[list[PoolPlan], list[Problem]]:
    """The pool of every LLM node, with its provider and model resolved from the node and defaults."""
    pools: list[PoolPlan] = []
    problems: list[Problem] = []
    for stage in stages:
        for node in stage.nodes:
            spec = node.spec
            if not spec.pooled or not isinstance(spec, LlmSpec):
                continue
            provider = spec.provider or defaults.provider
            if provider is None:
                problems.append(
                    Problem(
                        ("nodes", node.id, "op"),
                        f"LLM node '{node.id}' has no provider",
                        "set `provider` on the node or `defaults.provider` (`offline` needs no network)",
                        code="provider",
                    )
                )
                continue
            if provider not in available_providers():
                where = ("nodes", node.id, "provider") if spec.provider else ("defaults", "provider")
                problems.append(_unknown_provider(where, provider))
                continue
            same = spec.provider is None or spec.provider == defaults.provider
            model = spec.model or (defaults.model if same else None) or DEFAULT_MODELS.get(provider)
            if model is None:
                problems.append(
                    Problem(
                        ("nodes", node.id, "provider"),
                        f"LLM node '{node.id}': provider '{provider}' has no default model",
                        "set `model` on the node or `defaults.model`",
                        code="provider",
                    )
                )
                continue
            targets = [Target(provider, model)]
            for i, fallback in enumerate(spec.fallback):
                if fallback.provider not in available_providers():
                    problems.append(
                        _unknown_provider(("nodes", node.id, "fallback", i, "provider"), fallback.provider)
                    )
                    continue
                fallback_model = fallback.model or DEFAULT_MODELS.get(fallback.provider)
                if fallback_model is None:
                    problems.append(
                        Problem(
                            ("nodes", node.id, "fallback", i, "provider"),
                            f"fallback provider '{fallback.provider}' has no default model",
                            "set its `model`",
                            code="provider",
                        )
                    )
                    continue
                targets.append(Target(fallback.provider, fallback_model))
            resources = node.resources
            # pool actors wait on the network: no CPU unless asked; GPUs reach them (a local model)
            options = resources.ray_options(default_cpus=0.0)
            pools.append(
                PoolPlan(
                    node=node.id,
                    spec=spec,
                    targets=tuple(targets),
                    retry=spec.retry or defaults.retry or LLM_RETRY,
                    size=resources.concurrency or 1,
                    ray_options=options,
                )
            )
    return pools, problems


def _unknown_provider(where: tuple[str | int, ...], provider: str) -> Problem:
    return Problem(
        where,
        f"unknown provider '{provider}'; known: {', '.join(available_providers())}",
        "plugins register under the 'headrace.providers' entry point group",
        code="provider",
    )


def check_prices(
    targets: Iterable[tuple[str, tuple[Target, ...]]], pipeline: Pipeline
) -> tuple[PriceTable | None, list[Problem]]:
    """The run's price table, and a problem for every (node, targets) model without a price: a run never
    spends without knowing what it spends."""
    try:
        prices = PriceTable(pipeline.price_overrides())
    except ValueError as exc:
        return None, [Problem(("providers",), f"price overrides: {exc}", code="prices", at="key")]
    problems: list[Problem] = []
    for node, node_targets in targets:
        for i, target in enumerate(node_targets):
            try:
                prices.price(pipeline.priced_as(target.provider), target.model)
            except UnknownPrice as exc:
                where = ("nodes", node, "provider") if i == 0 else ("nodes", node, "fallback", i - 1)
                hint = f"add its price under `providers.{target.provider}.prices` so spend is known"
                problems.append(Problem(where, str(exc), hint, code="prices"))
    return prices, problems


def check_policy(stages: list[PhysicalStage], plan_nodes: Iterable[Any], policy: Policy) -> list[Problem]:
    """Problems for paths outside the allowed roots or schemes, and code from modules not allowed."""
    problems: list[Problem] = []
    for stage in stages:
        job = stage.job
        named = [(job.source_id, u) for u in stage.inputs] + [(job.sink_id, job.output)]
        named += [(node, job.dead_letters) for node in job.on_error if job.dead_letters]
        for node, url in named:
            problem = policy.path_problem(url)
            if problem is not None:
                field = "path" if node in (job.source_id, job.sink_id) else "on_error"
                problems.append(Problem(("nodes", node, field), problem, code="policy"))
    for node in plan_nodes:
        fn = getattr(node.spec, "fn", None)
        if isinstance(fn, str):
            problem = policy.module_problem(fn)
            if problem is not None:
                problems.append(Problem(("nodes", node.id, "fn"), problem, code="policy"))
    return problems
