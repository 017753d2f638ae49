"""The balances view: per account, what the Account aggregate holds, by the same rules.

total = deposits - withdrawals + realised P&L - fees; reserved = the open
reservations; committed = the open commitments; available = total -
reserved - committed. Each reservation and commitment is kept as a row,
as the aggregate keeps them by key, so releasing or settling one removes
exactly what was held, and a commitment that shrinks to zero is gone.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

import msgspec

from ledger.account import (
    AccountOpened,
    Deposited,
    FeeCharged,
    FundsCommitted,
    FundsReserved,
    FundsSettled,
    PnlRealised,
    ReservationReleased,
    Withdrawn,
)
from ledger.errors import InvariantViolated
from ledger.events import Event
from projections.amounts import minus, plus, zero
from projections.database import Database
from projections.rows import Table
from projections.view import View

RESERVATION = "reservation"
COMMITMENT = "commitment"


class BalanceRow(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    currency: str
    total: Decimal
    reserved: Decimal
    committed: Decimal
    available: Decimal
    realised_pnl: Decimal
    fees: Decimal
    account_id: UUID
    updated_at: datetime


class HoldRow(msgspec.Struct, frozen=True, kw_only=True):
    """Money held for an intent (a reservation) or a position (a commitment)."""

    account_id: UUID
    kind: str
    held_for: UUID
    amount: Decimal


BALANCES = Table("view_balances", BalanceRow, ("account_id",))
HOLDS = Table("view_balance_holds", HoldRow, ("account_id", "kind", "held_for"))


class BalancesView(View):
    """Total, reserved, committed and available money of every account."""

    name = "balances"
    tables = (BALANCES, HOLDS)
    handles = frozenset(
        {
            AccountOpened,
            Deposited,
            Withdrawn,
            FundsReserved,
            ReservationReleased,
            FundsSettled,
            FundsCommitted,
            FeeCharged,
            PnlRealised,
        }
    )

    def __init__(self, database: Database, *, generation: str = "", complete: bool = False) -> None:
        super().__init__(database, generation=generation, complete=complete)
        self.balances = self.rows(BALANCES)
        self.holds = self.rows(HOLDS)

    def apply(self, event: Event) -> None:
        if isinstance(event, AccountOpened):
            self.balances.put(_opened(event))
            return
        row = self.balances.get(event.originator_id)
        if row is None:
            raise InvariantViolated(f"{event.stored_name} of an account never opened: {event}")
        row = self._changed(msgspec.structs.replace(row, updated_at=event.recorded_at), event)
        available = minus(minus(row.total, row.reserved), row.committed)
        self.balances.put(msgspec.structs.replace(row, available=available))

    def _changed(self, row: BalanceRow, event: Event) -> BalanceRow:  # noqa: PLR0911 - one case per event
        replace = msgspec.structs.replace
        match event:
            case Deposited():
                return replace(row, total=plus(row.total, event.amount.amount))
            case Withdrawn():
                return replace(row, total=minus(row.total, event.amount.amount))
            case FeeCharged():
                amount = event.amount.amount
                return replace(row, total=minus(row.total, amount), fees=plus(row.fees, amount))
            case FundsReserved():
                # The aggregate sets the reservation (it refuses a second one for an intent).
                if self.holds.get(row.account_id, RESERVATION, event.intent_id) is not None:
                    row = self._release(row, event.intent_id)
                return self._hold(row, RESERVATION, event.intent_id, event.amount.amount)
            case ReservationReleased():
                return self._release(row, event.intent_id)
            case FundsSettled():
                row = self._release(row, event.intent_id)
                return self._hold(row, COMMITMENT, event.position_id, event.amount.amount)
            case FundsCommitted():
                return self._hold(row, COMMITMENT, event.position_id, event.amount.amount)
            case PnlRealised():
                amount = event.amount.amount
                row = replace(
                    row, total=plus(row.total, amount), realised_pnl=plus(row.realised_pnl, amount)
                )
                return self._hold(row, COMMITMENT, event.position_id, -event.released.amount)
        raise InvariantViolated(f"the balances view cannot apply {event!r}")

    def _hold(self, row: BalanceRow, kind: str, held_for: UUID, amount: Decimal) -> BalanceRow:
        """Add `amount` (negative: take it away) to what is held for `held_for`."""
        held = self.holds.get(row.account_id, kind, held_for)
        before = zero(row.currency) if held is None else held.amount
        remaining = plus(before, amount)
        if remaining.is_zero():
            self.holds.delete(row.account_id, kind, held_for)
        else:
            self.holds.put(
                HoldRow(account_id=row.account_id, kind=kind, held_for=held_for, amount=remaining)
            )
        return _with_sum(row, kind, amount)

    def _release(self, row: BalanceRow, intent_id: UUID) -> BalanceRow:
        """Remove the reservation held for `intent_id`, whatever its amount."""
        held = self.holds.get(row.account_id, RESERVATION, intent_id)
        if held is None:
            raise InvariantViolated(f"account {row.account} holds no reservation for {intent_id}")
        self.holds.delete(row.account_id, RESERVATION, intent_id)
        return _with_sum(row, RESERVATION, -held.amount)


def _with_sum(row: BalanceRow, kind: str, amount: Decimal) -> BalanceRow:
    if kind == RESERVATION:
        return msgspec.structs.replace(row, reserved=plus(row.reserved, amount))
    return msgspec.structs.replace(row, committed=plus(row.committed, amount))


def _opened(event: AccountOpened) -> BalanceRow:
    nothing = zero(event.currency)
    return BalanceRow(
        account=event.name,
        currency=event.currency,
        total=nothing,
        reserved=nothing,
        committed=nothing,
        available=nothing,
        realised_pnl=nothing,
        fees=nothing,
        account_id=event.originator_id,
        updated_at=event.recorded_at,
    )
