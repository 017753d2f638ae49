"""The paper broker's tables, and the conversion of their rows to port types.

Decimals are stored as text, exactly; times as the broker's step number
(its clock is `market.clock(step)`), so the file holds no float and no
wall-clock time, and the same seed and calls write the same bytes.
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal

from adapters.paper.market import clock
from ledger.instruments import Side
from ledger.money import Money
from ledger.ports import (
    BrokerPosition,
    Fill,
    FillReason,
    Order,
    OrderAction,
    OrderStatus,
)

TABLES = """
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS clock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    step INTEGER NOT NULL,
    sessions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS prices (
    symbol TEXT PRIMARY KEY,
    mid TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY,
    currency TEXT NOT NULL,
    balance TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    seq INTEGER PRIMARY KEY,
    ref TEXT NOT NULL UNIQUE,
    client_id TEXT,
    account TEXT NOT NULL REFERENCES accounts (name),
    action TEXT NOT NULL,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    quantity TEXT NOT NULL,
    filled TEXT NOT NULL,
    status TEXT NOT NULL,
    position_ref TEXT,
    tag TEXT NOT NULL,
    created_step INTEGER NOT NULL,
    visible_step INTEGER NOT NULL,
    worst_price TEXT
);
CREATE INDEX IF NOT EXISTS orders_by_client_id ON orders (client_id);
CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status);
CREATE TABLE IF NOT EXISTS positions (
    seq INTEGER PRIMARY KEY,
    ref TEXT NOT NULL UNIQUE,
    account TEXT NOT NULL REFERENCES accounts (name),
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    quantity TEXT NOT NULL,
    entry_price TEXT NOT NULL,
    stop_loss TEXT,
    take_profit TEXT,
    client_id TEXT,
    used TEXT NOT NULL,
    opened_step INTEGER NOT NULL,
    closed_step INTEGER
);
CREATE INDEX IF NOT EXISTS positions_by_closed_step ON positions (closed_step);
CREATE TABLE IF NOT EXISTS fills (
    seq INTEGER PRIMARY KEY,
    fill_id TEXT NOT NULL UNIQUE,
    order_ref TEXT,
    position_ref TEXT NOT NULL,
    account TEXT NOT NULL,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    opens INTEGER NOT NULL,
    quantity TEXT NOT NULL,
    price TEXT NOT NULL,
    fee TEXT NOT NULL,
    pnl TEXT,
    reason TEXT NOT NULL,
    client_id TEXT,
    step INTEGER NOT NULL,
    reported INTEGER NOT NULL,
    visible_step INTEGER NOT NULL
);
"""


def upgrade(db: sqlite3.Connection) -> None:
    """Bring books written by an older version to these tables (a column added since)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(orders)")}
    if "worst_price" not in columns:
        with db:
            db.execute("ALTER TABLE orders ADD COLUMN worst_price TEXT")


def decimal_or_none(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def text_or_none(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def order_from_row(row: sqlite3.Row) -> Order:
    return Order(
        broker_ref=row["ref"],
        client_id=row["client_id"],
        account=row["account"],
        action=OrderAction(row["action"]),
        symbol=row["symbol"],
        side=Side(row["side"]),
        quantity=Decimal(row["quantity"]),
        filled_quantity=Decimal(row["filled"]),
        status=OrderStatus(row["status"]),
        position_ref=row["position_ref"],
        tag=row["tag"],
        created_at=clock(row["created_step"]),
    )


def position_from_row(row: sqlite3.Row) -> BrokerPosition:
    return BrokerPosition(
        broker_ref=row["ref"],
        account=row["account"],
        symbol=row["symbol"],
        side=Side(row["side"]),
        quantity=Decimal(row["quantity"]),
        entry_price=Decimal(row["entry_price"]),
        stop_loss=decimal_or_none(row["stop_loss"]),
        take_profit=decimal_or_none(row["take_profit"]),
        client_id=row["client_id"],
        opened_at=clock(row["opened_step"]),
        closed_at=None if row["closed_step"] is None else clock(row["closed_step"]),
    )


def fill_from_row(row: sqlite3.Row, currency: str) -> Fill:
    pnl = row["pnl"]
    return Fill(
        fill_id=row["fill_id"],
        order_ref=row["order_ref"],
        position_ref=row["position_ref"],
        account=row["account"],
        symbol=row["symbol"],
        side=Side(row["side"]),
        opens=bool(row["opens"]),
        quantity=Decimal(row["quantity"]),
        price=Decimal(row["price"]),
        fee=Money(amount=Decimal(row["fee"]), currency=currency),
        pnl=None if pnl is None else Money(amount=Decimal(pnl), currency=currency),
        reason=FillReason(row["reason"]),
        client_id=row["client_id"],
        time=clock(row["step"]),
    )
