"""What every part of the paper broker's books reads: clock, prices, accounts, positions."""

from __future__ import annotations

import sqlite3
from decimal import Decimal

from adapters.paper import market
from adapters.paper.settings import Fault, PaperSettings
from ledger.instruments import Instrument, Price
from ledger.money import Money
from ledger.ports import (
    Balance,
)


class PaperBrokerError(Exception):
    """Raised when the paper broker's file cannot be used as asked."""


class Refusal(Exception):  # noqa: N818 - control flow inside a transaction, never escapes
    """Raised inside a write to roll it back and answer REJECTED with `reason`."""


class Tables:
    """The connection to the books, and the small look-ups every operation needs."""

    settings: PaperSettings
    _db: sqlite3.Connection

    @property
    def step(self) -> int:
        return int(self._db.execute("SELECT step FROM clock").fetchone()["step"])

    def _mid(self, symbol: str) -> Decimal:
        row = self._db.execute("SELECT mid FROM prices WHERE symbol = ?", (symbol,)).fetchone()
        return Decimal(row["mid"])

    def _bid_ask(self, instrument: Instrument) -> tuple[Price, Price]:
        tick = instrument.price_tick
        bid = max(self._mid(instrument.symbol) - (self.settings.spread_ticks // 2) * tick, tick)
        return Price(bid), Price(bid + self.settings.spread_ticks * tick)

    def _happens(self, fault: Fault, key: str) -> bool:
        return market.happens(
            self.settings.seed, self.settings.probability(fault), f"{fault}/{key}"
        )

    def _next_seq(self, table: str) -> int:
        row = self._db.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM {table}").fetchone()  # noqa: S608
        return int(row["next"])

    def _instrument(self, symbol: str) -> Instrument:
        instrument = market.instrument(symbol, self.settings.fee_rate)
        if instrument is None:
            raise Refusal(f"{symbol!r} is not traded here")
        return instrument

    def _account_currency(self, account: str) -> str:
        row = self._db.execute(
            "SELECT currency FROM accounts WHERE name = ?", (account,)
        ).fetchone()
        if row is None:
            raise Refusal(f"no account {account!r} at this broker")
        return str(row["currency"])

    def _balance(self, account: str) -> Money:
        row = self._db.execute(
            "SELECT currency, balance FROM accounts WHERE name = ?", (account,)
        ).fetchone()
        return Money(amount=Decimal(row["balance"]), currency=row["currency"])

    def _set_balance(self, account: str, balance: Money) -> None:
        self._db.execute(
            "UPDATE accounts SET balance = ? WHERE name = ?", (str(balance.amount), account)
        )

    def _balance_of(self, account: str) -> Balance:
        balance = self._balance(account)
        used = Money.zero(balance.currency)
        for row in self._db.execute(
            "SELECT used FROM positions WHERE account = ? AND closed_step IS NULL", (account,)
        ):
            used += Money(amount=Decimal(row["used"]), currency=balance.currency)
        return Balance(
            account=account,
            currency=balance.currency,
            balance=balance,
            used=used,
            available=balance - used,
        )

    def _available(self, account: str) -> Money:
        return self._balance_of(account).available

    def _open_positions(self) -> list[sqlite3.Row]:
        return self._db.execute(
            "SELECT * FROM positions WHERE closed_step IS NULL ORDER BY seq"
        ).fetchall()

    def _open_position(self, ref: str, account: str) -> sqlite3.Row:
        row: sqlite3.Row | None = self._db.execute(
            "SELECT * FROM positions WHERE ref = ? AND account = ? AND closed_step IS NULL",
            (ref, account),
        ).fetchone()
        if row is None:
            raise Refusal(f"no open position {ref} in account {account}")
        return row
