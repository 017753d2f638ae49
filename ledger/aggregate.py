"""What the three aggregates share: identity, version, and events waiting to be saved.

An aggregate never changes its state directly. A command checks its
guards, builds an event, and `_trigger` applies it and queues it; loading
from the store applies the same events through `project`. So the state
after a command and the state after a reload cannot differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Self
from uuid import UUID

from ledger.events import Event
from ledger.invariants import invariant

_PLAN: ContextVar[UUID | None] = ContextVar("reconciliation_plan", default=None)


@contextmanager
def written_by_plan(plan_id: UUID) -> Iterator[None]:
    """Tag every event triggered inside the block with the reconciliation plan `plan_id`."""
    token = _PLAN.set(plan_id)
    try:
        yield
    finally:
        _PLAN.reset(token)


class Aggregate:
    """Base class for Account, Position and Intent."""

    def __init__(self, aggregate_id: UUID) -> None:
        self._id = aggregate_id
        self.version = 0
        self.damaged = False
        self._pending: list[Event] = []

    @property
    def id(self) -> UUID:
        return self._id

    @property
    def pending_count(self) -> int:
        """How many events wait to be saved."""
        return len(self._pending)

    def collect_events(self) -> list[Event]:
        """Hand over the events not yet saved (eventsourcing's save() calls this)."""
        events, self._pending = self._pending, []
        return events

    def _trigger(
        self,
        event_class: type[Event],
        *,
        recorded_at: datetime,
        venue_time: datetime | None = None,
        **fields: object,
    ) -> None:
        event = event_class(
            originator_id=self.id,
            originator_version=self.version + 1,
            recorded_at=recorded_at,
            venue_time=venue_time,
            plan_id=_PLAN.get(),
            **fields,
        )
        self._apply_checked(event)
        self._pending.append(event)

    def _apply_checked(self, event: Event) -> None:
        invariant(event.originator_id == self.id, "%r belongs to another aggregate", event)
        invariant(
            event.originator_version == self.version + 1,
            "%s v%d after v%d",
            type(event).__name__,
            event.originator_version,
            self.version,
        )
        try:
            self._apply(event)
        except BaseException:
            # Part of the event may have been applied: this instance can no
            # longer be trusted, only reloaded from the store.
            self.damaged = True
            raise
        self.version = event.originator_version
        self._check_invariants()

    def _apply(self, event: Event) -> None:
        raise NotImplementedError

    def _check_invariants(self) -> None:
        """Checked after every event, on the way in and on every reload."""

    @classmethod
    def _create(cls, event: Event) -> Self:
        """The aggregate from its first stored event (a creation event or a snapshot)."""
        aggregate = cls._blank(event.originator_id, version=0)
        aggregate._apply_checked(event)
        return aggregate

    @classmethod
    def project(cls, aggregate: Self | None, events: Iterable[Any]) -> Self | None:
        """Fold stored events (and at most one leading snapshot) into an aggregate.

        This is the projector function handed to eventsourcing's repository.
        """
        for event in events:
            if aggregate is None:
                aggregate = cls._create(event)
            else:
                aggregate._apply_checked(event)
        return aggregate

    @classmethod
    def _blank(cls, aggregate_id: UUID, *, version: int) -> Self:
        # Bypasses the subclass's creating constructor: the first event (or
        # snapshot) sets every attribute of the new instance.
        aggregate = cls.__new__(cls)
        Aggregate.__init__(aggregate, aggregate_id)
        aggregate.version = version
        return aggregate
