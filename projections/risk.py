"""The daily risk view: per account and UTC day, what risk limits count.

A day's row starts with the first event of that day that moves the
account's money or its open positions (the day of the event's
`recorded_at`, in UTC):

- `trades_opened`: positions opened that day (adopted ones too);
- `realised_pnl`: the P&L closes realised that day; `fees` charged that
  day; `net_pnl` = realised_pnl - fees;
- `peak_equity`: the highest total the account had that day, counting
  the total it started the day with (equity here is the account's total,
  without unrealised P&L, which the ledger does not price);
- `open_positions`: positions open after the day's last event so far.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

import msgspec

from ledger.account import AccountOpened, Deposited, FeeCharged, PnlRealised, Withdrawn
from ledger.errors import InvariantViolated
from ledger.events import Event
from ledger.position import PositionClosed, PositionOpened
from projections.amounts import minus, plus, utc_day, zero
from projections.database import Database
from projections.rows import Table
from projections.view import View


class DailyRiskRow(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    day: str
    currency: str
    trades_opened: int
    realised_pnl: Decimal
    fees: Decimal
    net_pnl: Decimal
    peak_equity: Decimal
    open_positions: int
    account_id: UUID
    updated_at: datetime


class RiskAccountRow(msgspec.Struct, frozen=True, kw_only=True):
    """What the view needs to know of an account between days."""

    account_id: UUID
    name: str
    currency: str
    total: Decimal
    open_positions: int


class OpenPositionRow(msgspec.Struct, frozen=True, kw_only=True):
    """An open position's account: a close names only the position."""

    position_id: UUID
    account_id: UUID


DAILY = Table("view_risk_daily", DailyRiskRow, ("account_id", "day"))
ACCOUNTS = Table("view_risk_accounts", RiskAccountRow, ("account_id",))
OPEN = Table("view_risk_open_positions", OpenPositionRow, ("position_id",))


class RiskView(View):
    """Daily counters per account: trades opened, realised P&L, peak equity, open positions."""

    name = "risk"
    tables = (DAILY, ACCOUNTS, OPEN)
    handles = frozenset(
        {
            AccountOpened,
            Deposited,
            Withdrawn,
            FeeCharged,
            PnlRealised,
            PositionOpened,
            PositionClosed,
        }
    )

    def __init__(self, database: Database, *, generation: str = "", complete: bool = False) -> None:
        super().__init__(database, generation=generation, complete=complete)
        self.daily = self.rows(DAILY)
        self.accounts = self.rows(ACCOUNTS)
        self.open = self.rows(OPEN)

    def apply(self, event: Event) -> None:
        if isinstance(event, AccountOpened):
            self.accounts.put(
                RiskAccountRow(
                    account_id=event.originator_id,
                    name=event.name,
                    currency=event.currency,
                    total=zero(event.currency),
                    open_positions=0,
                )
            )
            return
        account_id = self._account_of(event)
        before = self.accounts.get(account_id)
        if before is None:
            raise InvariantViolated(f"{event.stored_name} of an account never opened: {event}")
        after = self._account_after(before, event)
        self.accounts.put(after)
        day = utc_day(event.recorded_at)
        row = self.daily.get(account_id, day) or DailyRiskRow(
            account=before.name,
            day=day,
            currency=before.currency,
            trades_opened=0,
            realised_pnl=zero(before.currency),
            fees=zero(before.currency),
            net_pnl=zero(before.currency),
            peak_equity=before.total,
            open_positions=before.open_positions,
            account_id=account_id,
            updated_at=event.recorded_at,
        )
        pnl = event.amount.amount if isinstance(event, PnlRealised) else zero(before.currency)
        fee = event.amount.amount if isinstance(event, FeeCharged) else zero(before.currency)
        realised = plus(row.realised_pnl, pnl)
        fees = plus(row.fees, fee)
        self.daily.put(
            msgspec.structs.replace(
                row,
                trades_opened=row.trades_opened + (1 if isinstance(event, PositionOpened) else 0),
                realised_pnl=realised,
                fees=fees,
                net_pnl=minus(realised, fees),
                peak_equity=max(row.peak_equity, after.total),
                open_positions=after.open_positions,
                updated_at=event.recorded_at,
            )
        )

    def _account_of(self, event: Event) -> UUID:
        if isinstance(event, PositionOpened):
            self.open.put(
                OpenPositionRow(position_id=event.originator_id, account_id=event.account_id)
            )
            return event.account_id
        if isinstance(event, PositionClosed):
            held = self.open.get(event.originator_id)
            if held is None:
                raise InvariantViolated(f"a close of a position never opened: {event}")
            self.open.delete(event.originator_id)
            return held.account_id
        return event.originator_id

    @staticmethod
    def _account_after(account: RiskAccountRow, event: Event) -> RiskAccountRow:
        replace = msgspec.structs.replace
        match event:
            case Deposited():
                return replace(account, total=plus(account.total, event.amount.amount))
            case PnlRealised():
                return replace(account, total=plus(account.total, event.amount.amount))
            case Withdrawn() | FeeCharged():
                return replace(account, total=minus(account.total, event.amount.amount))
            case PositionOpened():
                return replace(account, open_positions=account.open_positions + 1)
            case PositionClosed():
                return replace(account, open_positions=account.open_positions - 1)
        raise InvariantViolated(f"the risk view cannot apply {event!r}")
