"""``/v1/validate`` and ``/v1/estimate``: what ``headrace validate`` and ``headrace estimate`` say of a
pipeline, over HTTP, under the policy of the tenant it is checked for (the server's, widened by the
tenant's). Both read files on the server (the pipeline, an estimate's data sample), so they need an
operator's token; neither starts a run or changes anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status

from engine.errors import ConfigError, DataError, Diagnostic
from engine.policy import Policy, PolicyViolation
from engine.service.api_runs import problems_response
from engine.service.auth import Operator, Principal, for_tenant, note, tenant_of
from engine.service.models import EstimateRequest, PipelineSource
from engine.service.runs import ServedRuns, read_source

router = APIRouter(tags=["pipelines"])


def _env(body: PipelineSource) -> Mapping[str, str]:
    return os.environ if body.env is None else body.env


def _checked(body: PipelineSource, request: Request, caller: Principal) -> tuple[Any, Policy]:
    """The checked pipeline and the policy of the tenant it is checked for (403 outside the token's)."""
    from engine.check import check_file

    tenant = body.tenant or tenant_of(caller)
    for_tenant(request, caller, tenant)
    runs: ServedRuns | None = request.app.state.runs
    policy = runs.policy_for(tenant) if runs is not None else Policy.from_env()
    try:
        label, content = read_source(body, _env(body), policy)
    except PolicyViolation as exc:
        note(request, reason=str(exc))
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
    checked = check_file(label, content=content, overrides=body.overrides, env=_env(body), cwd=body.cwd)
    return checked, policy


@router.post("/validate")
def validate(body: PipelineSource, request: Request, caller: Operator) -> Any:
    """Check and compile the pipeline as `headrace validate` does (no Ray): `valid` and every problem
    with its `file:line:col` (a provider's missing key is a warning)."""
    from engine.compile import compile_pipeline

    diagnostics: list[Diagnostic]
    try:
        checked, policy = _checked(body, request, caller)
        diagnostics = list(compile_pipeline(checked, credentials="warning", policy=policy).problems)
    except ConfigError as exc:
        diagnostics = exc.diagnostics
    valid = not any(d.severity == "error" for d in diagnostics)
    return {"valid": valid, "problems": [d.as_dict() for d in diagnostics]}


@router.post("/estimate", responses={422: {"description": "The pipeline is invalid."}})
def estimate(body: EstimateRequest, request: Request, caller: Operator) -> Any:
    """Predict each LLM node's rows, calls, tokens and cost from a sample, as `headrace estimate --json`."""
    from engine.estimate import EstimateOptions, estimate_checked

    try:
        checked, policy = _checked(body, request, caller)
        options = EstimateOptions(
            sample_rows=body.sample_rows,
            sample_ranges=body.sample_ranges,
            output_tokens=body.output_tokens,
            keep=body.keep,
        )
        with policy.active():  # the sample is read under the tenant's policy
            result = estimate_checked(checked, options)
    except ConfigError as exc:
        return problems_response(exc)
    except DataError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"cannot read the input: {exc}") from None
    out = result.as_dict()
    out["warnings"] = [w.as_dict() for w in [*checked.warnings, *result.warnings]]
    return out
