"""The service's container entry point: ``python -m engine.service.container`` (what
``cluster/kuberay-service.yaml`` runs) turns the pod's environment into ``headrace serve`` and execs it.

::

    HEADRACE_HOME            the volume holding the token store, the ledger, the audit log (required)
    RAY_ADDRESS              the Ray cluster to join (``ray://headrace-head-svc:10001``); unset: a local Ray
    HEADRACE_SERVE_PORT      default 8537; the service listens on every interface of the pod
    HEADRACE_SERVICE_CONFIG  the configuration file (policy, tenants' quotas), when it exists
    HEADRACE_TLS_DIR         a Kubernetes TLS secret's mount (``tls.crt``, ``tls.key``); default
                             ``/etc/headrace/tls``. Without them the server refuses to start, unless
                             ``HEADRACE_INSECURE=1`` (behind a proxy that terminates TLS).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

DEFAULT_TLS_DIR = "/etc/headrace/tls"


def serve_argv(env: Mapping[str, str]) -> list[str]:
    """The ``headrace serve`` command line for a pod with environment ``env``."""
    if not env.get("HEADRACE_HOME"):
        raise SystemExit("HEADRACE_HOME must name the volume that keeps the token store and the ledger")
    argv = ["headrace", "serve", "--host", "0.0.0.0", "--port", env.get("HEADRACE_SERVE_PORT", "8537")]
    if env.get("RAY_ADDRESS"):
        argv += ["--address", env["RAY_ADDRESS"]]
    config = env.get("HEADRACE_SERVICE_CONFIG")
    if config and Path(config).is_file():
        argv += ["--config", config]
    tls = Path(env.get("HEADRACE_TLS_DIR", DEFAULT_TLS_DIR))
    if (tls / "tls.crt").is_file() and (tls / "tls.key").is_file():
        argv += ["--tls-cert", str(tls / "tls.crt"), "--tls-key", str(tls / "tls.key")]
    elif env.get("HEADRACE_INSECURE") == "1":
        argv.append("--insecure")
    argv += ["--log-level", env.get("HEADRACE_LOG_LEVEL", "info")]
    return argv


def main() -> None:
    """Exec ``headrace serve`` (it becomes the container's process and gets its signals)."""
    argv = serve_argv(os.environ)
    Path(os.environ["HEADRACE_HOME"]).mkdir(parents=True, exist_ok=True)
    print(" ".join(argv), file=sys.stderr, flush=True)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
