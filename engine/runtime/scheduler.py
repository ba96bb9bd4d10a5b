"""The run loop: the one module that calls ``ray.wait``.

Each stage is driven by a small state machine that submits Ray work and says what to do when each
reference is ready. The loop keeps at most ``window`` head tasks (split readers) in flight across all
stages, and holds back new ones while too many batches wait in the object store for a barrier, so
memory depends on the window and the split size, never on the input size.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import ray

from connectors.readers import Split
from connectors.writers import PartInfo
from engine.errors import BudgetExceeded, DataError, HeadraceError, TransientError
from engine.logs import get_logger
from engine.physical import PhysicalStage, Placement
from engine.runtime.cluster_watch import UnplaceableWatch, Wanted, stage_wants
from engine.runtime.split_runners import runner_count, runs_on_runner, split_runner
from engine.runtime.summary import RunSummary
from engine.runtime.task_slots import TaskSlots
from engine.runtime.worker import BarrierActor, SplitResult, run_split, run_tail

Handler = Callable[[Any], None]
_log = get_logger("runtime")


@dataclass
class StageRun:
    """One stage's progress: splits still to read, parts committed, references it waits on."""

    stage: PhysicalStage
    splits: list[Split]
    parts: list[PartInfo] = field(default_factory=list)
    heads_in_flight: int = 0
    open: bool = True  # False once a barrier (a satisfied limit) needs no more input


class Scheduler:
    """Submits stage work with a bounded window and dispatches finished references to handlers; with a
    ``placement`` (a tenant's CPU quota) every task and barrier actor goes into it."""

    def __init__(
        self,
        summary: RunSummary,
        window: int,
        on_result: Callable[[StageRun, SplitResult], None],
        on_retry: Callable[[str, Split, int, int, float, str], None] | None = None,
        placement: Placement | None = None,
        slots: TaskSlots | None = None,
        watch: UnplaceableWatch | None = None,
    ) -> None:
        self.summary = summary
        self.unplaceable = watch
        """Fails the run when work still to do fits on no alive node for too long (None: never)."""
        self.slots = slots
        """The driver process's bound on head tasks that wait on LLM pools (None: no bound)."""
        self._gated: set[Any] = set()
        self._gate_next = False
        self.placement = placement
        self.window = window
        self.on_result = on_result
        self.on_retry = on_retry
        """Told (node, split, attempt, max_attempts, delay_s, error) when a split is retried."""
        self.in_flight: dict[Any, Handler] = {}
        self.heads = 0
        self.backlog = 0  # batches handed to a barrier whose output is not yet through its tail task
        self.stopping: BudgetExceeded | None = None  # set once a budget refuses a call
        self._head = ray.remote(run_split)
        self._tail = ray.remote(run_tail)
        self._actor = ray.remote(BarrierActor)
        self._runners = 0  # how many shared split runners the cluster keeps (0: not asked yet)

    def run(self, runs: list[StageRun], tick: Callable[[], None]) -> None:
        """Drive every stage to completion."""
        drivers: list[_Driver] = [
            _BarrierDriver(self, r) if r.stage.tails else _FusedDriver(self, r) for r in runs
        ]
        try:
            while True:
                if self.unplaceable is not None:
                    self.unplaceable.check(self._wanted(drivers))
                if self.stopping is None:
                    self._fill(drivers)
                elif self.slots is not None:
                    self.slots.leave(self)  # draining: it starts nothing, so it waits for no slot
                due = min((d.next_retry_at() for d in drivers), default=math.inf)
                if not self.in_flight:
                    if self.stopping is not None:
                        raise self.stopping
                    if all(d.finished() for d in drivers):
                        return
                    if self.slots is not None and self.slots.waiting(self):
                        self.slots.wait(min(0.5, max(0.0, due - time.monotonic())))
                        tick()
                        continue
                    if due == math.inf:
                        raise RuntimeError("the run loop has nothing in flight but unfinished stages")
                    time.sleep(max(0.0, due - time.monotonic()))
                    continue
                queued = self.slots is not None and self.slots.waiting(self)
                timeout = min(0.05 if queued else 1.0, max(0.0, due - time.monotonic()))
                done, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=timeout)
                for ref in done:
                    if ref in self._gated:
                        self._gated.discard(ref)
                        self.slots.release()  # type: ignore[union-attr]
                    try:
                        self.in_flight.pop(ref)(ref)
                    except BudgetExceeded as exc:
                        # drain: nothing new starts, work in flight finishes and commits its parts
                        self.stopping = self.stopping or exc
                tick()
        except BaseException:
            for ref in self.in_flight:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # an actor call (a runner's split, a barrier) cannot be forced
                    with contextlib.suppress(Exception):
                        ray.cancel(ref)
            raise
        finally:
            if self.slots is not None:
                self.slots.leave(self)
                for _ in self._gated:
                    self.slots.release()
                self._gated.clear()

    def _wanted(self, drivers: list[_Driver]) -> list[Wanted]:
        """What one task and one pool actor of each unfinished stage ask of a node."""
        wanted: list[Wanted] = []
        for driver in drivers:
            if driver.finished():
                continue
            stage = driver.run.stage
            pools = [*stage.job.pools.values(), *(p for t in stage.tails for p in t.pools.values())]
            on_runner = bool(pools) and self.placement is None and runs_on_runner(stage.ray_options)
            job = stage.job
            named = [(job.source_id, job.source), *job.transforms, (job.sink_id, job.sink)]
            wanted += stage_wants(stage.ray_options, pools, named, on_runner)
        return wanted

    def queue_depth(self) -> tuple[int, int, int]:
        """References in flight, the window, and the barrier backlog (read by the metrics thread)."""
        return len(self.in_flight), self.window, self.backlog

    def _fill(self, drivers: list[_Driver]) -> None:
        progressed = True
        while progressed and self.heads < self.window and self.backlog < 2 * self.window:
            progressed = False
            for driver in drivers:
                if self.heads < self.window and self._submit_head(driver):
                    progressed = True
            for driver in drivers:
                driver.maybe_finish()

    def _submit_head(self, driver: _Driver) -> bool:
        """``driver.submit_head()``, once a slot is free when its tasks wait on LLM pools."""
        gated = self.slots is not None and bool(driver.run.stage.job.pools)
        if (gated and not (driver.splits or driver.retry_at)) or not driver.run.open:
            return False  # nothing to submit: do not queue for a slot
        if gated and not self.slots.take(self):  # type: ignore[union-attr]
            return False
        self._gate_next = gated
        try:
            submitted = driver.submit_head()
        finally:
            self._gate_next = False
        if gated and not submitted:
            self.slots.release()  # type: ignore[union-attr]
        return submitted

    def watch(self, ref: Any, handler: Handler) -> None:
        """Call ``handler(ref)`` once ``ref`` is ready."""
        self.in_flight[ref] = handler

    def head(self, run: StageRun, split: Split, emit: bool) -> Any:
        """Submit the head task of ``split``."""
        # a split whose worker or node died is retried by the driver, like one whose task raised
        # (see _Driver.failed): with the stage's backoff, counted in the run's retries and recorded;
        # Ray's own retries would be silent
        ref: Any
        if self._on_runner(run, run.stage.job.pools):  # a runner that dies is retried by the driver
            ref = split_runner(self._runners).run_split.options(num_returns=2 if emit else 1)
            ref = ref.remote(run.stage.job, split)
        else:
            options = {**run.stage.ray_options, "max_retries": 0}
            if emit:
                options["num_returns"] = 2
            ref = self._head.options(**self._placed(options)).remote(run.stage.job, split)
        if self._gate_next:
            self._gated.add(ref[0] if emit else ref)  # its slot is given back when it is done
        return ref

    def tail(self, run: StageRun, level: int, tables_ref: Any, index: int) -> Any:
        """Submit a tail task over the batches ``tables_ref`` released by barrier ``level``."""
        job = run.stage.tails[level]
        returns = 2 if job.sink is None else 1
        if self._on_runner(run, job.pools):
            return (
                split_runner(self._runners)
                .run_tail.options(num_returns=returns)
                .remote(job, tables_ref, index)
            )
        options: dict[str, Any] = dict(run.stage.ray_options)
        if returns == 2:
            options["num_returns"] = 2
        return self._tail.options(**self._placed(options)).remote(job, tables_ref, index)

    def _on_runner(self, run: StageRun, pools: Any) -> bool:
        """Whether this work waits on LLM pools and may run on a shared split runner (see
        :mod:`engine.runtime.split_runners`)."""
        if not pools or self.placement is not None or not runs_on_runner(run.stage.ray_options):
            return False
        if not self._runners:
            self._runners = runner_count()
        return True

    def barrier(self, run: StageRun, level: int) -> Any:
        """Start the actor holding barrier ``level``'s state for this run."""
        tail = run.stage.tails[level]
        options = self._placed({"num_cpus": 0})
        return self._actor.options(**options).remote(tail.barrier, tail.barrier_id, tail.pools, tail.params)

    def _placed(self, options: dict[str, Any]) -> dict[str, Any]:
        return options if self.placement is None else self.placement.apply(options)


class _Transient(Exception):
    """A task failed in a way that may pass: an OS or network error, not a problem with the data."""


def get_result(ref: Any) -> Any:
    """``ray.get`` that turns a task's failure into the headrace error it raised (or _Transient)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, Exception) else None
        if isinstance(cause, TransientError):
            raise _Transient(str(cause)) from None
        if isinstance(cause, HeadraceError):
            raise cause from None
        if isinstance(cause, OSError):
            raise _Transient(str(cause)) from None
        raise DataError(str(cause or exc).strip().splitlines()[-1]) from None
    except ray.exceptions.RayActorError as exc:  # a split runner died under it: Ray restarts it
        raise _Transient(f"the split's runner died: {exc}".splitlines()[0]) from None
    except _LOST as exc:  # its worker process or its whole node died, or its output went with them
        what = "its node died" if isinstance(exc, ray.exceptions.NodeDiedError) else "its worker died"
        raise _Transient(f"the split's task was lost ({what}): {exc}".splitlines()[0]) from None


_LOST = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.LocalRayletDiedError,
)
"""Ray's errors for a task that died with its process or node rather than raising: worth a retry."""


class _Driver:
    def __init__(self, scheduler: Scheduler, run: StageRun) -> None:
        self.s = scheduler
        self.run = run
        self.splits = list(reversed(run.splits))
        self.attempts: dict[int, int] = {}
        self.retry_at: list[tuple[float, Split]] = []
        self.running = 0  # this stage's head tasks in flight

    def room(self) -> bool:
        """Whether the stage may start another head task: its nodes' ``concurrency`` bounds them, as
        the scheduler's window bounds every stage's together."""
        limit = self.run.stage.concurrency
        return limit is None or self.running < limit

    def next_split(self) -> Split | None:
        """A split whose retry is due, else the next new one."""
        now = time.monotonic()
        for i, (at, split) in enumerate(self.retry_at):
            if at <= now:
                del self.retry_at[i]
                return split
        return self.splits.pop() if self.splits else None

    def next_retry_at(self) -> float:
        """When the earliest pending retry is due (inf when none)."""
        return min((at for at, _ in self.retry_at), default=math.inf)

    def failed(self, split: Split, ref: Any) -> Any:
        """``get_result(ref)``, or None after scheduling a retry of ``split`` for a transient error."""
        try:
            return get_result(ref)
        except _Transient as exc:
            policy = self.run.stage.job.retry
            attempt = self.attempts.get(split.index, 1)
            if attempt >= policy.max_attempts:
                raise DataError(f"{exc} (after {attempt} attempts)") from None
            self.attempts[split.index] = attempt + 1
            delay = policy.backoff_s(attempt)
            self.retry_at.append((time.monotonic() + delay, split))
            self.s.summary.retries += 1
            # the worker's message starts with the node that failed; else name the stage by its sink
            named = re.match(r"node '([^']+)'", str(exc))
            node = named.group(1) if named else self.run.stage.job.sink_id
            _log.warning(
                "split %d of %s failed (attempt %d of %d); retrying in %.2fs: %s",
                split.index,
                split.url,
                attempt,
                policy.max_attempts,
                delay,
                exc,
                extra={"node": node, "split": split.index, "attempt": attempt},
            )
            if self.s.on_retry is not None:
                self.s.on_retry(node, split, attempt, policy.max_attempts, delay, str(exc))
            return None

    def submit_head(self) -> bool:
        raise NotImplementedError

    def maybe_finish(self) -> None:
        return None

    def finished(self) -> bool:
        raise NotImplementedError


class _FusedDriver(_Driver):
    """Heads read, transform and write their own parts."""

    def submit_head(self) -> bool:
        if not self.room():
            return False
        split = self.next_split()
        if split is None:
            return False
        ref = self.s.head(self.run, split, emit=False)
        self.s.heads += 1
        self.running += 1
        self.s.watch(ref, partial(self._done, split=split))
        return True

    def _done(self, ref: Any, *, split: Split) -> None:
        self.s.heads -= 1
        self.running -= 1
        result: SplitResult | None = self.failed(split, ref)
        if result is None:
            return
        if result.part is not None:
            self.run.parts.append(result.part)
        self.s.on_result(self.run, result)

    def finished(self) -> bool:
        return not self.splits and not self.retry_at


class _BarrierDriver(_Driver):
    """Heads return batches; each barrier's actor takes them (in stream order when it must) and
    releases output to the tail tasks fused after it; the last tail writes the parts."""

    def __init__(self, scheduler: Scheduler, run: StageRun) -> None:
        super().__init__(scheduler, run)
        levels = len(run.stage.tails)
        self.actors = [scheduler.barrier(run, level) for level in range(levels)]
        self.ordered = [run.stage.tails[level].barrier.op == "limit" for level in range(levels)]
        self.producing = [0] * levels  # upstream tasks still to deliver into each barrier
        self.received: list[dict[int, Any]] = [{} for _ in range(levels)]  # seq -> tables ref
        self.next_seq = [0] * levels  # next seq to push, for ordered barriers
        self.tail_seq = [0] * levels  # seq of the next tail task at each level
        self.finishing = [False] * levels
        self.tails_in_flight = 0
        self.done = False

    def submit_head(self) -> bool:
        if not self.run.open or not self.room():
            return False
        split = self.next_split()
        if split is None:
            return False
        meta, tables = self.s.head(self.run, split, emit=True)
        self.s.heads += 1
        self.running += 1
        self.producing[0] += 1
        self.s.watch(meta, lambda ref: self._head_done(ref, split, tables))
        return True

    def _head_done(self, ref: Any, split: Split, tables: Any) -> None:
        self.s.heads -= 1
        self.running -= 1
        self.producing[0] -= 1
        result = self.failed(split, ref)
        if result is None:
            return
        self.s.on_result(self.run, result)
        self._deliver(0, split.index, tables)

    def _deliver(self, level: int, seq: int, tables: Any) -> None:
        if level == 0 and not self.run.open:
            return  # a satisfied limit needs nothing more
        self.s.backlog += 1
        self.received[level][seq] = tables
        if not self.ordered[level]:
            self._push(level, self.received[level].pop(seq))
            return
        while self.next_seq[level] in self.received[level]:
            self._push(level, self.received[level].pop(self.next_seq[level]))
            self.next_seq[level] += 1

    def _push(self, level: int, tables: Any) -> None:
        released = self.actors[level].push.remote(tables)
        self._to_tail(level, released, pushed=True)
        if self.ordered[level]:
            self.s.watch(self.actors[level].counts.remote(), lambda ref: self._check_open(ref, level))

    def _check_open(self, ref: Any, level: int) -> None:
        _, _, still_open = ray.get(ref)
        if not still_open and level == 0 and self.run.open:
            self.run.open = False
            self.splits.clear()
            self.s.backlog -= len(self.received[0])
            self.received[0].clear()

    def _to_tail(self, level: int, released: Any, *, pushed: bool) -> None:
        seq = self.tail_seq[level]
        self.tail_seq[level] += 1
        self.tails_in_flight += 1
        last = level == len(self.actors) - 1
        if last:
            self.s.watch(self.s.tail(self.run, level, released, seq), partial(self._tail_done, pushed=pushed))
        else:
            meta, tables = self.s.tail(self.run, level, released, seq)
            self.producing[level + 1] += 1
            self.s.watch(meta, lambda ref: self._middle_done(ref, level + 1, seq, tables, pushed))

    def _tail_done(self, ref: Any, *, pushed: bool) -> None:
        self.tails_in_flight -= 1
        self.s.backlog -= pushed
        result: SplitResult = get_result(ref)
        if result.part is not None:
            self.run.parts.append(result.part)
        self.s.on_result(self.run, result)

    def _middle_done(self, ref: Any, level: int, seq: int, tables: Any, pushed: bool) -> None:
        self.tails_in_flight -= 1
        self.s.backlog -= pushed
        self.producing[level] -= 1
        self.s.on_result(self.run, get_result(ref))
        self._deliver(level, seq, tables)

    def maybe_finish(self) -> None:
        for level in range(len(self.actors)):
            if self.finishing[level]:
                continue
            if level == 0:
                upstream_done = not self.splits and not self.retry_at and self.producing[0] == 0
            else:  # the finish of the level before has been handed on, and every tail of it is done
                upstream_done = self.finishing[level - 1] and self.producing[level] == 0
            if upstream_done and not self.received[level]:
                self.finishing[level] = True
                self._to_tail(level, self.actors[level].finish.remote(), pushed=False)
                self.s.watch(self.actors[level].counts.remote(), partial(self._count, level=level))
            else:
                return

    def _count(self, ref: Any, *, level: int) -> None:
        rows_in, rows_out, _ = ray.get(ref)
        stats = self.s.summary.nodes[self.run.stage.tails[level].barrier_id]
        stats.rows_in, stats.rows = rows_in, rows_out
        if level == len(self.actors) - 1:
            self.done = True

    def finished(self) -> bool:
        return self.done and self.tails_in_flight == 0
