"""Compiled graphs as nodes (subgraphs): ``parent.add_node("research", child_app)``.

- **State.** The child starts from the parent's values of the fields both states declare; its final
  values of those fields are the node's update in the parent (every shared field, as LangGraph writes
  a subgraph's output back, so a shared field with an ``operator.add`` reducer receives the child's
  whole list: give shared list fields a reducer that tolerates it, or keep them out of the child).
- **Checkpoints.** With a checkpointed parent, the child runs in the parent's store as run
  ``"{parent_run}:{node}:{task_id}"`` (a namespace under the parent's run; ``history`` of that id
  shows the child's steps). The id is stable for the task, so a re-run of the node continues the
  child rather than starting it again.
- **Interrupts.** An interrupt inside the child pauses the parent: the parent's pending interrupt is
  the child's (same id, ``ns`` naming the child run). Resuming the parent with a value resumes the
  child with it. Without checkpoints a child's interrupt cannot be resumed (the parent says so).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from engine.graph.errors import GraphError, GraphInterrupt

if TYPE_CHECKING:
    from engine.graph.app import CompiledGraph
    from engine.graph.builder import NodeDef
    from engine.graph.tasks import Task


class Subgraphs:
    """Runs the subgraph nodes of one parent run."""

    def __init__(self, parent: CompiledGraph[Any], run_id: str) -> None:
        self.parent = parent
        self.run_id = run_id
        self._bound: dict[str, CompiledGraph[Any]] = {}

    def _child(self, node: NodeDef) -> CompiledGraph[Any]:
        child = self._bound.get(node.name)
        if child is None:
            child = copy.copy(node.subgraph)  # the same plan, writing to the parent's store
            child.store = self.parent.store
            child._owns_store = False
            self._bound[node.name] = child
        return child

    async def call(self, node: NodeDef, task: Task, state: Any) -> dict[str, Any]:
        """Run (or continue) the child for ``task``; its shared fields are the node's update."""
        child = self._child(node)
        shared = [k for k in child.plan.schema.fields if k in self.parent.plan.schema.fields]
        values = state.__dict__
        if child.store is None:
            result = await child.ainvoke({k: values[k] for k in shared})
        else:
            child_id = f"{self.run_id}:{node.name}:{task.id}"
            run = child.store.get_run(child_id)
            if run is None:
                result = await child.ainvoke({k: values[k] for k in shared}, run_id=child_id)
            elif run.status == "succeeded":
                result = child.get_state(child_id).state
            else:  # paused or stopped mid-way: continue it, answering with the parent's last value
                options: dict[str, Any] = {}
                answered = int(task.done.get("__subgraph_answers__", 0))
                if len(task.resume) > answered:
                    options["value"] = task.resume[-1]
                    task.done["__subgraph_answers__"] = len(task.resume)
                result = await child.aresume(child_id, **options)
        pending = getattr(result, "__interrupt__", None)
        if pending:
            if child.store is None:
                raise GraphError(
                    f"subgraph node {node.name!r} was interrupted, but the graph has no checkpoints to "
                    "resume it from: compile the parent with checkpoint='memory://' (or a store URL)"
                )
            info = {**pending[0], "ns": f"{self.run_id}:{node.name}:{task.id}"}
            raise GraphInterrupt(info.get("value"), info)
        out = result.__dict__
        return {k: out[k] for k in shared}
