"""Every error headrace raises on purpose, in one place.

    HeadraceError                 base; carries a stable ``code`` and an exit status
    ├── ConfigError               a pipeline file is unusable; holds one Diagnostic per problem
    ├── PlanError                 a valid file whose graph cannot be compiled (capacity, resources)
    ├── DataError                 a row or batch of input data is unusable (node, file, offset)
    │   └── TransientError        an I/O failure that may pass: the driver retries it with backoff
    ├── RunError                  a run failed while executing (node, cause)
    │   ├── FatalRunError         an error no row can fix (auth, unknown model, a destination that
    │   │                         cannot be written, a template failing every row): the run stops at once
    │   └── OutputError           an output folder cannot be used as asked (it holds another run's
    │                             output, it is a file, it cannot be created); the message says what to do
    ├── InUseError                a run or an output folder has a live owner already (its lease)
    ├── ClusterError              the Ray cluster cannot be reached or refuses this driver (address,
    │                             authentication token, a bad HEADRACE_SHIP_CODE)
    ├── QuotaError                a tenant's cluster-wide quota cannot be enforced: engines on one
    │                             cluster declare different values, or the cluster cannot hold its CPUs
    └── BudgetExceeded            the next LLM call would pass a budget: no new calls start, calls in
                                  flight finish, committed outputs stay; the run ends `budget_exceeded`

A user-facing error always says *where* (file:line:col, node, row, input offset) and *what to do*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a pipeline file, located as exactly as the source allows."""

    path: str
    line: int
    col: int
    message: str
    severity: Severity = "error"
    code: str = "invalid"
    json_path: str = ""
    hint: str = ""
    origin: str = ""  # e.g. "--set nodes.input.path=x" when an override caused it

    def format(self) -> str:
        """Render as ``PATH:LINE:COL: severity: MESSAGE`` on one line."""
        text = self.message
        extras = []
        if self.json_path:
            extras.append(f"at {self.json_path}")
        if self.origin:
            extras.append(f"value from {self.origin}")
        if extras:
            text += f" [{'; '.join(extras)}]"
        if self.hint:
            text += f"; {self.hint}"
        text = " ".join(text.split())  # one line, whatever the message held
        return f"{self.path}:{self.line}:{self.col}: {self.severity}: {text}"

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view, used by ``headrace validate --format json``."""
        return {
            "path": self.path,
            "line": self.line,
            "col": self.col,
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "json_path": self.json_path,
            "hint": self.hint,
            "origin": self.origin,
        }


class HeadraceError(Exception):
    """Base of every deliberate headrace error."""

    code: str = "headrace_error"
    exit_code: int = 1


@dataclass
class ConfigError(HeadraceError):
    """A pipeline file (or an override) has problems; ``diagnostics`` lists each one."""

    diagnostics: list[Diagnostic] = field(default_factory=list)
    code = "config_invalid"
    exit_code = 1

    def __str__(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        """Only the diagnostics of severity ``error``."""
        return [d for d in self.diagnostics if d.severity == "error"]


class PlanError(HeadraceError):
    """The pipeline is well-formed but cannot be compiled for this cluster."""

    code = "plan_invalid"
    exit_code = 1


class DataError(HeadraceError):
    """Input data that a node cannot process; the message names node, file and offset or row.

    ``node`` and ``input`` (url, split, start, end, row: whichever are known) say the same in fields,
    so the driver can place the node in the pipeline file and a run record can keep them apart.
    """

    code = "data_invalid"
    exit_code = 3

    def __init__(
        self, message: str, *, node: str | None = None, input: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.node = node
        self.input = input or {}

    def __reduce__(self) -> tuple[object, ...]:
        # keyword-only arguments do not survive the default pickling across Ray processes
        return (_data_error, (type(self), str(self), self.node, self.input))


def _data_error(kind: type[DataError], message: str, node: str | None, input: dict[str, object]) -> DataError:
    return kind(message, node=node, input=input)


class TransientError(DataError):
    """A task failed on I/O (a filesystem or network error); retrying it may succeed."""

    code = "transient"


class RunError(HeadraceError):
    """A run failed while executing."""

    code = "run_failed"
    exit_code = 3


class ClusterError(HeadraceError):
    """The driver cannot join the cluster it was pointed at, or the cluster cannot hold or keep the run's
    work; the message says what to fix. ``node``: the pipeline node concerned, when there is one."""

    code = "cluster_unreachable"
    exit_code = 3

    def __init__(self, message: str, *, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node

    def __reduce__(self) -> tuple[object, ...]:
        # keyword-only arguments do not survive the default pickling across Ray processes
        return (_cluster_error, (type(self), str(self), self.node))


def _cluster_error(kind: type[ClusterError], message: str, node: str | None) -> ClusterError:
    return kind(message, node=node)


class UnschedulableError(ClusterError):
    """Work of a run fitted on no alive node of the cluster for longer than the deadline."""

    code = "unschedulable"


class NodeLostError(ClusterError):
    """Work died with its Ray worker or node more often than its retries allow (an LLM pool's actor)."""

    code = "node_lost"


class FatalRunError(RunError):
    """An error that every row would hit: the run stops at once, whatever the node's ``on_error``."""

    code = "fatal"


class OutputError(RunError):
    """An output folder cannot be used as asked; the message says why and what to do instead."""

    code = "output_invalid"


class InUseError(HeadraceError):
    """A run (``--resume``) or an output folder is owned by another live driver; the message names it."""

    code = "in_use"
    exit_code = 1


class QuotaError(HeadraceError):
    """A tenant's cost or CPU quota cannot be enforced as declared (the message names tenant and values)."""

    code = "quota_invalid"
    exit_code = 1


class BudgetExceeded(HeadraceError):
    """An LLM call was not sent because it could cost more than a budget has left."""

    code = "budget_exceeded"
    exit_code = 4

    def __init__(self, message: str, *, scope: str = "run") -> None:
        super().__init__(message)
        self.scope = scope

    def __reduce__(self) -> tuple[object, ...]:
        # keyword-only arguments do not survive the default pickling across Ray processes
        return (_budget_exceeded, (str(self), self.scope))


def _budget_exceeded(message: str, scope: str) -> BudgetExceeded:
    return BudgetExceeded(message, scope=scope)
