"""The single writer: every store write goes through here, in batches, one commit each.

Callers `await writer.execute(command)`. A command is a function of a
`UnitOfWork`: it loads aggregates, changes them, and returns a result. The
writer runs in one worker thread at a time; it drains every command
waiting (up to `batch_max`), applies them in order, saves every changed
aggregate in one transaction, and only then answers each caller. So
N concurrent operations cost one fsync, not N, and nothing but the writer
ever touches the aggregates it caches.

A command that refuses (a `LedgerError`) must do so before it changes
anything, which the aggregates guarantee: every guard runs before its
event is triggered. A command that broke this, or failed any other way,
may have left the cached aggregates half changed: its caller gets the
error, the cache is dropped, and the rest of the batch runs again on
aggregates fresh from the store, so one bad command never fails the
commands it happened to share a batch with. A save that fails fails the
whole batch: nothing is saved, and every caller gets the error.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

import anyio
import anyio.abc
import anyio.to_thread

from ledger.aggregate import Aggregate, written_by_plan
from ledger.errors import InvariantViolated, LedgerError
from ledger.intent import Intent
from ledger.ports import LedgerStore, Observer, Unobserved
from ledger.position import Position

A = TypeVar("A", bound=Aggregate)
T = TypeVar("T")

QUEUE_MAX = 4096
BATCH_MAX = 512

_BATCH_TIME: ContextVar[datetime | None] = ContextVar("batch_time", default=None)
"""The recorded time of the batch the writer's thread is applying, if any."""


def utc_now() -> datetime:
    return datetime.now(UTC)


class UnitOfWork:
    """One command's access to the aggregates: cached, loaded once, saved together."""

    def __init__(
        self,
        cache: dict[UUID, Aggregate],
        store: LedgerStore,
        fresh: dict[UUID, Aggregate | None] | None = None,
        created: dict[UUID, Aggregate] | None = None,
        read: dict[UUID, Aggregate | None] | None = None,
    ) -> None:
        self._cache = cache
        self._store = store
        self._fresh = {} if fresh is None else fresh
        self._read = {} if read is None else read
        """What earlier batches read of the aggregates other processes write."""
        self._created = {} if created is None else created
        """What the batch's earlier commands created: theirs to see, not yet stored."""
        self.new: dict[UUID, Aggregate] = {}
        self.loaded: dict[UUID, tuple[Aggregate, int]] = {}

    def get(self, aggregate_class: type[A], aggregate_id: UUID) -> A | None:
        aggregate = (
            self.new.get(aggregate_id)
            or self._created.get(aggregate_id)
            or self._cache.get(aggregate_id)
        )
        if aggregate is None:
            aggregate = self._store.get(aggregate_class, aggregate_id)
            if aggregate is None:
                return None
            self._cache[aggregate_id] = aggregate
        if not isinstance(aggregate, aggregate_class):
            raise InvariantViolated(f"{aggregate_id} is a {type(aggregate).__name__}")
        if aggregate_id not in self.new:
            self.loaded.setdefault(aggregate_id, (aggregate, aggregate.pending_count))
        return aggregate

    def current(self, aggregate_class: type[A], aggregate_id: UUID) -> A | None:
        """An aggregate other processes write (risk controls), as stored at this batch's start.

        Brought up to date from the store once per batch (reading only the
        events stored since the last batch read it), and never saved: the
        writer only reads these.
        """
        if aggregate_id not in self._fresh:
            known = self._read.get(aggregate_id)
            if known is not None and not isinstance(known, aggregate_class):
                raise InvariantViolated(f"{aggregate_id} is a {type(known).__name__}")
            self._fresh[aggregate_id] = self._read[aggregate_id] = self._store.refreshed(
                aggregate_class, aggregate_id, known
            )
        aggregate = self._fresh[aggregate_id]
        if aggregate is not None and not isinstance(aggregate, aggregate_class):
            raise InvariantViolated(f"{aggregate_id} is a {type(aggregate).__name__}")
        return aggregate

    def add(self, aggregate: Aggregate) -> None:
        """A new aggregate: saved with this command's batch, cached once saved."""
        self.new[aggregate.id] = aggregate

    def changed_anything(self) -> bool:
        """Whether this command left any trace: new aggregates, events, or damage."""
        return bool(self.new) or any(
            aggregate.pending_count != count or aggregate.damaged
            for aggregate, count in self.loaded.values()
        )


def tagged(command: Callable[[UnitOfWork], T], plan_id: UUID | None) -> Callable[[UnitOfWork], T]:
    """`command`, with every event it triggers tagged with the reconciliation plan `plan_id`."""
    if plan_id is None:
        return command

    def run_tagged(unit: UnitOfWork) -> T:
        with written_by_plan(plan_id):
            return command(unit)

    return run_tagged


@dataclass
class _Queued(Generic[T]):
    command: Callable[[UnitOfWork], T]
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass
class WriterStatistics:
    """Counts that show group commit working (observable, not timed)."""

    commands: int = 0
    transactions: int = 0
    batch_size_max: int = 0


class Writer:
    """The one writer of the store."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        queue_max: int = QUEUE_MAX,
        batch_max: int = BATCH_MAX,
        observer: Observer | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._clock = clock
        self._last_time: datetime | None = None
        self._observer = observer or Unobserved()
        self._batch_max = batch_max
        self._send, self._receive = anyio.create_memory_object_stream[_Queued[Any]](queue_max)
        self._limiter = anyio.CapacityLimiter(1)
        self._cache: dict[UUID, Aggregate] = {}
        self._read: dict[UUID, Aggregate | None] = {}
        self.statistics = WriterStatistics()

    def now(self) -> datetime:
        """The time to record an event at.

        Inside a batch, the batch's own: one time for every event of one
        transaction, never earlier than the last batch's, so that the log's
        recorded times rise with it and a cut at a time never splits a
        commit. Anywhere else, the clock's.
        """
        return _BATCH_TIME.get() or self._clock()

    async def execute(self, command: Callable[[UnitOfWork], T]) -> T:
        """Run `command` in the writer; return once its commit is durable."""
        queued: _Queued[T] = _Queued(command)
        await self._send.send(queued)
        await queued.done.wait()
        if queued.error is not None:
            raise queued.error
        result: T = queued.result
        return result

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve commands until `close()`; started with `task_group.start(writer.run)`."""
        task_status.started()
        async with self._receive:
            async for first in self._receive:
                batch = [first]
                while len(batch) < self._batch_max:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except anyio.WouldBlock:
                        break
                started = time.perf_counter()
                saved = await anyio.to_thread.run_sync(self._commit, batch, limiter=self._limiter)
                if saved:  # a batch that only read commits nothing
                    self._observer.commit(len(batch), time.perf_counter() - started)
                for queued in batch:
                    queued.done.set()

    def close(self) -> None:
        """Stop taking commands; the queue drains, then `run` returns."""
        self._send.close()

    def _commit(self, batch: list[_Queued[Any]]) -> bool:
        """Run `batch` and save what it changed in one transaction; whether anything was saved."""
        moment = self._clock()
        if self._last_time is not None and moment < self._last_time:
            moment = self._last_time  # the clock stepped back: the log's times never do
        self._last_time = moment
        token = _BATCH_TIME.set(moment)
        try:
            return self._commit_at(batch)
        finally:
            _BATCH_TIME.reset(token)

    def _commit_at(self, batch: list[_Queued[Any]]) -> bool:
        running = list(batch)
        while True:
            try:
                units = self._run_commands(running)
            except _CommandFailed as failed:
                # Its aggregates may be half changed: drop them all, and run
                # the others again without it, on state fresh from the store.
                self._cache.clear()
                self._read.clear()
                failed.queued.error = failed.error
                running.remove(failed.queued)
                continue
            break
        try:
            changed = _changed_aggregates(units)
            if changed:
                self._store.save(*changed)
                self.statistics.transactions += 1
        except BaseException as error:  # noqa: BLE001 - every caller must hear of it
            # Nothing was saved: what the cache holds may be ahead of the store.
            self._cache.clear()
            self._read.clear()
            for queued in running:
                if queued.error is None:
                    queued.error = _own(error)
            return False
        self.statistics.commands += len(batch)
        self.statistics.batch_size_max = max(self.statistics.batch_size_max, len(batch))
        for unit in units:
            for aggregate in unit.new.values():
                self._cache[aggregate.id] = aggregate
        self._forget_finished()
        return bool(changed)

    def _run_commands(self, batch: list[_Queued[Any]]) -> list[UnitOfWork]:
        """Run each command of `batch` in order; the units of those that did not refuse."""
        units: list[UnitOfWork] = []
        fresh: dict[UUID, Aggregate | None] = {}
        created: dict[UUID, Aggregate] = {}
        for queued in batch:
            queued.result, queued.error = None, None
            unit = UnitOfWork(self._cache, self._store, fresh, created, self._read)
            try:
                queued.result = queued.command(unit)
            except LedgerError as error:
                if unit.changed_anything():
                    broken = InvariantViolated(f"a refused command changed state: {error}")
                    broken.__cause__ = error
                    raise _CommandFailed(queued, broken) from error
                queued.error = error
                continue
            except Exception as error:
                raise _CommandFailed(queued, error) from error
            units.append(unit)
            created.update(unit.new)
        return units

    def _forget_finished(self) -> None:
        # Terminal intents and closed positions never change again: keeping
        # them would let the cache grow with history.
        finished = [
            aggregate_id
            for aggregate_id, aggregate in self._cache.items()
            if (isinstance(aggregate, Intent) and aggregate.is_terminal)
            or (isinstance(aggregate, Position) and not aggregate.is_open)
        ]
        for aggregate_id in finished:
            del self._cache[aggregate_id]


class _CommandFailed(Exception):  # noqa: N818 - internal signal, not an error of the ledger
    """One command of a batch failed other than by refusing: `error` is for its caller."""

    def __init__(self, queued: _Queued[Any], error: BaseException) -> None:
        super().__init__(str(error))
        self.queued = queued
        self.error = error


def _own(error: BaseException) -> BaseException:
    """A copy of `error` for one caller of a failed batch, caused by it.

    Raising the one object in every caller would add each caller's frames
    to its one traceback, which would grow with every caller.
    """
    try:
        mine = copy.copy(error)
    except Exception:  # noqa: BLE001 - an error that cannot be copied is raised as it is
        return error
    if type(mine) is not type(error) or mine.args != error.args:  # pragma: no cover - odd class
        return error
    mine.__cause__ = error
    return mine


def _changed_aggregates(units: list[UnitOfWork]) -> list[Aggregate]:
    changed: dict[UUID, Aggregate] = {}
    for unit in units:
        for aggregate in [*unit.new.values(), *(a for a, _ in unit.loaded.values())]:
            if aggregate.pending_count:
                changed[aggregate.id] = aggregate
    return list(changed.values())
