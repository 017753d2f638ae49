"""The paper broker's books: accounts, orders, fills and positions in one SQLite file.

Synchronous and single-connection: `PaperBroker` calls it from one worker
thread at a time. Every write is one `BEGIN IMMEDIATE` transaction,
committed with synchronous=FULL before the method returns, so whatever
it acknowledged survives a `kill -9` of the process that called it.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import TypeVar

import msgspec

from adapters.paper import market
from adapters.paper.execution import Execution
from adapters.paper.queries import Queries
from adapters.paper.schema import (
    TABLES,
    decimal_or_none,
    text_or_none,
    upgrade,
)
from adapters.paper.settings import Fault, PaperSettings
from adapters.paper.tables import PaperBrokerError, Refusal
from adapters.sqlite_store import create_private_file, make_durable
from ledger.account import validate_account_name
from ledger.errors import InvalidValue, LedgerError
from ledger.instruments import Instrument, Quantity, Side
from ledger.money import Money
from ledger.ports import (
    Accepted,
    ClientIdScope,
    OrderAction,
    OrderRequest,
    OrderStatus,
    ProtectionRequest,
    Rejected,
    Unknown,
    WriteResult,
)

T = TypeVar("T")

CLIENT_ID_CHARACTERS = "A-Za-z0-9"
CLIENT_ID_LENGTH_MAX = 32
CLIENT_ID_PATTERN = re.compile(f"[{CLIENT_ID_CHARACTERS}]{{1,{CLIENT_ID_LENGTH_MAX}}}")


@dataclass(frozen=True)
class Outcome:
    """A write's answer, and whether the calling process must now die (crash_after_accept)."""

    result: WriteResult
    crash: bool = False


IN_MEMORY = Path(":memory:")
"""Books kept in memory only (`paper:///:memory:`): for benchmarks, gone with the process."""


def _connect(path: Path) -> sqlite3.Connection:
    if path == IN_MEMORY:
        return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    if not path.parent.is_dir():
        raise PaperBrokerError(f"the folder for {path} does not exist")
    create_private_file(path)
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)


class PaperBook(Execution, Queries):
    """The state of a paper broker, and every operation on it."""

    def __init__(self, settings: PaperSettings, *, start_session: bool = True) -> None:
        """Open (or create) the books at `settings.path`.

        `start_session` says a trading client is connecting: what happened
        "while it was down" (the while-down faults) happens now. An operator
        looking at the books passes False and changes nothing by looking.
        """
        self.settings = settings
        try:
            self._db = _connect(settings.path)
        except (OSError, ValueError, sqlite3.Error) as error:
            raise PaperBrokerError(f"cannot open {settings.path}: {error}") from None
        try:
            self._db.row_factory = sqlite3.Row
            if settings.path != IN_MEMORY:
                make_durable(self._db, str(settings.path))
            # executescript commits on its own, so the tables are made outside _write().
            self._db.executescript(TABLES)
            upgrade(self._db)
            self._start_session(counted=start_session)
        except sqlite3.Error as error:
            self._db.close()
            raise PaperBrokerError(
                f"{settings.path} is not a paper broker's books: {error}"
            ) from None
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def _start_session(self, *, counted: bool) -> None:
        with self._write():
            self._check_settings()
            row = self._db.execute("SELECT step, sessions FROM clock").fetchone()
            if row is None:
                self._db.execute("INSERT INTO clock (id, step, sessions) VALUES (1, 0, 1)")
                for symbol, listing in sorted(market.LISTINGS.items()):
                    self._db.execute(
                        "INSERT INTO prices (symbol, mid) VALUES (?, ?)",
                        (symbol, str(listing.start)),
                    )
                return
            if counted:
                session = row["sessions"] + 1
                self._db.execute("UPDATE clock SET sessions = ?", (session,))
                self._while_down(session)

    def _check_settings(self) -> None:
        fixed = {"seed": str(self.settings.seed), "scope": self.settings.scope.value}
        for name, value in fixed.items():
            stored = self._db.execute("SELECT value FROM settings WHERE name = ?", (name,))
            row = stored.fetchone()
            if row is None:
                self._db.execute("INSERT INTO settings (name, value) VALUES (?, ?)", (name, value))
            elif row["value"] != value:
                raise PaperBrokerError(
                    f"{self.settings.path} was created with {name}={row['value']}, "
                    f"not {name}={value}"
                )

    @contextmanager
    def _write(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def advance(self, steps: int = 1) -> None:
        """Move the broker's clock and prices `steps` steps on, as time passing would."""
        with self._write():
            self._advance(steps)

    def submit(self, order: OrderRequest) -> Outcome:
        key = f"{order.client_id}/{self.step}"
        if self._happens(Fault.TIMEOUT_BEFORE_ACCEPT, key):
            with self._write():
                self._advance(1)
            return Outcome(Unknown(cause="timed out before the broker answered"))
        try:
            with self._write():
                self._advance(1)
                accepted = self._submit(order, key)
        except (Refusal, LedgerError) as refusal:
            return Outcome(Rejected(reason=str(refusal)))
        return self._answer(accepted, key)

    def _answer(self, accepted: Accepted, key: str) -> Outcome:
        if self._happens(Fault.CRASH_AFTER_ACCEPT, key):
            return Outcome(accepted, crash=True)
        if self._happens(Fault.TIMEOUT_AFTER_ACCEPT, key):
            return Outcome(Unknown(cause="timed out after the broker accepted"))
        return Outcome(accepted)

    def _submit(self, order: OrderRequest, key: str) -> Accepted:
        instrument = self._instrument(order.symbol)
        account_currency = self._account_currency(order.account)
        if instrument.quote_currency != account_currency:
            raise Refusal(
                f"account {order.account} holds {account_currency}; "
                f"{order.symbol} settles in {instrument.quote_currency}"
            )
        self._check_client_id(order.client_id)
        quantity = _checked(lambda: instrument.quantity(order.quantity))
        if order.action is OrderAction.OPEN:
            position_ref = None
            self._check_levels(instrument, order.side, order.stop_loss, order.take_profit)
        else:
            position_ref = self._closable(order, quantity)
        fill_now = quantity
        if self._happens(Fault.PARTIAL_FILL, key):
            half = (quantity / 2).quantize(instrument.quantity_step, rounding=ROUND_DOWN)
            fill_now = Quantity(half) if half > 0 else quantity
        lag = self.settings.lag_seconds if self._happens(Fault.LOOKUP_LAG, key) else 0
        ref = self._insert_order(
            client_id=order.client_id,
            account=order.account,
            action=order.action,
            symbol=order.symbol,
            side=order.side,
            quantity=quantity,
            position_ref=position_ref,
            tag=order.tag,
            lag=lag,
            worst_price=order.worst_price,
        )
        duplicate = self._happens(Fault.DUPLICATE_ACK, key)
        fill = self._fill_order(ref, fill_now, reported=2 if duplicate else 1)
        if order.action is OrderAction.OPEN:
            self._db.execute(
                "UPDATE positions SET stop_loss = ?, take_profit = ? WHERE ref = ?",
                (text_or_none(order.stop_loss), text_or_none(order.take_profit), fill.position_ref),
            )
        return Accepted(broker_ref=ref, fills=(fill, fill) if duplicate else (fill,))

    def amend_protection(self, request: ProtectionRequest) -> Outcome:
        key = f"{request.client_id}/{self.step}"
        try:
            with self._write():
                self._advance(1)
                if self._happens(Fault.REJECT_SL_CHANGE, key):
                    raise Refusal("the broker refused to change protection now")  # noqa: TRY301
                self._amend(
                    request, apply=not self._happens(Fault.SL_CHANGE_ACCEPTED_NOT_APPLIED, key)
                )
        except (Refusal, LedgerError) as refusal:
            return Outcome(Rejected(reason=str(refusal)))
        return self._answer(Accepted(broker_ref=request.position_ref), key)

    def _amend(self, request: ProtectionRequest, *, apply: bool) -> None:
        row = self._open_position(request.position_ref, request.account)
        instrument = self._instrument(row["symbol"])
        stop_loss = (
            decimal_or_none(row["stop_loss"])
            if request.stop_loss is msgspec.UNSET
            else request.stop_loss
        )
        take_profit = (
            decimal_or_none(row["take_profit"])
            if request.take_profit is msgspec.UNSET
            else request.take_profit
        )
        self._check_levels(instrument, Side(row["side"]), stop_loss, take_profit)
        if apply:
            self._db.execute(
                "UPDATE positions SET stop_loss = ?, take_profit = ? WHERE ref = ?",
                (text_or_none(stop_loss), text_or_none(take_profit), request.position_ref),
            )

    def cancel(self, client_id: str, account: str) -> Outcome:
        try:
            with self._write():
                row = self._db.execute(
                    "SELECT ref FROM orders WHERE client_id = ? AND account = ? AND status = ?"
                    " ORDER BY seq DESC LIMIT 1",
                    (client_id, account, OrderStatus.WORKING.value),
                ).fetchone()
                if row is None:
                    raise Refusal(f"no working order has client id {client_id}")  # noqa: TRY301
                self._db.execute(
                    "UPDATE orders SET status = ? WHERE ref = ?",
                    (OrderStatus.CANCELLED.value, row["ref"]),
                )
                # The clock moves after the cancel: a cancel must not lose the race
                # against the very price step that would fill what it cancels.
                self._advance(1)
        except (Refusal, LedgerError) as refusal:
            return Outcome(Rejected(reason=str(refusal)))
        return self._answer(Accepted(broker_ref=row["ref"]), f"{client_id}/{self.step}")

    def fund(self, account: str, amount: Money) -> None:
        """Credit a paper account, creating it in `amount`'s currency if it is new."""
        validate_account_name(account)
        if amount.is_negative or amount.is_zero:
            raise InvalidValue("amount", f"{amount} must be more than zero")
        with self._write():
            row = self._db.execute(
                "SELECT currency, balance FROM accounts WHERE name = ?", (account,)
            ).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO accounts (name, currency, balance) VALUES (?, ?, ?)",
                    (account, amount.currency, str(amount.amount)),
                )
            elif row["currency"] != amount.currency:
                raise InvalidValue(
                    "currency", f"account {account} holds {row['currency']}, not {amount.currency}"
                )
            else:
                balance = Money(amount=Decimal(row["balance"]), currency=amount.currency) + amount
                self._set_balance(account, balance)

    def _check_client_id(self, client_id: str) -> None:
        if not CLIENT_ID_PATTERN.fullmatch(client_id):
            raise Refusal(f"client id {client_id!r} is not 1-32 letters and digits")
        scope = self.settings.scope
        if scope is ClientIdScope.NONE:
            return
        live = " AND status = 'working'" if scope is ClientIdScope.OPEN_ONLY else ""
        clash = self._db.execute(
            f"SELECT ref FROM orders WHERE client_id = ?{live} LIMIT 1",  # noqa: S608
            (client_id,),
        ).fetchone()
        if clash is not None:
            raise Refusal(f"duplicate client id {client_id}: order {clash['ref']} has it")

    def _closable(self, order: OrderRequest, quantity: Quantity) -> str:
        if order.position_ref is None:
            raise Refusal(f"a {order.action} order names the position to close")
        row = self._open_position(order.position_ref, order.account)
        if row["symbol"] != order.symbol or row["side"] != order.side.value:
            raise Refusal(f"position {order.position_ref} is {row['side']} {row['symbol']}")
        held = Decimal(row["quantity"])
        if order.action is OrderAction.CLOSE and quantity != held:
            raise Refusal(f"close {quantity} of {order.position_ref}: it holds {held}")
        if order.action is OrderAction.REDUCE and quantity >= held:
            raise Refusal(f"reduce {quantity} of {order.position_ref}: it holds only {held}")
        return order.position_ref

    def _check_levels(
        self,
        instrument: Instrument,
        side: Side,
        stop_loss: Decimal | None,
        take_profit: Decimal | None,
    ) -> None:
        """Levels on the tick, on the protective / profitable side of the current price."""
        bid, ask = self._bid_ask(instrument)
        exit_price = bid if side is Side.LONG else ask
        if stop_loss is not None:
            _checked(lambda: instrument.price(stop_loss, field="stop_loss"))
            if (exit_price - stop_loss) * side.sign <= 0:
                raise Refusal(
                    f"stop-loss {stop_loss} is not on the protective side of {exit_price}"
                )
        if take_profit is not None:
            _checked(lambda: instrument.price(take_profit, field="take_profit"))
            if (take_profit - exit_price) * side.sign <= 0:
                raise Refusal(f"take-profit {take_profit} is not beyond the price {exit_price}")


def _checked(check: Callable[[], T]) -> T:
    """Run an instrument check; a value it refuses makes the write REJECTED."""
    try:
        return check()
    except InvalidValue as error:
        raise Refusal(str(error)) from None
