"""A real local Ray, sized explicitly, shared by the integration tests of one session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """Two CPUs and a 512 MiB object store, whatever the machine, so tests behave the same everywhere."""
    if not ray.is_initialized():
        # The local Ray's processes inherit this environment: workers of every job on it, including
        # drivers that tests start in other processes with `--address`, import test helpers (e.g.
        # map_batches functions) from the repository.
        previous = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), previous) if p)
        try:
            ray.init(
                # "local": always a new instance; without it ray.init joins a cluster that a test in the
                # other xdist lane started with `ray start` or ray.cluster_utils (and refuses num_cpus)
                address="local",
                num_cpus=2,
                object_store_memory=512 * 1024 * 1024,
                include_dashboard=False,
                runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}},
            )
        finally:
            if previous is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = previous
    yield
    ray.shutdown()


@pytest.fixture
def out_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the examples' ${HEADRACE_OUT} at a temporary folder."""
    out = tmp_path / "out"
    monkeypatch.setenv("HEADRACE_OUT", str(out))
    return out
