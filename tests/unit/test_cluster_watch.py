"""A run never waits for ever on work no node can hold (issue 25, point 2, at run time): the watch fails
the run once some work has fitted on no alive node for longer than the deadline, and forgets the wait
when a node that offers it comes back."""

from __future__ import annotations

import pytest

from engine.errors import ClusterError, UnschedulableError
from engine.runtime.cluster_watch import UnplaceableWatch, deadline_s

GATEWAY = ("classify", "LLM node 'classify' (one pool actor)", {"llm_gateway": 1.0})


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_work_that_fits_nowhere_fails_the_run_after_the_deadline_naming_need_and_nodes() -> None:
    clock, nodes = _Clock(), [{"CPU": 1.0}, {"CPU": 1.0}]
    watch = UnplaceableWatch(lambda: nodes, deadline=10.0, clock=clock)
    watch.check([GATEWAY])
    clock.now += 9.0
    watch.check([GATEWAY])  # still within the deadline
    clock.now += 3.0  # the nodes are read every few seconds, not on every turn of the run loop
    with pytest.raises(UnschedulableError) as caught:
        watch.check([GATEWAY])
    message = str(caught.value)
    assert caught.value.node == "classify" and caught.value.exit_code == 3
    assert "LLM node 'classify' (one pool actor) asks for 1 llm_gateway" in message
    assert "2 nodes: {1 CPU}, {1 CPU}" in message and "HEADRACE_UNSCHEDULABLE_S" in message


def test_a_node_that_comes_back_resets_the_wait_and_work_that_fits_never_fails() -> None:
    clock = _Clock()
    nodes: list[dict[str, float]] = [{"CPU": 1.0}]
    watch = UnplaceableWatch(lambda: nodes, deadline=10.0, clock=clock)
    watch.check([GATEWAY])
    clock.now += 8.0
    nodes.append({"CPU": 1.0, "llm_gateway": 2.0})  # the autoscaler added it
    watch.check([GATEWAY])
    nodes.pop()
    clock.now += 8.0
    watch.check([GATEWAY])  # the clock starts again from here
    clock.now += 8.0
    watch.check([GATEWAY])
    clock.now += 100.0
    watch.check([("n", "node 'n' (one task)", {"CPU": 1.0})])  # fits: never fails


def test_the_deadline_comes_from_the_environment() -> None:
    assert deadline_s({}) == 60.0
    assert deadline_s({"HEADRACE_UNSCHEDULABLE_S": "600"}) == 600.0
    with pytest.raises(ClusterError, match="HEADRACE_UNSCHEDULABLE_S='soon' is not a number"):
        deadline_s({"HEADRACE_UNSCHEDULABLE_S": "soon"})
