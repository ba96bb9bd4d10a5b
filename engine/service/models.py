"""The JSON bodies of the engine's HTTP API (``/v1``): what a client sends and what it gets back.

Every field has a description: it becomes the OpenAPI document at ``/openapi.json``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RunState = Literal["queued", "running", "succeeded", "failed", "budget_exceeded", "cancelled", "interrupted"]


class PipelineSource(BaseModel):
    """A pipeline (by path or as text) with its overrides."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        None,
        description="A pipeline file on the server's machine (absolute, or relative to `cwd`), under its "
        "allowed roots when its policy names any.",
    )
    pipeline: str | None = Field(None, description="The pipeline's YAML or JSON text (instead of `path`).")
    overrides: list[str] = Field(
        default_factory=list, description="`--set KEY=VALUE` strings, applied in order."
    )
    cwd: str | None = Field(
        None,
        description="The directory relative paths given in `overrides` (and `path`, and a text pipeline's "
        "paths) are relative to; default: the server's.",
    )
    env: dict[str, str] | None = Field(
        None,
        description="Values for the pipeline's `${NAME}` references (a name absent here is unset); default: "
        "the server's environment.",
    )
    tenant: str | None = Field(
        None,
        description="The tenant the pipeline is checked under (its policy: the server's widened by the "
        "tenant's own) and a run admitted and accounted under (one of the token's); default: the token's "
        "only tenant, else `default`.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> PipelineSource:
        if (self.path is None) == (self.pipeline is None):
            raise ValueError("give exactly one of `path` and `pipeline`")
        return self


class RunRequest(PipelineSource):
    """A run to start: a pipeline (by path or as text), its overrides and how to run it."""

    run_id: str | None = Field(None, description="Use this run id instead of a generated one.")
    resume: str | None = Field(None, description="Continue this earlier run of the same pipeline.")
    priority: int = Field(0, description="Higher starts first within the tenant.")
    inputs: dict[str, Any] | None = Field(None, description="A state graph's input state.")
    cache: bool = Field(True, description="Read and write the LLM response cache.")
    checkpoint: str | None = Field(None, description="Where a state graph's checkpoints go (a store URL).")
    value: Any = Field(
        None, description="With `resume`: the answer to the state graph's pending `interrupt()`."
    )


class EstimateRequest(PipelineSource):
    """A pipeline to estimate, and how (as `headrace estimate`'s options)."""

    sample_rows: int = Field(400, ge=1, le=100_000, description="Rows read from each source.")
    sample_ranges: int = Field(
        32, ge=1, le=1000, description="Places of each source the sample is read from."
    )
    output_tokens: int | None = Field(None, ge=1, description="Output tokens per llm_map call.")
    keep: dict[str, float] = Field(
        default_factory=dict, description="The share of rows each named llm_filter node keeps."
    )


class ResumeRequest(BaseModel):
    """How to continue a run: the answer to its pending interrupt, if it waits for one."""

    model_config = ConfigDict(extra="forbid")

    value: Any = Field(None, description="The answer to the state graph's pending `interrupt()`.")
    env: dict[str, str] | None = Field(
        None, description="Values for the pipeline's `${NAME}` references (default: the server's)."
    )


class RunPage(BaseModel):
    """One page of `GET /v1/runs`."""

    runs: list[dict[str, Any]] = Field(description="The runs, newest first.")
    next_offset: int | None = Field(description="The `offset` of the next page; null on the last one.")


class Problem(BaseModel):
    """One problem in a pipeline, located as ``headrace validate`` prints it."""

    path: str = Field(description="The file (or `-` for text).")
    line: int = Field(description="1-based line.")
    col: int = Field(description="1-based column.")
    severity: Literal["error", "warning"] = Field(description="`error` stops the run.")
    code: str = Field(description="A stable code for tools.")
    message: str = Field(description="What is wrong.")
    json_path: str = Field("", description="Where in the document, as a path.")
    hint: str = Field("", description="What to do.")
    origin: str = Field("", description="The `--set` value the problem came from, if any.")


class Problems(BaseModel):
    """A refused pipeline (422): every problem found."""

    detail: str = Field(description="A one-line summary.")
    problems: list[Problem] = Field(description="Each problem, in file order.")


class RunCreated(BaseModel):
    """A run that was accepted (201)."""

    run_id: str = Field(description="The run's id.")
    status: RunState = Field(description="`queued` or `running` (or how it ended, when it ended at once).")
    warnings: list[Problem] = Field(default_factory=list, description="Warnings found while checking it.")


class RunError(BaseModel):
    """Why a run ended without a summary, or with an error."""

    code: str = Field(description="A stable code (`invalid`, `cancelled`, `internal`, ...).")
    message: str = Field(description="What happened.")
    problems: list[Problem] = Field(default_factory=list, description="Located problems, when there are.")


class RunView(BaseModel):
    """A run as the engine holds it."""

    run_id: str = Field(description="The run's id.")
    tenant: str = Field(description="Its tenant.")
    status: RunState = Field(description="Where it stands, or how it ended.")
    exit_code: int | None = Field(None, description="What `headrace run` exits with for it (once it ended).")
    summary: dict[str, Any] | None = Field(
        None, description="The summary, as `headrace run --json` prints it."
    )
    text: str | None = Field(None, description="The summary as `headrace run` prints it.")
    error: RunError | None = Field(None, description="Why it failed, when it ended without a summary.")
