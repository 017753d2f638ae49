"""The circuit breaker in front of a broker's writes.

After `failures_max` writes in a row whose outcome stayed unknown (a
timeout or an UNKNOWN answer, and no order found by the reads that
follow), the breaker opens: new writes are refused
at once instead of piling more unknown outcomes onto a broker that is
not answering. A read the broker answers (a probe, or a reconciliation
pass) closes it again. Opening and closing are events, so an engine that
restarts finds the breaker as it was left; the count of failures in a
row is the running engine's own observation (see `Engine`), not state.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Self
from uuid import NAMESPACE_URL, UUID, uuid5

from ledger.aggregate import Aggregate
from ledger.errors import IllegalTransition
from ledger.events import Event

BREAKER_NAMESPACE = uuid5(NAMESPACE_URL, "ledger:circuit-breaker")
FAILURES_MAX_DEFAULT = 3


def breaker_id(venue: str) -> UUID:
    return uuid5(BREAKER_NAMESPACE, venue)


class BreakerOpened(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "breaker.opened"
    venue: str
    failures: int
    cause: str


class BreakerClosed(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "breaker.closed"
    venue: str
    probe: str
    """The read that showed the broker answering again."""


BREAKER_EVENTS: tuple[type[Event], ...] = (BreakerOpened, BreakerClosed)


class CircuitBreaker(Aggregate):
    """Whether writes to one venue are refused."""

    venue: str
    is_open: bool
    cause: str | None
    opened_at: datetime | None

    @classmethod
    def start(cls, venue: str) -> Self:
        breaker = cls._blank(breaker_id(venue), version=0)
        breaker.venue = venue
        breaker.is_open = False
        breaker.cause = None
        breaker.opened_at = None
        return breaker

    def open(self, failures: int, cause: str, *, recorded_at: datetime) -> None:
        if self.is_open:
            raise IllegalTransition("the circuit breaker is already open")
        self._trigger(
            BreakerOpened, recorded_at=recorded_at, venue=self.venue, failures=failures, cause=cause
        )

    def close(self, probe: str, *, recorded_at: datetime) -> None:
        if not self.is_open:
            raise IllegalTransition("the circuit breaker is not open")
        self._trigger(BreakerClosed, recorded_at=recorded_at, venue=self.venue, probe=probe)

    def _apply(self, event: Event) -> None:
        match event:
            case BreakerOpened():
                self.is_open = True
                self.cause = event.cause
                self.opened_at = event.recorded_at
            case BreakerClosed():
                self.is_open = False
                self.cause = None
                self.opened_at = None
            case _:
                raise IllegalTransition(f"a circuit breaker cannot apply {type(event).__name__}")

    @classmethod
    def _create(cls, event: Event) -> Self:
        if not isinstance(event, BreakerOpened | BreakerClosed):
            raise IllegalTransition(f"a circuit breaker cannot start with {event!r}")
        breaker = cls.start(event.venue)
        breaker._apply_checked(event)
        return breaker
