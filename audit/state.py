"""Balances and open positions as of a point in the log, folded in memory by the aggregates.

Each event is applied by its Account or Position through the aggregate's
own rules (the ones loading it from the store uses), not by the views'
code: a state folded here and a view read at the same point are two
independent accounts of the log, and must agree. They come out in the
views' row shapes so that they compare field by field.

Memory grows with the number of accounts and of open positions, never
with the length of the history: a closed position is dropped, since
nothing happens to a closed position; an event after its close is a
broken log, refused like any event its aggregate would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TypeVar
from uuid import UUID

import msgspec

from audit.records import KIND_OF, Kind
from ledger.account import Account, FeeCharged, PnlRealised
from ledger.aggregate import Aggregate
from ledger.errors import InvariantViolated
from ledger.events import Event
from ledger.money import Money
from ledger.position import Position, PositionOpened
from projections.balances import BalanceRow
from projections.positions import PositionRow

A = TypeVar("A", bound=Aggregate)


class State(msgspec.Struct, frozen=True, kw_only=True):
    sequence: int
    """The last event folded in (0: none)."""
    recorded_at: datetime | None
    """When that event was recorded."""
    balances: list[BalanceRow]
    """By account name."""
    positions: list[PositionRow]
    """Open positions, oldest first."""


@dataclass
class _Tally:
    """An account, and the sums the balances view shows that the aggregate does not keep."""

    account: Account
    realised_pnl: Money
    fees: Money


@dataclass
class _Open:
    position: Position
    opened_at: datetime
    """When the broker filled the opening order, else when the ledger recorded it."""


def folded(cls: type[A], aggregate: A | None, event: Event) -> A:
    """`aggregate` (None: a new one) with `event` applied by the aggregate's own rules."""
    result = cls.project(aggregate, (event,))
    if result is None:  # pragma: no cover - project returns what it was given or built
        raise InvariantViolated(f"{event.stored_name} folded into nothing")
    return result


class Fold:
    """The ledger's balances and open positions, one event at a time, in log order."""

    def __init__(self) -> None:
        self.sequence = 0
        self.recorded_at: datetime | None = None
        self._accounts: dict[UUID, _Tally] = {}
        self._open: dict[UUID, _Open] = {}

    def apply(self, sequence: int, event: Event) -> None:
        kind = KIND_OF[event.stored_name]
        if kind is Kind.ACCOUNT:
            self._account(event)
        elif kind is Kind.POSITION:
            self._position(event)
        self.sequence = sequence
        self.recorded_at = event.recorded_at

    def _account(self, event: Event) -> None:
        tally = self._accounts.get(event.originator_id)
        if tally is None:
            account = folded(Account, None, event)
            nothing = Money.zero(account.currency)
            self._accounts[account.id] = _Tally(account, nothing, nothing)
            return
        tally.account = folded(Account, tally.account, event)
        if isinstance(event, PnlRealised):
            tally.realised_pnl += event.amount
        elif isinstance(event, FeeCharged):
            tally.fees += event.amount

    def _position(self, event: Event) -> None:
        held = self._open.get(event.originator_id)
        if held is None:
            if isinstance(event, PositionOpened):
                opened_at = event.venue_time or event.recorded_at
                self._open[event.originator_id] = _Open(folded(Position, None, event), opened_at)
            else:
                raise InvariantViolated(f"{event.stored_name} of no open position: {event}")
            return
        held.position = folded(Position, held.position, event)
        if not held.position.is_open:
            del self._open[event.originator_id]

    def state(self) -> State:
        balances = sorted(
            (_balance(tally) for tally in self._accounts.values()), key=lambda row: row.account
        )
        positions = sorted(
            (self._position_row(held) for held in self._open.values()),
            key=lambda row: (row.opened_at, str(row.position_id)),
        )
        return State(
            sequence=self.sequence,
            recorded_at=self.recorded_at,
            balances=balances,
            positions=positions,
        )

    def _position_row(self, held: _Open) -> PositionRow:
        position = held.position
        tally = self._accounts.get(position.account_id)
        details = {flag.value: detail for flag, detail in position.flags.items()}
        return PositionRow(
            position_id=position.id,
            # As the views show an account the log never opened: by its id.
            account=str(position.account_id) if tally is None else tally.account.name,
            account_id=position.account_id,
            symbol=position.instrument.symbol,
            side=position.side.value,
            quantity=Decimal(position.quantity),
            entry_price=Decimal(position.entry_price),
            stop_loss=position.stop_loss,
            take_profit=position.take_profit,
            status=position.status.value,
            broker_ref=position.broker_ref,
            client_id=position.client_id,
            provenance=position.provenance.value,
            intent_id=position.intent_id,
            flags=sorted(details),
            flag_details=details,
            currency=position.instrument.quote_currency,
            realised_pnl=position.realised_pnl.amount,
            opened_at=held.opened_at,
            closed_at=None,
            close_reason=None,
        )


def _balance(tally: _Tally) -> BalanceRow:
    account = tally.account
    return BalanceRow(
        account=account.name,
        currency=account.currency,
        total=account.total.amount,
        reserved=account.reserved.amount,
        committed=account.committed.amount,
        available=account.available.amount,
        realised_pnl=tally.realised_pnl.amount,
        fees=tally.fees.amount,
        account_id=account.id,
        updated_at=account.modified_at,
    )
