"""An account's statement: every change of its balance, with the running balance after it.

Read from the account's own stream (not the whole log) and folded by the
Account aggregate: each line shows how much the change moved the total
and the money available, the total, reserved, committed and available
money after it, and what is behind it: the intent, the position, and
the broker's reference (the order the intent's evidence names, else the
position's reference at the broker).

The window (`start`, `until`) is by recorded time, the ledger's clock. A
statement with a `start` opens with a line carrying the balance folded
from every change before it, so its running balances are the account's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from uuid import UUID

import msgspec

from adapters.store import Store
from audit.reading import stream
from audit.records import intent_of, position_of
from audit.state import folded
from ledger.account import Account, FeeCharged, account_id
from ledger.errors import NotFound
from ledger.events import Event
from ledger.intent import Intent
from ledger.position import Position
from projections.amounts import minus, zero
from projections.view import Numbered

OPENING = "opening"
"""The type of the line that carries the balance from before the window."""
LOOKUPS_CACHED = 256
"""Intents and positions remembered for the lines that follow: an intent's changes are close."""


class Statement(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    account_id: UUID
    currency: str


class Line(msgspec.Struct, frozen=True, kw_only=True):
    sequence: int
    """The event's place in the log; on the opening line, the last change before the window."""
    recorded_at: datetime
    """When the change was recorded; on the opening line, the start of the window."""
    venue_time: datetime | None
    type: str
    """The event's stored name (e.g. account.deposited), or "opening"."""
    total_change: Decimal
    available_change: Decimal
    total: Decimal
    reserved: Decimal
    committed: Decimal
    available: Decimal
    intent_id: UUID | None
    position_id: UUID | None
    broker_ref: str | None
    reason: str | None
    """What a fee was charged for."""


def statement(
    store: Store, name: str, *, start: datetime | None = None, until: datetime | None = None
) -> tuple[Statement, Iterator[Line]]:
    """The account called `name`, and its lines, read as they are iterated."""
    events = stream(store, account_id(name))
    first = next(events, None)
    if first is None:
        raise NotFound(f"no account {name!r}")
    sequence, opened = first
    account = folded(Account, None, opened)
    heading = Statement(account=account.name, account_id=account.id, currency=account.currency)
    return heading, _lines(account, sequence, events, _broker_refs(store), start, until)


def _lines(
    account: Account,
    sequence: int,
    events: Iterator[Numbered],
    broker_ref: Callable[[Event], str | None],
    start: datetime | None,
    until: datetime | None,
) -> Iterator[Line]:
    before_window = start is not None
    for number, event in events:
        if until is not None and event.recorded_at > until:
            break
        if before_window and start is not None and event.recorded_at >= start:
            yield _opening(account, sequence, start)
            before_window = False
        total, _, _, available = _figures(account)
        account = folded(Account, account, event)
        sequence = number
        if not before_window:
            after = _figures(account)
            yield Line(
                sequence=number,
                recorded_at=event.recorded_at,
                venue_time=event.venue_time,
                type=event.stored_name,
                total_change=minus(after[0], total),
                available_change=minus(after[3], available),
                total=after[0],
                reserved=after[1],
                committed=after[2],
                available=after[3],
                intent_id=intent_of(event),
                position_id=position_of(event),
                broker_ref=broker_ref(event),
                reason=event.reason if isinstance(event, FeeCharged) else None,
            )
    if before_window and start is not None:
        yield _opening(account, sequence, start)


def _figures(account: Account) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """Total, reserved, committed and available, as the Account defines them.

    In Decimals: a Money per sum, for every line of a long statement, would
    cost more than reading it.
    """
    nothing = zero(account.currency)
    reserved = sum((held.amount for held in account.reservations.values()), nothing)
    committed = sum((held.amount for held in account.commitments.values()), nothing)
    total = account.total.amount
    return total, reserved, committed, minus(minus(total, reserved), committed)


def _opening(account: Account, sequence: int, start: datetime) -> Line:
    total, reserved, committed, available = _figures(account)
    nothing = zero(account.currency)
    return Line(
        sequence=sequence,
        recorded_at=start,
        venue_time=None,
        type=OPENING,
        total_change=nothing,
        available_change=nothing,
        total=total,
        reserved=reserved,
        committed=committed,
        available=available,
        intent_id=None,
        position_id=None,
        broker_ref=None,
        reason=None,
    )


def _broker_refs(store: Store) -> Callable[[Event], str | None]:
    """The broker's reference behind an account event: its intent's, else its position's."""

    @lru_cache(maxsize=LOOKUPS_CACHED)
    def of_intent(intent_id: UUID) -> str | None:
        intent = store.get(Intent, intent_id)
        return None if intent is None else intent.broker_ref

    @lru_cache(maxsize=LOOKUPS_CACHED)
    def of_position(position_id: UUID) -> str | None:
        held = store.get(Position, position_id)
        return None if held is None else held.broker_ref

    def broker_ref(event: Event) -> str | None:
        intent, position = intent_of(event), position_of(event)
        found = None if intent is None else of_intent(intent)
        if found is None and position is not None:
            found = of_position(position)
        return found

    return broker_ref
