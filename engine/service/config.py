"""The service's configuration file (``headrace serve --config service.yaml``), checked with every problem
at its line and column, as pipelines are.

::

    policy:                         # the server's policy (engine.policy_config); default: the environment's
      name: closed
      roots: [/data, s3://team-bucket/]
      modules: [mycompany.etl]
    tenants:
      team-a:
        policy:                     # added to the server's for this tenant's runs only
          roots: [/data/team-a]
        quota:                      # engine.runtime.tenants.TenantQuota
          max_concurrent_runs: 4
          max_queued: 100
          max_cost_usd_per_period: 25.0
          period_s: 86400
          max_cpus: 2
          weight: 2

    schedules:                      # engine.service.schedules.ScheduleSpec, created or updated at start
      - {name: nightly, tenant: team-a, path: /data/nightly.yaml, cron: "0 2 * * *", catch_up: last}

The quotas become the engine's tenants; the policy becomes the server's ``HEADRACE_POLICY`` and
``HEADRACE_ALLOWED_*``. A tenant's ``policy`` (closed unless it says ``name: open``) widens the server's
for that tenant's runs only: a run of the tenant may touch what either allows
(:meth:`engine.policy.Policy.widened`), it is compiled under that policy and carries it to its workers.
So the server's policy holds what every tenant shares (closed, or a few shared roots), each tenant's what
is its own, and a tenant cannot touch what only another tenant's policy allows; a tenant without a
policy gets the server's. Widening is safe because the tenants' policies are the operator's, written in
this file; nothing a client sends can change them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from engine.errors import ConfigError, Diagnostic
from engine.policy import Policy
from engine.policy_config import PolicySettings
from engine.runtime.tenants import TenantQuota
from engine.service.schedules import ScheduleSpec
from engine.spec.positions import Document, JsonPath, format_path

TenantName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"),
    Field(description="Letters, digits, '.', '_' and '-' (at most 63)."),
]


class TenantSettings(BaseModel):
    """What the service allows one tenant."""

    model_config = ConfigDict(extra="forbid")

    quota: TenantQuota | None = Field(
        None,
        description="Concurrency, queue, cost per period, CPUs and share of the tenant's runs (default: "
        "the engine's bounds only).",
    )
    policy: PolicySettings | None = Field(
        None,
        description="What the tenant's runs may touch besides what the server's policy allows (closed by "
        "default: only the roots, schemes and modules listed; other tenants' runs do not get it). Default: "
        "the server's policy only.",
    )


class ServiceConfig(BaseModel):
    """The whole configuration file of a service."""

    model_config = ConfigDict(extra="forbid")

    policy: PolicySettings | None = Field(
        None, description="The server's policy (default: the environment's, closed beyond loopback)."
    )
    tenants: dict[TenantName, TenantSettings] = Field(
        default_factory=dict, description="Settings per tenant."
    )
    schedules: list[ScheduleSpec] = Field(
        default_factory=list,
        description="Schedules the server creates or updates when it starts (see engine.service.schedules).",
    )

    def quotas(self) -> dict[str, TenantQuota]:
        """The tenants' quotas, for the engine."""
        return {name: t.quota for name, t in self.tenants.items() if t.quota is not None}

    def policies(self) -> dict[str, Policy]:
        """The tenants' own policies (each widens the server's when one of its runs is checked)."""
        return {name: t.policy.policy() for name, t in self.tenants.items() if t.policy is not None}


def load_service_config(path: str, content: bytes | str | None = None) -> ServiceConfig:
    """Read and check a service's configuration file; ``ConfigError`` lists every problem located."""
    from engine.spec.document import read_document

    doc = read_document(path, content)
    data = doc.data if doc.data is not None else {}
    try:
        return ServiceConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_diagnostic(err, doc) for err in exc.errors()]) from None


def _diagnostic(err: Any, document: Document) -> Diagnostic:
    key = err["loc"][-1] == "[key]"  # a mapping's key (a tenant's name) is what is wrong
    loc: JsonPath = tuple(str(p) if not isinstance(p, int) else p for p in err["loc"] if p != "[key]")
    unknown = err["type"] == "extra_forbidden"
    where = format_path(loc) or "the configuration"
    if unknown:
        parent = (
            "the top level (keys: policy, tenants, schedules)" if len(loc) == 1 else format_path(loc[:-1])
        )
        message = f"unknown key '{loc[-1]}' at {parent}"
    elif key:
        message = f"tenant name {loc[-1]!r}: use letters, digits, '.', '_' and '-' (at most 63)"
    else:
        message = f"{where}: {err['msg']}"
    span = document.source_map.locate(loc, prefer="key" if unknown or key else "value")
    return Diagnostic(document.path, span.line, span.col, message, code="service_config", json_path=where)
