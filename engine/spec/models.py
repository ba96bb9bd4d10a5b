"""The pipeline format, version 1: pydantic models that are the single source of truth.

The JSON Schema that ``headrace schema`` prints, the editor help text and the validation errors all come
from these models; every field therefore carries a description. Node models for each ``op`` live with
the operator or connector that implements them and register through :mod:`engine.spec.registry`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

FORMAT_VERSION = 1
"""The newest pipeline format this headrace reads and writes."""

OpKind = Literal["source", "transform", "sink", "state"]
ColumnKind = Literal["string", "number", "list"]
Columns = Mapping[str, str]
"""Known output columns of a node: column name -> Arrow type name (``"any"`` when not known)."""

START = "START"
END = "END"

NodeName = Annotated[
    str,
    # a dot joins a dataflow `pipeline` node's name and an inlined node's (engine.spec.inline)
    StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*$", max_length=128),
]
NodeRef = Annotated[str, Field(description="The name of another node in `nodes`.")]
ImportPath = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")]
"""A Python function named as `package.module:function`; specs hold names, never callables."""

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}


def _parse_size(value: Any) -> Any:
    if isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"'{value}' is not a size; write bytes as a number or e.g. '512MiB', '2GB'")
        return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
    return value


ByteCount = Annotated[
    int,
    BeforeValidator(_parse_size),
    Field(ge=0),
    WithJsonSchema(
        {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _SIZE.pattern}]}
    ),
]


class Model(BaseModel):
    """Base of every model a user writes: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True
    )


class Resources(Model):
    """What one task or actor of a node needs; becomes Ray scheduling options."""

    num_cpus: float | None = Field(None, ge=0, description="CPUs reserved per task or actor.")
    num_gpus: float | None = Field(None, ge=0, description="GPUs reserved per task or actor.")
    memory: ByteCount | None = Field(
        None, description="Memory reserved per task or actor, in bytes or with a unit ('2GiB')."
    )
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per task or actor, e.g. {llm_gateway: 1} to run on "
        "machines that offer them.",
    )
    concurrency: int | None = Field(
        None, ge=1, description="The most tasks or actors of this node running at once."
    )

    def combine(self, other: Resources) -> Resources:
        """What one task running the work of both needs: the most of each amount, and the tighter
        ``concurrency``."""

        def most(a: float | None, b: float | None) -> float | None:
            return b if a is None else a if b is None else max(a, b)

        custom = dict(self.custom)
        for key, amount in other.custom.items():
            custom[key] = max(custom.get(key, 0.0), amount)
        limits = [c for c in (self.concurrency, other.concurrency) if c is not None]
        memory = most(self.memory, other.memory)
        return Resources(
            num_cpus=most(self.num_cpus, other.num_cpus),
            num_gpus=most(self.num_gpus, other.num_gpus),
            memory=None if memory is None else int(memory),
            custom=custom,
            concurrency=min(limits) if limits else None,
        )

    def scale(self, factor: float) -> Resources:
        """What ``factor`` tasks or actors of this shape hold together (``concurrency`` unchanged)."""
        return Resources(
            num_cpus=None if self.num_cpus is None else self.num_cpus * factor,
            num_gpus=None if self.num_gpus is None else self.num_gpus * factor,
            memory=None if self.memory is None else int(self.memory * factor),
            custom={k: v * factor for k, v in self.custom.items()},
            concurrency=self.concurrency,
        )

    def ray_options(self, *, default_cpus: float = 1.0) -> dict[str, Any]:
        """The one conversion to Ray options, for tasks, actor pools and graph nodes alike.

        ``default_cpus`` applies when ``num_cpus`` is not given: 1 for a task that computes, 0 for an
        actor that waits on the network (an LLM pool's).
        """
        options: dict[str, Any] = {"num_cpus": default_cpus if self.num_cpus is None else self.num_cpus}
        if self.num_gpus:
            options["num_gpus"] = self.num_gpus
        if self.memory:
            options["memory"] = self.memory
        if self.custom:
            options["resources"] = dict(self.custom)
        return options


class RetryPolicy(Model):
    """How a failed batch, call or step is retried before its error policy applies."""

    max_attempts: int = Field(3, ge=1, le=100, description="Attempts in all, the first included.")
    initial_backoff_s: float = Field(0.5, ge=0, description="Wait before the second attempt, in seconds.")
    max_backoff_s: float = Field(30.0, ge=0, description="Upper bound on one wait, in seconds.")
    multiplier: float = Field(2.0, ge=1, description="Growth of the wait after each attempt.")
    jitter: bool = Field(True, description="Randomise each wait by up to ±50% to spread retries out.")

    def backoff_s(self, attempt: int, at_least: float | None = None) -> float:
        """The wait after failed attempt ``attempt`` (1-based): exponential, capped, jittered if asked,
        and never shorter than ``at_least`` (a server's ``retry-after``)."""
        wait = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        if self.jitter:
            wait *= random.uniform(0.5, 1.5)
        return max(wait, at_least or 0.0)


class ErrorPolicy(Model):
    """What happens to a row or batch that still fails after its retries."""

    model_config = ConfigDict(
        json_schema_extra={  # the schema's copy of _dead_letter_needs_path
            "if": {"type": "object", "properties": {"mode": {"const": "dead_letter"}}, "required": ["mode"]},
            "then": {
                "type": "object",
                "properties": {"dead_letter_path": {"type": "string"}},
                "required": ["dead_letter_path"],
            },
        }
    )

    mode: Literal["fail", "skip", "dead_letter"] = Field(
        "fail",
        description="`fail` stops the run (outputs committed so far are kept); `skip` drops the row "
        "and counts it; `dead_letter` writes it with its error to `dead_letter_path`.",
    )
    dead_letter_path: str | None = Field(
        None, description="Where failed rows go when `mode` is `dead_letter` (a folder or URL)."
    )
    max_failed_rows: int | None = Field(
        None, ge=0, description="The run fails once more rows than this have failed."
    )
    max_failed_ratio: float | None = Field(
        None, ge=0, le=1, description="The run fails once this share of rows has failed."
    )

    @model_validator(mode="after")
    def _dead_letter_needs_path(self) -> ErrorPolicy:
        if self.mode == "dead_letter" and not self.dead_letter_path:
            raise ValueError("`mode: dead_letter` needs `dead_letter_path`")
        return self


class Budget(Model):
    """Spending limits; a run stops cleanly before it would exceed one."""

    max_cost_usd: float | None = Field(None, ge=0, description="The most a run may spend, in US dollars.")
    max_input_tokens: int | None = Field(None, ge=0, description="The most input tokens a run may send.")
    max_output_tokens: int | None = Field(None, ge=0, description="The most output tokens a run may receive.")
    max_seconds: float | None = Field(
        None,
        gt=0,
        description="The longest a run may take; past it, work in flight is stopped, committed parts are "
        "kept and the run ends `budget_exceeded` (resume continues it).",
    )


class RateLimits(Model):
    """Rates a provider account allows; shared by every worker and pipeline on the cluster."""

    requests_per_minute: float | None = Field(None, gt=0, description="Requests per minute.")
    input_tokens_per_minute: float | None = Field(None, gt=0, description="Input tokens per minute.")
    output_tokens_per_minute: float | None = Field(None, gt=0, description="Output tokens per minute.")


class ProviderSettings(Model):
    """How to reach one LLM provider, how fast it may be called, and what it costs."""

    config: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Passed to the provider: e.g. `base_url`, or `api_key: ${MY_KEY}` (keys come from "
        "the environment; the SDKs' own variables are read when absent).",
    )
    rate_limits: RateLimits | None = Field(
        None,
        description="Limits per (provider, model, key), enforced across the cluster; none when absent.",
    )
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Price overrides per model (or `name*` pattern), in USD per million tokens: "
        "`input`, `output`, `cache_read`, `cache_write`, `batch_discount`.",
    )


class CacheSettings(Model):
    """The LLM response cache: a rerun or resumed run pays nothing for rows already answered."""

    enabled: bool = Field(True, description="Look answers up before calling, and store new ones.")
    url: str | None = Field(
        None,
        description="A folder or fsspec URL; defaults to `HEADRACE_CACHE_DIR`, else ~/.cache/headrace/llm.",
    )


class Defaults(Model):
    """Values every node inherits unless it sets its own."""

    provider: str | None = Field(
        None,
        description="LLM provider for LLM nodes: `anthropic`, `gemini`, `openai`, `offline` or a plugin's.",
    )
    model: str | None = Field(None, description="LLM model name for LLM nodes.")
    batch_rows: int = Field(
        65_536, ge=1, le=10_000_000, description="Rows per Arrow batch that sources produce."
    )
    resources: Resources | None = Field(None, description="Default resources of every node.")
    retry: RetryPolicy | None = Field(None, description="Default retry policy of every node.")
    on_error: ErrorPolicy | None = Field(None, description="Default error policy of every node.")


class StateField(Model):
    """One field of a state graph's state."""

    type: Literal["string", "integer", "number", "boolean", "array", "object", "any"] = Field(
        "any", description="The JSON type of the field."
    )
    default: JsonValue = Field(None, description="The value before any node has run.")
    reducer: Literal["replace", "append", "add", "merge"] = Field(
        "replace",
        description="How a node's update combines with the current value: `replace` it, `append` "
        "to a list, `add` numbers or lists, `merge` objects key by key.",
    )
    description: str | None = Field(None, description="What the field holds.")


class StateSchema(Model):
    """The typed state that state-graph nodes read and update."""

    fields: dict[NodeName, StateField] = Field(default_factory=dict, description="State fields by name.")


class Branch(Model):
    """One way out of a conditional edge: the first branch whose `when` holds is taken."""

    when: str | None = Field(
        None,
        description="A sandboxed expression over the state, e.g. `score >= 8`; omit it for the "
        "branch taken when no other holds.",
    )
    to: str = Field(description="The node to go to, or END.")


class Edge(Model):
    """A state (control) edge between nodes; data edges are written as a node's `input`."""

    from_: str = Field(alias="from", description="The node this edge leaves, or START.")
    to: str | list[str] | None = Field(
        None, description="The node (or nodes, run in parallel) to go to next, or END."
    )
    branches: list[Branch] | None = Field(
        None, min_length=1, description="Conditional ways out, tried in order."
    )

    @model_validator(mode="after")
    def _one_target(self) -> Edge:
        if (self.to is None) == (self.branches is None):
            raise ValueError("an edge needs exactly one of `to` and `branches`")
        return self

    def targets(self) -> list[str]:
        """Every node this edge can lead to."""
        if self.branches is not None:
            return [b.to for b in self.branches]
        return [self.to] if isinstance(self.to, str) else list(self.to or [])


class NodeSpec(Model):
    """Fields shared by every node, whatever its `op`."""

    kind: ClassVar[OpKind] = "transform"
    """Where the op sits in a dataflow: a source, a per-batch transform, a sink or a state node."""

    per_batch: ClassVar[bool] = False
    """True when each output batch depends on one input batch only, so the optimizer may fuse it."""

    barrier: ClassVar[bool] = False
    """True when the op needs the whole stream (a global limit, dedupe or aggregate): it ends a fused
    segment, and batches cross it as object-store references."""

    pooled: ClassVar[bool] = False
    """True when the op's work is done by a pool of long-lived actors (LLM calls): the fused task hands
    each batch to the pool and waits, so the op fuses like a per-batch one."""

    op: str = Field(description="What the node does.")
    description: str | None = Field(None, description="What the node is for, in a sentence.")
    resources: Resources | None = Field(None, description="Resources per task or actor of this node.")
    retry: RetryPolicy | None = Field(None, description="Retry policy of this node.")
    on_error: ErrorPolicy | None = Field(None, description="Error policy of this node.")

    def inputs(self) -> tuple[str, ...]:
        """Names of the nodes whose data this node reads."""
        return ()

    def output_columns(self, inputs: Sequence[Columns | None]) -> Columns | None:
        """The columns this node produces given its inputs' columns; None when unknown."""
        if self.kind in ("transform", "sink") and inputs:
            return inputs[0]
        return None

    def column_refs(self) -> list[tuple[str, tuple[str | int, ...]]]:
        """Columns this node reads, each with the field path (relative to the node) that names it."""
        return []

    def column_kinds(self) -> dict[tuple[str | int, ...], ColumnKind]:
        """The kind of type a column must have, by the field path of the reference that names it (as in
        :meth:`column_refs`), where the op needs one; checked when the column's type is known."""
        return {}

    def arrow_types(self) -> dict[tuple[str | int, ...], str]:
        """Arrow type names this node's fields give (``int64``, ``timestamp[s]``...), by the field path
        (relative to the node) that names each; compilation refuses names Arrow does not know."""
        return {}


class SourceSpec(NodeSpec):
    """A node that reads data from outside the pipeline."""

    kind: ClassVar[OpKind] = "source"


class _Reads(NodeSpec):
    input: NodeRef | list[NodeRef] = Field(description="The node (or nodes) whose output this node reads.")

    def inputs(self) -> tuple[str, ...]:
        return (self.input,) if isinstance(self.input, str) else tuple(self.input)


class TransformSpec(_Reads):
    """A node that turns each batch of its input into batches of output."""

    kind: ClassVar[OpKind] = "transform"
    per_batch: ClassVar[bool] = True


class SinkSpec(_Reads):
    """A node that writes its input out of the pipeline."""

    kind: ClassVar[OpKind] = "sink"


class StateNodeSpec(NodeSpec):
    """A node of a state graph: it reads the state and returns an update."""

    kind: ClassVar[OpKind] = "state"


class Pipeline(Model):
    """A headrace pipeline: a graph of named nodes joined by data inputs and state edges."""

    version: Literal[1] = Field(description="The format version of this file; this headrace reads 1.")
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="The pipeline's name, shown in run records and summaries."
    )
    description: str | None = Field(None, description="What the pipeline does.")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Free-form labels, e.g. {team: risk}, kept with every run.",
    )
    params: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Named values that templates and expressions read as `params.NAME`.",
    )
    defaults: Defaults = Field(default_factory=Defaults, description="Values every node inherits.")
    budget: Budget | None = Field(None, description="Spending limits for one run.")
    providers: dict[str, ProviderSettings] = Field(
        default_factory=dict,
        description="Settings per LLM provider name (`anthropic`, `gemini`, `openai`, `offline`, `replay`, "
        "plugins).",
    )
    cache: CacheSettings = Field(default_factory=CacheSettings, description="The LLM response cache.")
    pii: PiiSettings | None = Field(
        None, description="Personal data handling, e.g. `{mask_before_llm: true}`; none when absent."
    )
    state: StateSchema | None = Field(None, description="The typed state of a state graph.")
    nodes: dict[NodeName, NodeSpec] = Field(
        min_length=1, description="The nodes, keyed by name; each one's `op` says what it does."
    )
    edges: list[Edge] = Field(
        default_factory=list, description="State (control) edges between nodes, for state graphs."
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        description="The most steps a state graph may take in one run; required when its edges form a loop.",
    )

    def provider_config(self, name: str) -> dict[str, Any]:
        """The config this pipeline gives provider ``name`` (empty when none)."""
        settings = self.providers.get(name)
        return dict(settings.config) if settings is not None else {}

    def price_overrides(self) -> dict[str, dict[str, float]]:
        """Every provider's price overrides, merged (model names do not overlap across providers)."""
        merged: dict[str, dict[str, float]] = {}
        for settings in self.providers.values():
            merged.update(settings.prices)
        return merged

    def priced_as(self, provider: str) -> str:
        """The provider whose prices apply to ``provider``'s calls: a recording ``replay`` pays its
        wrapped provider's."""
        if provider == "replay":
            inner = self.provider_config("replay").get("provider")
            return str(inner) if inner else provider
        return provider


# --- PII settings (the pii_detect / pii_mask ops live in operators/pii.py) -------------------------------

PiiType = Literal["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS", "PERSON"]
"""A kind of personal data the PII detectors find."""

PII_TYPES: tuple[PiiType, ...] = ("EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS", "PERSON")
"""Every PII type."""

PiiDetector = Literal["patterns", "presidio"]
PII_KEY_ENV = "HEADRACE_PII_KEY"
EnvVarName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]
SpacyModel = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]


class PiiSettings(Model):
    """How the pipeline treats personal data before it leaves for an LLM provider."""

    mask_before_llm: bool = Field(
        False,
        description="Mask every column an LLM prompt (or system prompt) reads before the prompt is "
        "rendered, whatever its Arrow type (numbers, binary, structs, lists and maps are scanned as text, "
        "leaf by leaf): a `pii_mask` node named `<llm node>__pii_mask` is inserted in front of each LLM "
        "node, in the same fused task, so unmasked values never reach the provider. The LLM node's "
        "output holds the masked columns too (as text).",
    )
    types: list[PiiType] = Field(
        default_factory=lambda: list(PII_TYPES), min_length=1, description="The PII types to mask."
    )
    mode: Literal["mask", "hash"] = Field(
        "mask",
        description="`mask` replaces each finding with its type (`[EMAIL]`); `hash` with the type and a "
        "keyed hash of the value (`[EMAIL:1a2b3c4d5e6f]`), so equal values stay equal.",
    )
    key_env: EnvVarName = Field(
        PII_KEY_ENV,
        description="With `mode: hash`, the environment variable holding the hash key (16 characters "
        "or more) on every machine that runs tasks.",
    )
    columns: list[str] = Field(
        default_factory=list,
        description="Columns that are personal data whole (e.g. `[name, email]`): with `mask_before_llm`, "
        "every value a prompt reads from them (each leaf of a struct or list) is replaced by `[PII]` "
        "(`mode: hash`: `[PII:<keyed hash>]`), whatever it holds; the way to mask names without a cue.",
    )
    detector: PiiDetector = Field(
        "patterns",
        description="`patterns` (built in, validated patterns; names by conservative cues) or "
        "`presidio` (person names by Microsoft Presidio, which needs `presidio-analyzer` and a spaCy "
        "model installed).",
    )
    presidio_model: SpacyModel = Field(
        "en_core_web_lg", description="With `detector: presidio`, the spaCy model (an installed package)."
    )

    @model_validator(mode="after")
    def _presidio_installed(self) -> PiiSettings:
        problem = presidio_problem(self.presidio_model) if self.detector == "presidio" else None
        if problem and "PERSON" in self.types:
            raise ValueError(problem)
        return self


def presidio_problem(model: str) -> str | None:
    """Why ``detector: presidio`` cannot run here (None when the package and model are installed)."""
    import importlib.util

    if importlib.util.find_spec("presidio_analyzer") is None:
        return (
            "`detector: presidio` needs the presidio-analyzer package: `pip install presidio-analyzer` "
            "(or use `detector: patterns`, the default)"
        )
    if importlib.util.find_spec(model) is None:
        return (
            f"`detector: presidio` needs the spaCy model '{model}': `python -m spacy download {model}` "
            "or install its wheel from your mirror (or name an installed model in `presidio_model`)"
        )
    return None


Pipeline.model_rebuild()  # `pii` names PiiSettings, defined after Pipeline
