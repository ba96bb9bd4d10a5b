"""Connecting to Ray: a local instance sized explicitly, or an existing cluster with the code shipped."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import ray

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
    started_here: bool


def object_store_bytes() -> int:
    """The object store size for a local Ray (``HEADRACE_OBJECT_STORE_BYTES`` overrides it)."""
    return int(os.environ.get("HEADRACE_OBJECT_STORE_BYTES", DEFAULT_OBJECT_STORE_BYTES))


def local_cpus() -> int:
    """The CPUs of a local Ray: ``HEADRACE_NUM_CPUS`` when set (``headrace serve --num-cpus``), else all."""
    return int(os.environ.get("HEADRACE_NUM_CPUS") or os.cpu_count() or 1)


def start_local_ray() -> None:
    """Start a new local Ray in this process, with its CPUs and an explicitly sized object store."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
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
        yield ClusterInfo("existing", dict(ray.cluster_resources()), started_here=False)
        return
    if address:
        import connectors
        import engine
        import operators

        # Credentials travel in the job's runtime environment, which Ray keeps to this job; they are
        # never written into a pipeline file, a summary or a log line.
        runtime_env: dict[str, object] = {"py_modules": [engine, operators, connectors]}
        if env := worker_env():
            runtime_env["env_vars"] = env
        ray.init(
            address=address,
            runtime_env=runtime_env,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )
    else:
        start_local_ray()
    try:
        yield ClusterInfo(address or "local", dict(ray.cluster_resources()), started_here=True)
    finally:
        ray.shutdown()
