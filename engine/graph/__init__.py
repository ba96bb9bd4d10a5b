"""State graphs: the Graph API, its runner and the checkpoint layer it writes to.

```python
from engine import Graph, START, END

class S(BaseModel):
    n: int = 0
    log: Annotated[list[str], operator.add] = []

g = Graph(S)
g.add_node("step", lambda s: {"n": s.n + 1, "log": [f"n={s.n}"]})
g.add_edge(START, "step")
g.add_conditional_edges("step", lambda s: "step" if s.n < 3 else END)
app = g.compile(checkpoint="memory://")
final = app.invoke({"n": 0}, run_id="r1")      # S(n=3, log=[...]); app.history("r1") lists the steps
```

``builder`` holds the user-facing Graph; ``runner`` the async core (its docstring states the
scheduling semantics); ``app`` the compiled graph with checkpoints, resume, history and fork;
``state`` the state schema and reducers; ``checkpoints`` the stores.
"""

from __future__ import annotations

from engine.graph.app import CompiledGraph, RunState, StepView
from engine.graph.builder import Command, Graph, Send
from engine.graph.errors import (
    GraphError,
    GraphInterrupt,
    GraphRecursionError,
    InvalidGraph,
    InvalidUpdate,
    NodeFailed,
)
from engine.graph.retry import RetryPolicy, default_retry_on
from engine.graph.state import REDUCERS
from engine.graph.tasks import interrupt, once
from engine.spec.models import END, START

__all__ = [
    "END",
    "REDUCERS",
    "START",
    "Command",
    "CompiledGraph",
    "Graph",
    "GraphError",
    "GraphInterrupt",
    "GraphRecursionError",
    "InvalidGraph",
    "InvalidUpdate",
    "NodeFailed",
    "RetryPolicy",
    "RunState",
    "Send",
    "StepView",
    "default_retry_on",
    "interrupt",
    "once",
]
