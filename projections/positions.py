"""The positions view: one row per position, open or closed, as the Position aggregate has it."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

import msgspec

from ledger.account import AccountOpened
from ledger.errors import InvariantViolated
from ledger.events import Event
from ledger.position import (
    PartiallyClosed,
    PositionClosed,
    PositionFlagCleared,
    PositionFlagged,
    PositionIncreased,
    PositionOpened,
    PositionStatus,
    StopLossChanged,
    TakeProfitChanged,
)
from projections.amounts import minus, plus, zero
from projections.database import Database
from projections.names import name_of, names_table, remember
from projections.rows import Table
from projections.view import View


class PositionRow(msgspec.Struct, frozen=True, kw_only=True):
    position_id: UUID
    account: str
    account_id: UUID
    symbol: str
    side: str
    quantity: Decimal
    """What is still open."""
    entry_price: Decimal
    stop_loss: Decimal | None
    take_profit: Decimal | None
    status: str
    broker_ref: str | None
    client_id: str | None
    provenance: str
    intent_id: UUID | None
    flags: list[str]
    """The raised flags, sorted."""
    flag_details: dict[str, str]
    """What was found, by flag."""
    currency: str
    realised_pnl: Decimal
    opened_at: datetime
    """When the broker filled the opening order, or else when the ledger recorded it."""
    closed_at: datetime | None
    close_reason: str | None


POSITIONS = Table("view_positions", PositionRow, ("position_id",))
NAMES = names_table(POSITIONS.name)


class PositionsView(View):
    """Open and closed positions, with their protection, provenance and flags."""

    name = "positions"
    tables = (POSITIONS, NAMES)
    handles = frozenset(
        {
            AccountOpened,
            PositionOpened,
            PositionIncreased,
            StopLossChanged,
            TakeProfitChanged,
            PartiallyClosed,
            PositionClosed,
            PositionFlagged,
            PositionFlagCleared,
        }
    )

    def __init__(self, database: Database, *, generation: str = "", complete: bool = False) -> None:
        super().__init__(database, generation=generation, complete=complete)
        self.positions = self.rows(POSITIONS)
        self.names = self.rows(NAMES)

    def apply(self, event: Event) -> None:
        if isinstance(event, AccountOpened):
            remember(self.names, event)
        elif isinstance(event, PositionOpened):
            self.positions.put(self._opened(event))
        else:
            row = self.positions.get(event.originator_id)
            if row is None:
                raise InvariantViolated(f"{event.stored_name} of a position never opened: {event}")
            self.positions.put(_changed(row, event))

    def _opened(self, event: PositionOpened) -> PositionRow:
        currency = event.instrument.quote_currency
        return PositionRow(
            position_id=event.originator_id,
            account=name_of(self.names, event.account_id),
            account_id=event.account_id,
            symbol=event.instrument.symbol,
            side=event.side.value,
            quantity=event.quantity,
            entry_price=event.entry_price,
            stop_loss=event.stop_loss,
            take_profit=event.take_profit,
            status=PositionStatus.OPEN.value,
            broker_ref=event.broker_ref,
            client_id=event.client_id,
            provenance=event.provenance.value,
            intent_id=event.intent_id,
            flags=[],
            flag_details={},
            currency=currency,
            realised_pnl=zero(currency),
            opened_at=event.venue_time or event.recorded_at,
            closed_at=None,
            close_reason=None,
        )


def _changed(row: PositionRow, event: Event) -> PositionRow:  # noqa: PLR0911 - one case per event
    replace = msgspec.structs.replace
    match event:
        case PositionIncreased():
            quantity = plus(row.quantity, event.quantity)
            return replace(row, quantity=quantity, entry_price=event.entry_price)
        case StopLossChanged():
            return replace(row, stop_loss=event.new)
        case TakeProfitChanged():
            return replace(row, take_profit=event.new)
        case PositionClosed():
            return replace(
                row,
                quantity=minus(row.quantity, event.quantity),
                realised_pnl=plus(row.realised_pnl, event.pnl.amount),
                status=PositionStatus.CLOSED.value,
                closed_at=event.venue_time or event.recorded_at,
                close_reason=event.reason.value,
            )
        case PartiallyClosed():
            return replace(
                row,
                quantity=minus(row.quantity, event.quantity),
                realised_pnl=plus(row.realised_pnl, event.pnl.amount),
            )
        case PositionFlagged():
            details = {**row.flag_details, event.flag.value: event.detail}
            return replace(row, flags=sorted(details), flag_details=details)
        case PositionFlagCleared():
            details = {k: v for k, v in row.flag_details.items() if k != event.flag.value}
            return replace(row, flags=sorted(details), flag_details=details)
    raise InvariantViolated(f"the positions view cannot apply {event!r}")
