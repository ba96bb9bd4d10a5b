"""The director of one shared LLM pool: which run's batch goes to which pool actor, and when.

There is one pool per (provider, model, account) on a cluster, started by the first run that needs it
and kept (a named, detached Ray actor in namespace ``headrace``), so a run starts no process of its own.
Its director deals *leases*: a task holding a batch asks for one, sends the batch straight to the leased
actor (the rows never pass through the director) and gives the lease back.

- **Fair.** Waiting leases are dealt in weighted fair order (:class:`FairQueue`): between tenants by the
  Engine's tenant weights, then between the tenant's runs, each by rows served. A run with a thousand
  batches waiting gets its share, not the pool; a run that arrives later is served next.
- **Grows and shrinks.** Each actor takes a few batches at once (their rows share its requests in flight).
  When every actor is full and leases wait, the director starts another, up to the most actors a node
  gives its pool (``resources.concurrency``). An actor idle for ``HEADRACE_POOL_IDLE_S`` seconds (60) is
  retired.
- **Alive and placed.** A new actor gets work only once it has answered (it is placed and running);
  the director awaits that answer, it never blocks its event loop on Ray. An actor still not placed when
  no batch waits any more (its run ended: no node could hold it) is withdrawn, not left pending.
  A task whose actor died mid-batch says so when it gives the lease back: the actor is dropped and the
  task sends the whole batch again to another (the dead actor's answers never reached the output).
- **Cancelling frees the share at once.** When a run ends its waiting leases are dropped, its leased
  actors cancel its batches, and those leases count as free.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from engine.logs import get_logger

T = TypeVar("T")

BATCHES_PER_ACTOR = 4
"""Batches one pool actor answers at once; their rows share the actor's requests in flight."""
_IDLE_S_DEFAULT = 60.0
_log = get_logger("runtime")


@dataclass
class _Party(Generic[T]):
    vtime: float = 0.0
    items: deque[tuple[float, T]] = field(default_factory=deque)


@dataclass
class _Tenant(Generic[T]):
    weight: float = 1.0
    vtime: float = 0.0
    runs: dict[str, _Party[T]] = field(default_factory=dict)

    def waiting(self) -> int:
        return sum(len(p.items) for p in self.runs.values())


class FairQueue(Generic[T]):
    """Waiting items by tenant and run, taken in weighted fair order (start-time fair queueing).

    Each tenant's virtual time advances by ``cost / weight`` per item taken, each run's by ``cost``; the
    tenant with the least virtual time goes first, then its run with the least. A tenant or run that was
    idle starts at the current virtual time, so it cannot bank the time it was away.
    """

    def __init__(self) -> None:
        self._tenants: dict[str, _Tenant[T]] = {}
        self._now = 0.0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, tenant: str, weight: float, run_id: str, cost: float, item: T) -> None:
        """Queue ``item`` (``cost``: its size, e.g. rows) for ``run_id`` of ``tenant``."""
        group = self._tenants.get(tenant)
        if group is None or not group.waiting():
            vtime = max(group.vtime if group else 0.0, self._now)
            group = self._tenants[tenant] = _Tenant(weight, vtime, group.runs if group else {})
        group.weight = weight
        party = group.runs.get(run_id)
        if party is None or not party.items:
            start = min((p.vtime for p in group.runs.values() if p.items), default=None)
            vtime = max(party.vtime if party else 0.0, start if start is not None else 0.0)
            party = group.runs[run_id] = _Party(vtime, party.items if party else deque())
        party.items.append((cost, item))
        self._size += 1

    def pop(self) -> T | None:
        """The next item in fair order (None: nothing waits)."""
        active = [(t.vtime, name) for name, t in self._tenants.items() if t.waiting()]
        if not active:
            return None
        _, name = min(active)
        group = self._tenants[name]
        run_id = min((p.vtime, r) for r, p in group.runs.items() if p.items)[1]
        party = group.runs[run_id]
        cost, item = party.items.popleft()
        self._now = group.vtime
        group.vtime += cost / group.weight
        party.vtime += cost
        if not party.items:
            del group.runs[run_id]
        self._size -= 1
        return item

    def drop(self, run_id: str) -> list[T]:
        """Remove and return every item ``run_id`` has waiting."""
        dropped: list[T] = []
        for group in self._tenants.values():
            party = group.runs.pop(run_id, None)
            if party is not None:
                dropped.extend(item for _, item in party.items)
        self._size -= len(dropped)
        return dropped


@dataclass(frozen=True)
class LeaseRequest:
    """What a task says when it asks for a pool actor."""

    run_id: str
    tenant: str
    weight: float
    rows: int
    actors: int
    """The most actors the node gives its pool (the pool keeps the largest any run asked for)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Ray options of a pool actor (``num_cpus``...; the first run's apply)."""


@dataclass(frozen=True)
class Lease:
    """A pool actor lent to one batch; give it back with ``PoolDirector.release``."""

    id: int
    actor: Any
    holder: str
    """Who holds the actor's budget reservations in the ledger (released when it dies mid-call)."""


@dataclass
class _Actor:
    handle: Any
    ready: bool = False
    holder: str = ""
    leases: set[int] = field(default_factory=set)
    idle_since: float = field(default_factory=time.monotonic)


class PoolDirector:
    """Deals one pool's actors to batches (an async Ray actor; see the module docstring)."""

    def __init__(self, name: str, worker_class: Any = None, idle_s: float | None = None) -> None:
        self.name = name
        if worker_class is None:
            from engine.runtime.llm.pool import PoolWorker

            worker_class = PoolWorker
        self._worker_class = worker_class
        self._actors: dict[int, _Actor] = {}
        self._queue: FairQueue[tuple[LeaseRequest, asyncio.Future[Lease | None]]] = FairQueue()
        self._leases: dict[int, tuple[int, str]] = {}  # lease -> (actor, run)
        self._ids = 0
        self._max_actors = 1
        self._options: Mapping[str, Any] | None = None
        if idle_s is None:
            idle_s = float(os.environ.get("HEADRACE_POOL_IDLE_S", _IDLE_S_DEFAULT))
        self._idle_s = idle_s
        self._reaper: asyncio.Task[None] | None = None
        self._starting: set[asyncio.Task[None]] = set()
        self.started = 0
        self.retired = 0

    async def lease(self, request: LeaseRequest) -> Lease | None:
        """A lease on an actor for one batch of ``request.run_id``, once fair order allows (None: the
        run ended while it waited)."""
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        self._max_actors = max(self._max_actors, request.actors)
        if self._options is None:
            self._options = dict(request.options)
        future: asyncio.Future[Lease | None] = asyncio.get_running_loop().create_future()
        self._queue.push(
            request.tenant, request.weight, request.run_id, max(1, request.rows), (request, future)
        )
        self._deal()
        return await future

    async def release(self, lease_id: int, died: bool = False) -> None:
        """Give a lease back; ``died``: its actor died mid-batch (it gets no more work)."""
        entry = self._leases.pop(lease_id, None)
        if entry is None:
            return  # freed already when its run ended
        actor = self._actors.get(entry[0])
        if actor is not None:
            actor.leases.discard(lease_id)
            if not actor.leases:
                actor.idle_since = time.monotonic()
            if died:
                self._forget(entry[0], kill=True)
        self._deal()

    async def drop(self, run_id: str) -> int:
        """Forget ``run_id``: its waiting leases are refused, its batches on actors cancelled and their
        leases freed. Returns how many waiting leases were dropped."""
        dropped = self._queue.drop(run_id)
        for _, future in dropped:
            if not future.done():
                future.set_result(None)
        for lease_id, (actor_id, run) in list(self._leases.items()):
            if run == run_id:
                del self._leases[lease_id]
                actor = self._actors.get(actor_id)
                if actor is not None:
                    actor.leases.discard(lease_id)
                    actor.handle.cancel_run.remote(run_id)
        if not len(self._queue):
            # nothing waits: an actor still not placed (no node can hold it now) is withdrawn instead of
            # staying pending for ever; the next batch to wait starts another
            for actor_id in [i for i, a in self._actors.items() if not a.ready]:
                self._forget(actor_id, kill=True)
        self._deal()
        return len(dropped)

    async def status(self) -> dict[str, Any]:
        """Actors (ready, starting), leases out, leases waiting, the most actors, started and retired."""
        return {
            "actors": sum(1 for a in self._actors.values() if a.ready),
            "starting": sum(1 for a in self._actors.values() if not a.ready),
            "leased": len(self._leases),
            "waiting": len(self._queue),
            "max_actors": self._max_actors,
            "started": self.started,
            "retired": self.retired,
        }

    async def actor_pids(self) -> list[int]:
        """Process ids of the ready actors (tests kill one)."""
        ready = await asyncio.gather(*(a.handle.ready.remote() for a in self._actors.values() if a.ready))
        return [pid for pid, _ in ready]

    # -- dealing --------------------------------------------------------------------------------------

    def _deal(self) -> None:
        while len(self._queue):
            free = [(len(a.leases), i) for i, a in self._actors.items() if a.ready]
            free = [f for f in free if f[0] < BATCHES_PER_ACTOR]
            if not free:
                break
            actor_id = min(free)[1]
            item = self._queue.pop()
            assert item is not None
            request, future = item
            if future.done():  # its task went away (cancelled)
                continue
            self._ids += 1
            self._leases[self._ids] = (actor_id, request.run_id)
            actor = self._actors[actor_id]
            actor.leases.add(self._ids)
            future.set_result(Lease(self._ids, actor.handle, actor.holder))
        self._grow()

    def _grow(self) -> None:
        waiting = len(self._queue)
        if not waiting:
            return
        starting = sum(1 for a in self._actors.values() if not a.ready)
        wanted = math.ceil(waiting / BATCHES_PER_ACTOR) - starting
        room = self._max_actors - len(self._actors)
        for _ in range(max(0, min(wanted, room))):
            self._start()

    def _start(self) -> None:
        import ray

        options = {"num_cpus": 0, **(self._options or {})}
        # a cluster service: never captured by the placement group of the tenant whose run started it
        handle = ray.remote(self._worker_class).options(scheduling_strategy="DEFAULT", **options).remote()
        self._ids += 1
        self._actors[self._ids] = _Actor(handle)
        self.started += 1
        task = asyncio.get_running_loop().create_task(self._await_ready(self._ids, handle))
        self._starting.add(task)  # held, so the loop does not drop it half-way
        task.add_done_callback(self._starting.discard)

    async def _await_ready(self, actor_id: int, handle: Any) -> None:
        """Deal to a started actor once it answers (it is placed and running)."""
        try:
            _, holder = await handle.ready.remote()
        except Exception as exc:  # it could not start: leases keep waiting for others
            if actor_id in self._actors:  # not withdrawn on purpose (see drop)
                _log.warning("pool %s: an actor failed to start: %s", self.name, exc)
            self._forget(actor_id, kill=True)
        else:
            actor = self._actors.get(actor_id)
            if actor is not None:
                actor.ready, actor.holder, actor.idle_since = True, holder, time.monotonic()
        self._deal()

    def _forget(self, actor_id: int, *, kill: bool) -> None:
        import ray

        actor = self._actors.pop(actor_id, None)
        if actor is None:
            return
        for lease_id in actor.leases:
            self._leases.pop(lease_id, None)
        if kill:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor.handle)

    async def _reap(self) -> None:
        """Retire actors idle longer than the idle time."""
        while True:
            await asyncio.sleep(min(1.0, max(0.05, self._idle_s / 4)))
            now = time.monotonic()
            for actor_id, actor in list(self._actors.items()):
                if actor.ready and not actor.leases and now - actor.idle_since > self._idle_s:
                    self._forget(actor_id, kill=True)
                    self.retired += 1
