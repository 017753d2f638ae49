"""Reading the views, as they stand: call `catch_up` first for what was committed up to now."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from adapters.store import Store
from projections.balances import BALANCES, BalanceRow
from projections.database import Database, values
from projections.pending import PENDING, PendingIntentRow
from projections.positions import POSITIONS, PositionRow
from projections.risk import DAILY, DailyRiskRow
from projections.rows import Table

R = TypeVar("R", bound=msgspec.Struct)


def _rows(store: Store, table: Table[R], where: str = "", params: tuple[Any, ...] = ()) -> list[R]:
    database = Database(store)
    names = ", ".join(column.name for column in table.columns)
    statement = f"SELECT {names} FROM {database.table(table.name)} {where}"  # noqa: S608
    with database.snapshot() as cursor:
        cursor.execute(database.sql(statement), params)
        stored = cursor.fetchall()
    return [table.decode(values(row)) for row in stored]


def positions(
    store: Store, *, account: str | None = None, include_closed: bool = False
) -> list[PositionRow]:
    """Open positions (all, with `include_closed`), optionally of one account, oldest first."""
    conditions, params = [], []
    if not include_closed:
        conditions.append("status = ?")
        params.append("open")
    if account is not None:
        conditions.append("account = ?")
        params.append(account)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = _rows(store, POSITIONS, where, tuple(params))
    return sorted(rows, key=lambda row: (row.opened_at, str(row.position_id)))


def balances(store: Store, *, account: str | None = None) -> list[BalanceRow]:
    """Every account's balance (or one account's), by account name."""
    where, params = ("WHERE account = ?", (account,)) if account is not None else ("", ())
    return sorted(_rows(store, BALANCES, where, params), key=lambda row: row.account)


def pending_intents(store: Store) -> list[PendingIntentRow]:
    """Intents in flight, oldest first."""
    rows = _rows(store, PENDING)
    return sorted(rows, key=lambda row: (row.recorded_at, str(row.intent_id)))


def daily_risk(store: Store, *, account: str | None = None) -> list[DailyRiskRow]:
    """Daily risk counters, by account and day."""
    where, params = ("WHERE account = ?", (account,)) if account is not None else ("", ())
    return sorted(_rows(store, DAILY, where, params), key=lambda row: (row.account, row.day))
