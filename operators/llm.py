"""LLM steps: a prompt template per row, answered by a provider (Claude, Gemini, offline, replay)."""

from __future__ import annotations

from typing import ClassVar, Literal

from jinja2 import TemplateSyntaxError
from pydantic import Field, JsonValue, field_validator, model_validator

from engine.spec.expressions import template_names, unsafe_reads
from engine.spec.models import Columns, Model, TransformSpec
from engine.spec.registry import register_op


def _check_template(value: str | None) -> str | None:
    if value is not None:
        try:
            template_names(value)
        except TemplateSyntaxError as exc:
            raise ValueError(f"template syntax error on its line {exc.lineno}: {exc.message}") from None
        unsafe = unsafe_reads(value)
        if unsafe:
            name, line, col = unsafe[0]
            more = f" (and {len(unsafe) - 1} more)" if len(unsafe) > 1 else ""
            raise ValueError(
                f"the template reads '{name}' at its line {line}, column {col}{more}: the sandbox refuses "
                "Python internals (dunder attributes), so every row would fail; read columns and their fields"
            )
    return value


class FallbackTarget(Model):
    """Another provider (and model) to ask when the node's own keeps failing."""

    provider: str = Field(min_length=1, description="The provider name, e.g. `gemini`.")
    model: str | None = Field(None, description="Its model; defaults to the node's model.")


class NodeBudget(Model):
    """Spending limits of one node."""

    max_cost_usd: float | None = Field(None, ge=0, description="The most this node may spend, in USD.")


class LlmSpec(TransformSpec):
    """Fields shared by every LLM node."""

    per_batch: ClassVar[bool] = False
    pooled: ClassVar[bool] = True  # calls run in an async actor pool; the fused task waits for them

    provider: str | None = Field(
        None,
        description="`anthropic`, `gemini`, `openai` (OpenAI or any compatible server), `offline` (no "
        "network) or `replay`; defaults to `defaults.provider`.",
    )
    model: str | None = Field(None, description="Model name; defaults to `defaults.model`.")
    prompt: str = Field(
        min_length=1,
        description="A Jinja2 template rendered per row in a sandbox; columns by name "
        "(`{{ body }}`) and `params.NAME`.",
    )
    system: str | None = Field(None, description="A system prompt (a template too).")
    max_tokens: int = Field(1024, ge=1, le=1_000_000, description="The most output tokens per call.")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature.")
    concurrency: int = Field(
        8, ge=1, le=10_000, description="Requests in flight per actor of the node's pool."
    )
    timeout_s: float = Field(60.0, gt=0, le=3600, description="The longest one attempt may take.")
    fallback: list[FallbackTarget] = Field(
        default_factory=list,
        description="Providers to ask, in order, when a row's calls keep failing on the node's own.",
    )
    mode: Literal["online", "batch"] = Field(
        "online",
        description="`batch` sends each batch of rows through the provider's batch API at its "
        "discounted price (answers take minutes to hours).",
    )
    batch_poll_s: float = Field(
        30.0, gt=0, le=3600, description="With `mode: batch`, seconds between checks of a batch's state."
    )
    budget: NodeBudget | None = Field(None, description="Spending limits of this node.")

    @field_validator("prompt", "system")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        return _check_template(value)

    def column_refs(self) -> list[tuple[str, tuple[str | int, ...]]]:
        refs: list[tuple[str, tuple[str | int, ...]]] = [
            (name, ("prompt",)) for name in sorted(template_names(self.prompt))
        ]
        if self.system:
            refs += [(name, ("system",)) for name in sorted(template_names(self.system))]
        return refs

    def _with_output(self, inputs: object, column: str, arrow_type: str) -> Columns | None:
        if isinstance(inputs, (list, tuple)) and inputs and inputs[0] is not None:
            return {**inputs[0], column: arrow_type}
        return None


@register_op
class LlmMap(LlmSpec):
    """Answer a prompt per row and store the text in a new column."""

    op: Literal["llm_map"] = Field(description="Prompt per row -> text column.")
    output: str = Field("llm_output", min_length=1, description="Name of the output column.")

    def output_columns(self, inputs: object) -> Columns | None:
        return self._with_output(inputs, self.output, "string")


@register_op
class LlmClassify(LlmSpec):
    """Put each row in one of a closed list of labels; any other answer dead-letters the row."""

    op: Literal["llm_classify"] = Field(description="Classify each row into one of `labels`.")
    labels: list[str] = Field(
        min_length=2, description="The allowed labels.", json_schema_extra={"uniqueItems": True}
    )
    output: str = Field("label", min_length=1, description="Name of the label column.")

    @field_validator("labels")
    @classmethod
    def _unique(cls, labels: list[str]) -> list[str]:
        seen = {x for x in labels if labels.count(x) > 1}
        if seen:
            raise ValueError(f"labels repeat: {', '.join(sorted(seen))}")
        return labels

    def output_columns(self, inputs: object) -> Columns | None:
        return self._with_output(inputs, self.output, "string")


@register_op
class LlmExtract(LlmSpec):
    """Extract structured data per row, validated against a JSON Schema."""

    op: Literal["llm_extract"] = Field(description="Extract fields per row against a JSON Schema.")
    output_schema: dict[str, JsonValue] = Field(
        description="A JSON Schema (an object schema) the answer must satisfy.",
        json_schema_extra={
            "required": ["type"],
            "properties": {"type": {"const": "object", "description": "Answers are objects."}},
        },
    )
    output: str = Field("extracted", min_length=1, description="Name of the output column (a struct).")
    max_attempts: int = Field(
        3,
        ge=1,
        le=10,
        description="Attempts per row, feeding validation errors back, before dead-lettering.",
    )

    @model_validator(mode="after")
    def _object_schema(self) -> LlmExtract:
        if self.output_schema.get("type") != "object":
            raise ValueError("`output_schema` must be an object schema (`type: object`)")
        return self

    def output_columns(self, inputs: object) -> Columns | None:
        return self._with_output(inputs, self.output, "struct")


@register_op
class LlmFilter(LlmSpec):
    """Keep the rows the model judges `yes` to the prompt's question."""

    op: Literal["llm_filter"] = Field(description="Keep rows by a yes/no judgement.")


@register_op
class LlmReduce(LlmSpec):
    """Summarise each group of rows (or the whole stream) with the model, hierarchically: rows are packed
    into prompts that fit `max_input_tokens`, each pack is summarised, and summaries are packed and
    summarised again until one answer per group remains."""

    barrier: ClassVar[bool] = True

    op: Literal["llm_reduce"] = Field(description="Summarise groups of rows, or the whole stream.")
    group_by: list[str] = Field(
        default_factory=list, description="Key columns; empty to summarise the whole stream as one group."
    )
    item: str = Field(
        min_length=1,
        description="A template rendered per row (e.g. `{{ review }}`); the prompt sees the rendered rows "
        "(or earlier summaries) as `items`, and the group's keys as `group`.",
    )
    prompt: str = Field(
        min_length=1,
        description="The template of each summarising call; reads `items` (a list of strings), `group` "
        "and `params.NAME`.",
    )
    max_input_tokens: int = Field(
        50_000,
        ge=100,
        le=2_000_000,
        description="The most input one call may carry (estimated at 3 characters a token); larger "
        "groups are summarised in rounds.",
    )
    output: str = Field("summary", min_length=1, description="Name of the summary column.")

    @field_validator("item")
    @classmethod
    def _item_parses(cls, value: str) -> str | None:
        return _check_template(value)

    def column_refs(self) -> list[tuple[str, tuple[str | int, ...]]]:
        refs: list[tuple[str, tuple[str | int, ...]]] = [
            (k, ("group_by", i)) for i, k in enumerate(self.group_by)
        ]
        return refs + [(name, ("item",)) for name in sorted(template_names(self.item))]

    def output_columns(self, inputs: object) -> Columns | None:
        if isinstance(inputs, (list, tuple)) and inputs and inputs[0] is not None:
            keys = {k: inputs[0][k] for k in self.group_by if k in inputs[0]}
            return {**keys, self.output: "string"}
        return None
