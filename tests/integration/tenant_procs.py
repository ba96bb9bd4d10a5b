"""Processes for the cross-engine tenant tests (tests/integration/test_tenants.py).

``python -m tests.integration.tenant_procs cluster`` starts a one-machine Ray cluster (2 CPUs, a 512 MiB
object store), prints its address and keeps it up until its stdin closes; run it with ``RAY_TMPDIR``
set to a private folder, so the cluster's address file never lands in the machine's shared ``/tmp/ray``
(where any ``ray.init()`` would find and join it).

``python -m tests.integration.tenant_procs drive ADDRESS PIPELINE TENANT QUOTA_JSON`` is one driver:
an ``Engine`` connected to ADDRESS, declaring QUOTA_JSON for TENANT, runs PIPELINE (without the LLM
cache) and prints one JSON object: status, total cost, error.

``python -m tests.integration.tenant_procs abandon ADDRESS PIPELINE TENANT QUOTA_JSON`` does the same,
prints the status, then exits without closing the engine, like a driver that crashed.
"""

from __future__ import annotations

import json
import os
import sys


def hold_cluster() -> None:
    """Start the cluster, print its address, and stop it once stdin closes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "object_store_memory": 512 * 1024 * 1024, "include_dashboard": False},
    )
    print(cluster.address, flush=True)
    try:
        sys.stdin.read()
    finally:
        cluster.shutdown()


def drive(address: str, pipeline: str, tenant: str, quota: str, *, abandon: bool = False) -> None:
    """Run ``pipeline`` for ``tenant`` on one engine and print how it ended (``abandon``: then exit
    without closing the engine)."""
    from engine import Engine, TenantQuota
    from engine.errors import BudgetExceeded

    tenants = {tenant: TenantQuota.model_validate_json(quota)}
    with Engine(address, tenants=tenants) as engine:
        handle = engine.submit(pipeline, tenant=tenant, cache=False)
        if abandon:
            print(json.dumps({"status": handle.result(timeout=300).status}), flush=True)
            os._exit(0)
        try:
            summary = handle.result(timeout=300)
            out = {"status": summary.status, "cost_usd": summary.total_cost_usd, "error": summary.error}
        except BudgetExceeded as exc:  # refused before it started: the tenant was spent already
            out = {"status": handle.status(), "cost_usd": 0.0, "error": str(exc)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "cluster":
        hold_cluster()
    else:
        drive(*sys.argv[2:6], abandon=sys.argv[1] == "abandon")
