"""State-graph nodes with resources run as Ray tasks on a real local Ray; light nodes stay inline."""

from __future__ import annotations

import operator
import os
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from engine import START, Graph
from engine.graph import RetryPolicy

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]


class PidState(BaseModel):
    pids: Annotated[dict[str, int], "merge"] = {}
    log: Annotated[list[str], operator.add] = []


def light(state: PidState) -> dict[str, Any]:
    return {"pids": {"light": os.getpid()}, "log": ["light"]}


def heavy(state: PidState) -> dict[str, Any]:
    return {"pids": {"heavy": os.getpid()}, "log": [f"heavy saw {state.log}"]}


async def heavy_async(state: PidState) -> dict[str, Any]:
    return {"pids": {"heavy_async": os.getpid()}, "log": ["heavy_async"]}


def always_fails(state: PidState) -> dict[str, Any]:
    raise RuntimeError(f"failed in {os.getpid()}")


def test_a_node_with_resources_runs_as_a_ray_task_in_another_process(tmp_path: Any) -> None:
    g = Graph(PidState)
    g.add_node("light", light)
    g.add_node("heavy", heavy, resources={"num_cpus": 1})
    g.add_node("heavy_async", heavy_async, heavy=True)
    g.add_edge(START, "light").add_edge("light", "heavy").add_edge("heavy", "heavy_async")
    app = g.compile(checkpoint=f"sqlite:///{tmp_path}/runs.db")
    final = app.invoke({}, run_id="ray1")
    assert final.pids["light"] == os.getpid()  # light nodes run inline, never as a task
    assert final.pids["heavy"] != os.getpid()
    assert final.pids["heavy_async"] != os.getpid()
    assert final.log == ["light", "heavy saw ['light']", "heavy_async"]
    assert [h.node for h in app.history("ray1")] == ["__input__", "light", "heavy", "heavy_async"]


def test_a_failing_ray_node_is_retried_then_fails_the_run_naming_it() -> None:
    g = Graph(PidState)
    g.add_node(
        "remote",
        always_fails,
        heavy=True,
        retry=RetryPolicy(max_attempts=2, initial_backoff_s=0, jitter=False, retry_on=RuntimeError),
    )
    g.add_edge(START, "remote")
    with pytest.raises(RuntimeError, match="failed in") as err:  # the node's own exception type
        g.compile().invoke({})
    assert err.value.node == "remote"  # type: ignore[attr-defined]
