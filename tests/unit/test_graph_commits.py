"""How many SQLite transactions a checkpointed graph run commits: exactly one per superstep.

A commit is the expensive part of a checkpoint (WAL frames written, file locks taken and released), so
the runner makes one per superstep: a fresh run's creation with its input record, each step's records,
and the last step (or a pause) with the run's final status. Counted with a ``sqlite3`` trace callback
on the store's own connection, so the figures are the statements SQLite really ran.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel

from engine import END, START, Command, Graph
from engine.graph.checkpoints import SqliteStore


class S(BaseModel):
    n: int = 0
    log: Annotated[list[str], operator.add] = []


def chain(*names: str) -> Graph[S]:
    g = Graph(S)
    for name in names:
        g.add_node(name, lambda s, name=name: {"n": s.n + 1, "log": [name]})
    g.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        g.add_edge(a, b)
    g.add_edge(names[-1], END)
    return g


class Transactions:
    """Counts the write transactions run on a store's connection: each BEGIN ... COMMIT, and each
    write statement run outside one (SQLite commits it on its own)."""

    def __init__(self, store: SqliteStore) -> None:
        self.statements: list[str] = []
        store._db.set_trace_callback(self.statements.append)

    def count(self) -> int:
        commits, inside = 0, False
        for sql in self.statements:
            verb = sql.split(None, 1)[0].upper() if sql.strip() else ""
            if verb == "BEGIN":
                inside = True
            elif verb in ("COMMIT", "ROLLBACK"):
                inside = False
                commits += verb == "COMMIT"
            elif verb in ("INSERT", "UPDATE", "DELETE", "REPLACE") and not inside:
                commits += 1
        self.statements.clear()
        return commits


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "runs.db")
    yield s
    s.close()


def test_a_fresh_run_commits_once_for_its_start_and_once_per_superstep(store: SqliteStore) -> None:
    app = chain("a", "b", "c").compile(checkpoint=store)
    seen = Transactions(store)
    assert app.invoke({"n": 0}, run_id="r1") == S(n=3, log=["a", "b", "c"])
    # the run with its input, step a, step b, step c with the run's end: 4 (before: 6, the run, its
    # input and the final status each committed on their own)
    assert seen.count() == 4
    run = store.get_run("r1")
    assert run is not None and run.status == "succeeded"
    assert [(s.step, s.node) for s in store.steps("r1")] == [(0, "__input__"), (1, "a"), (2, "b"), (3, "c")]


def test_a_pause_commits_its_record_with_the_status_and_a_continued_thread_its_input_with_it(
    store: SqliteStore,
) -> None:
    app = chain("a", "b").compile(checkpoint=store, interrupt_before=["b"])
    seen = Transactions(store)
    paused = app.invoke({"n": 0}, run_id="r1")
    assert paused.__interrupt__[0]["node"] == "b"  # type: ignore[attr-defined]
    assert seen.count() == 3  # the run with its input; step a; the pause record with the status
    state = app.get_state("r1")
    assert state.status == "interrupted" and state.next == ("b",)

    assert app.resume("r1") == S(n=2, log=["a", "b"])
    assert seen.count() == 2  # the status back to running; step b with the run's end

    assert app.invoke({"n": 10}, run_id="r1").n == 11  # new input on the finished thread, then a
    assert seen.count() == 3  # the input with the status; step a; the pause before b with its status
    assert app.get_state("r1").status == "interrupted"


def test_a_graph_without_checkpoints_numbers_its_steps_as_a_checkpointed_one(store: SqliteStore) -> None:
    # without a store the runner builds no records, but interrupt ids still count them
    g = Graph(S)
    g.add_node("a", lambda s: None)  # no update: still one record
    g.add_node("b", lambda s: [Command(update=[("log", ["x"]), ("log", ["y"])])])  # two write groups
    g.add_node("c", lambda s: {"n": len(s.log)})
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    g.add_edge("c", END)
    stored = g.compile(checkpoint=store, interrupt_before=["c"]).invoke({}, run_id="r1")
    bare = g.compile(interrupt_before=["c"]).invoke({}, run_id="r1")
    assert [s.step for s in store.steps("r1")] == [0, 1, 2, 3, 4]  # input, a, b twice, the pause
    assert bare.__interrupt__ == stored.__interrupt__  # type: ignore[attr-defined]
