"""Connecting to Ray: a local instance sized explicitly, or an existing cluster with the code shipped."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import ray

from engine.errors import ClusterError

DEFAULT_OBJECT_STORE_BYTES = 512 * 1024 * 1024

PROVIDER_VARIABLES = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "HEADRACE_CACHE_DIR",
    "HEADRACE_POLICY",
    "HEADRACE_ALLOWED_ROOTS",
    "HEADRACE_ALLOWED_SCHEMES",
    "HEADRACE_ALLOWED_MODULES",
)
"""Variables workers read on the machines they run on (provider keys and endpoints, the cache, the
operator's policy); shipped to a cluster's workers (a local Ray's workers inherit the driver's)."""


SHIP_CODE_VARIABLE = "HEADRACE_SHIP_CODE"
"""``auto`` (default): ship headrace's packages to a cluster unless the driver runs inside a Ray job;
``always``; ``never`` (the cluster's image has headrace installed)."""

JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor in a submitted job's driver: the job's runtime environment, which Ray
merges with the one ``ray.init`` asks for and refuses to merge when both set the same field or variable."""

_REACH_TIMEOUT_S = 3.0
_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"

TELEMETRY_PREFIXES = ("OTEL_",)
"""OpenTelemetry's standard variables (OTLP endpoint and headers, service name, sampler): a worker's
spans are exported with the driver's settings (see engine.telemetry)."""


def worker_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The provider and telemetry variables set here, for a cluster's workers."""
    env = os.environ if environ is None else environ
    shipped = {name: env[name] for name in PROVIDER_VARIABLES if env.get(name)}
    shipped.update({k: v for k, v in env.items() if k.startswith(TELEMETRY_PREFIXES) and v})
    return shipped


@dataclass(frozen=True)
class ClusterInfo:
    """What the runtime needs to know about the cluster it runs on."""

    address: str
    resources: dict[str, float]
    """The sum over the cluster's nodes (what the run's window is sized by)."""
    started_here: bool
    nodes: tuple[dict[str, float], ...] = ()
    """Each alive node's own resources: a task or an actor must fit on one of them."""


def node_resources() -> tuple[dict[str, float], ...]:
    """Each alive Ray node's total resources (inside a Ray session)."""
    return tuple(dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive"))


def _info(address: str, started_here: bool) -> ClusterInfo:
    return ClusterInfo(address, dict(ray.cluster_resources()), started_here, node_resources())


def object_store_bytes() -> int:
    """The object store size for a local Ray (``HEADRACE_OBJECT_STORE_BYTES`` overrides it)."""
    return int(os.environ.get("HEADRACE_OBJECT_STORE_BYTES", DEFAULT_OBJECT_STORE_BYTES))


def local_cpus() -> int:
    """The CPUs of a local Ray: ``HEADRACE_NUM_CPUS`` when set (``headrace serve --num-cpus``), else all."""
    return int(os.environ.get("HEADRACE_NUM_CPUS") or os.cpu_count() or 1)


def quiet_ray_notices() -> None:
    """Keep Ray's notice that it turned token authentication on out of the user's terminal.

    Ray turns token authentication on for a new local cluster (or a driver joining with ``auto`` while a
    token file exists) whose RAY_AUTH_MODE is unset, and warns about it on every start; the mode is the
    right one, so only its own logger is raised to errors. Setting RAY_AUTH_MODE=token here instead does
    not work: Ray read its configuration when it was imported, and the driver would then lack the token
    its GCS asks for.
    """
    logging.getLogger(_RAY_AUTH_LOGGER).setLevel(logging.ERROR)


def start_local_ray() -> None:
    """Start a new local Ray in this process, with its CPUs and an explicitly sized object store."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    quiet_ray_notices()
    ray.init(
        # "local" always starts a new instance; with no address Ray would join any cluster that
        # `ray start` left running on the machine
        address="local",
        num_cpus=local_cpus(),
        object_store_memory=object_store_bytes(),
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
        configure_logging=True,
    )


@contextmanager
def ray_session(address: str | None = None) -> Iterator[ClusterInfo]:
    """Use the Ray already initialised in this process, connect to ``address``, or start a local Ray.

    A Ray started here is stopped on exit; a cluster or an outer session is left running.
    """
    if ray.is_initialized():
        yield _info("existing", started_here=False)
        return
    if address:
        check_reachable(address)
        quiet_ray_notices()
        try:
            ray.init(
                address=address,
                runtime_env=join_runtime_env(),
                logging_level=logging.WARNING,
                log_to_driver=True,
            )
        except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
            raise ClusterError(_join_failure(address, exc)) from None
    else:
        start_local_ray()
    try:
        yield _info(address or "local", started_here=True)
    finally:
        ray.shutdown()


def join_runtime_env(environ: Mapping[str, str] | None = None) -> dict[str, object] | None:
    """The runtime environment a driver joining a cluster asks for: headrace's packages (as folder paths,
    which Ray can copy when it merges environments, unlike module objects) and the workers' variables.

    Inside a Ray job the job's own runtime environment already reaches every worker: the driver then
    ships no code (the job's image or working directory has headrace, as it runs this driver) and adds
    only variables the job does not set, so Ray's merge never conflicts. ``HEADRACE_SHIP_CODE`` overrides
    the choice of shipping code (``always``, ``never``).
    """
    env = os.environ if environ is None else environ
    ship = env.get(SHIP_CODE_VARIABLE, "auto").strip().lower() or "auto"
    if ship not in ("auto", "always", "never"):
        raise ClusterError(
            f"{SHIP_CODE_VARIABLE}={env[SHIP_CODE_VARIABLE]!r} is not one of auto, always, never; "
            "use `never` when the cluster's image has headrace installed"
        )
    job_env: Mapping[str, object] = {}
    if JOB_CONFIG_VARIABLE in env:
        job_env = json.loads(env[JOB_CONFIG_VARIABLE]).get("runtime_env") or {}
    in_job = JOB_CONFIG_VARIABLE in env
    runtime_env: dict[str, object] = {}
    if (ship == "always" or (ship == "auto" and not in_job)) and "py_modules" not in job_env:
        runtime_env["py_modules"] = _package_folders()
    job_vars = job_env.get("env_vars") or {}
    assert isinstance(job_vars, Mapping)
    shipped = {k: v for k, v in worker_env(dict(env)).items() if k not in job_vars}
    if shipped:
        runtime_env["env_vars"] = shipped
    return runtime_env or None


def _package_folders() -> list[str]:
    import connectors
    import engine
    import operators

    return [str(Path(m.__file__ or "").parent) for m in (engine, operators, connectors)]


def check_reachable(address: str, timeout_s: float = _REACH_TIMEOUT_S) -> None:
    """Refuse at once an address where nothing listens (``ray.init`` would retry for minutes, silently).

    ``auto`` and addresses without a port are left to Ray, which finds or refuses them quickly.
    """
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        return
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = f"no answer within {timeout_s:g}s" if isinstance(exc, TimeoutError) else exc.strerror
        raise ClusterError(
            f"no Ray cluster answers at {address} ({reason or type(exc).__name__}); start one with "
            "`ray start --head`, or check the address: the head's GCS port (default 6379) for "
            "`HOST:PORT`, or the Ray client port (default 10001) for `ray://HOST:PORT`"
        ) from None


def _join_failure(address: str, exc: BaseException) -> str:
    text = str(exc)
    first = text.splitlines()[0] if text else type(exc).__name__
    how = (
        "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token "
        "(`ray get-auth-token` on the head prints it)"
    )
    if isinstance(exc, ray.exceptions.AuthenticationError):
        return f"the Ray cluster at {address} refused this driver: it requires token authentication; {how}"
    # Ray reports a missing or wrong token as a failed connection (only its log line says
    # "Unauthenticated"), and the address itself answered: the token is the likely cause
    return (
        f"could not join the Ray cluster at {address}: {first}. If the cluster uses token "
        f"authentication, this driver needs its token: {how}"
    )
