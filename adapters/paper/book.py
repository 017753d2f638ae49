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
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import TypeVar

import msgspec

from adapters.paper import market
from adapters.paper.schema import (
    TABLES,
    decimal_or_none,
    fill_from_row,
    order_from_row,
    position_from_row,
    text_or_none,
)
from adapters.paper.settings import Fault, PaperSettings
from adapters.sqlite_store import create_private_file, make_durable
from ledger.errors import InvalidValue
from ledger.instruments import Instrument, Price, Quantity, Side
from ledger.money import Money
from ledger.ports import (
    Accepted,
    Balance,
    BrokerPosition,
    CandidateHint,
    ClientIdScope,
    Fill,
    FillReason,
    Found,
    LookupResult,
    LookupUnsupported,
    NotFound,
    Order,
    OrderAction,
    OrderRequest,
    OrderStatus,
    ProtectionRequest,
    Quote,
    Rejected,
    Unknown,
    WriteResult,
)

T = TypeVar("T")

CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9]{1,32}")


class PaperBrokerError(Exception):
    """Raised when the paper broker's file cannot be used as asked."""


@dataclass(frozen=True)
class Outcome:
    """A write's answer, and whether the calling process must now die (crash_after_accept)."""

    result: WriteResult
    crash: bool = False


class Refusal(Exception):  # noqa: N818 - control flow inside a transaction, never escapes
    """Raised inside a write to roll it back and answer REJECTED with `reason`."""


class PaperBook:
    """The state of a paper broker, and every operation on it."""

    def __init__(self, settings: PaperSettings) -> None:
        self.settings = settings
        if not settings.path.parent.is_dir():
            raise PaperBrokerError(f"the folder for {settings.path} does not exist")
        create_private_file(settings.path)
        self._db = sqlite3.connect(
            settings.path, isolation_level=None, check_same_thread=False, timeout=30
        )
        self._db.row_factory = sqlite3.Row
        make_durable(self._db, str(settings.path))
        # executescript commits on its own, so the tables are made outside _write().
        self._db.executescript(TABLES)
        self._start_session()

    def close(self) -> None:
        self._db.close()

    # Set-up -------------------------------------------------------------------------

    def _start_session(self) -> None:
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

    # Clock and prices ------------------------------------------------------------

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

    def _advance(self, steps: int) -> None:
        for _ in range(steps):
            step = self.step + 1
            self._db.execute("UPDATE clock SET step = ?", (step,))
            for symbol in sorted(market.LISTINGS):
                moved = market.next_price(self.settings.seed, symbol, step, self._mid(symbol))
                self._db.execute("UPDATE prices SET mid = ? WHERE symbol = ?", (str(moved), symbol))
            self._fill_working_orders()
            self._trigger_protection()

    def advance(self, steps: int = 1) -> None:
        """Move the broker's clock and prices `steps` steps on, as time passing would."""
        with self._write():
            self._advance(steps)

    # Writes ------------------------------------------------------------------------

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
        except Refusal as refusal:
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
            self._check_open_levels(instrument, order)
        else:
            position_ref = self._closable(order, quantity)
        fill_now = quantity
        if self._happens(Fault.PARTIAL_FILL, key):
            half = (quantity / 2).quantize(instrument.quantity_step, rounding=ROUND_DOWN)
            fill_now = Quantity(half) if half > 0 else quantity
        step = self.step
        lag = self.settings.lag_seconds if self._happens(Fault.LOOKUP_LAG, key) else 0
        seq = self._next_seq("orders")
        ref = f"O{seq}"
        self._db.execute(
            "INSERT INTO orders (seq, ref, client_id, account, action, symbol, side, quantity,"
            " filled, status, position_ref, tag, created_step, visible_step)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, '0', ?, ?, ?, ?, ?)",
            (
                seq,
                ref,
                order.client_id,
                order.account,
                order.action.value,
                order.symbol,
                order.side.value,
                str(quantity),
                OrderStatus.WORKING.value,
                position_ref,
                order.tag,
                step,
                step + lag,
            ),
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
        except Refusal as refusal:
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
                self._advance(1)
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
        except Refusal as refusal:
            return Outcome(Rejected(reason=str(refusal)))
        return self._answer(Accepted(broker_ref=row["ref"]), f"{client_id}/{self.step}")

    def fund(self, account: str, amount: Money) -> None:
        """Credit a paper account, creating it in `amount`'s currency if it is new."""
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

    # Fills -------------------------------------------------------------------------

    def _fill_order(self, ref: str, quantity: Quantity, *, reported: int = 1) -> Fill:
        order = self._db.execute("SELECT * FROM orders WHERE ref = ?", (ref,)).fetchone()
        instrument = self._instrument(order["symbol"])
        side = Side(order["side"])
        opens = order["action"] == OrderAction.OPEN.value
        bid, ask = self._bid_ask(instrument)
        # Opening a long buys at the ask; closing one sells at the bid.
        price = ask if (side is Side.LONG) == opens else bid
        if opens:
            position_ref = self._open_or_add(order, quantity, price, instrument)
            pnl = None
        else:
            position_ref = order["position_ref"]
            pnl = self._reduce(position_ref, quantity, price, instrument)
        filled = Decimal(order["filled"]) + quantity
        status = OrderStatus.FILLED if filled == Decimal(order["quantity"]) else OrderStatus.WORKING
        self._db.execute(
            "UPDATE orders SET filled = ?, status = ?, position_ref = ? WHERE ref = ?",
            (str(filled), status.value, position_ref, ref),
        )
        return self._record_fill(
            order_ref=ref,
            position_ref=position_ref,
            account=order["account"],
            instrument=instrument,
            side=side,
            opens=opens,
            quantity=quantity,
            price=price,
            pnl=pnl,
            reason=FillReason.ORDER if order["client_id"] is not None else FillReason.EXTERNAL,
            client_id=order["client_id"],
            reported=reported,
            visible_step=order["visible_step"],
        )

    def _record_fill(  # noqa: PLR0913 - one row's columns
        self,
        *,
        order_ref: str | None,
        position_ref: str,
        account: str,
        instrument: Instrument,
        side: Side,
        opens: bool,
        quantity: Quantity,
        price: Price,
        pnl: Money | None,
        reason: FillReason,
        client_id: str | None,
        reported: int = 1,
        visible_step: int | None = None,
    ) -> Fill:
        fee = Money.rounded(
            instrument.notional(quantity, price) * self.settings.fee_rate,
            instrument.quote_currency,
            ROUND_UP,
        )
        if not fee.is_zero:
            self._set_balance(account, self._balance(account) - fee)
        seq = self._next_seq("fills")
        step = self.step
        self._db.execute(
            "INSERT INTO fills (seq, fill_id, order_ref, position_ref, account, symbol, side,"
            " opens, quantity, price, fee, pnl, reason, client_id, step, reported, visible_step)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                f"F{seq}",
                order_ref,
                position_ref,
                account,
                instrument.symbol,
                side.value,
                int(opens),
                str(quantity),
                str(price),
                str(fee.amount),
                None if pnl is None else str(pnl.amount),
                reason.value,
                client_id,
                step,
                reported,
                step if visible_step is None else visible_step,
            ),
        )
        row = self._db.execute("SELECT * FROM fills WHERE seq = ?", (seq,)).fetchone()
        return fill_from_row(row, instrument.quote_currency)

    def _open_or_add(
        self, order: sqlite3.Row, quantity: Quantity, price: Price, instrument: Instrument
    ) -> str:
        used = instrument.funds_required(quantity, price)
        if used > self._available(order["account"]):
            raise Refusal(
                f"insufficient funds: {used} needed, {self._available(order['account'])} available"
            )
        existing = order["position_ref"]
        if existing is not None:
            # The rest of a partly filled opening order joins its position at
            # the quantity-weighted average price, as venues report it.
            row = self._db.execute("SELECT * FROM positions WHERE ref = ?", (existing,)).fetchone()
            held = Decimal(row["quantity"])
            total = held + quantity
            average = (held * Decimal(row["entry_price"]) + quantity * price) / total
            self._db.execute(
                "UPDATE positions SET quantity = ?, entry_price = ?, used = ? WHERE ref = ?",
                (str(total), str(average), str(Decimal(row["used"]) + used.amount), existing),
            )
            return str(existing)
        seq = self._next_seq("positions")
        ref = f"P{seq}"
        self._db.execute(
            "INSERT INTO positions (seq, ref, account, symbol, side, quantity, entry_price,"
            " stop_loss, take_profit, client_id, used, opened_step)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                ref,
                order["account"],
                order["symbol"],
                order["side"],
                str(quantity),
                str(price),
                None,
                None,
                order["client_id"],
                str(used.amount),
                self.step,
            ),
        )
        return ref

    def _reduce(
        self, position_ref: str, quantity: Quantity, price: Price, instrument: Instrument
    ) -> Money:
        row = self._db.execute("SELECT * FROM positions WHERE ref = ?", (position_ref,)).fetchone()
        held = Decimal(row["quantity"])
        pnl = instrument.pnl(Side(row["side"]), quantity, Price(Decimal(row["entry_price"])), price)
        remaining = held - quantity
        used = Decimal(row["used"])
        released = used if remaining == 0 else (used * quantity / held).quantize(used)
        self._db.execute(
            "UPDATE positions SET quantity = ?, used = ?, closed_step = ? WHERE ref = ?",
            (
                str(remaining),
                str(used - released),
                self.step if remaining == 0 else None,
                position_ref,
            ),
        )
        self._set_balance(row["account"], self._balance(row["account"]) + pnl)
        return pnl

    def _fill_working_orders(self) -> None:
        rows = self._db.execute(
            "SELECT ref, quantity, filled FROM orders WHERE status = ? ORDER BY seq",
            (OrderStatus.WORKING.value,),
        ).fetchall()
        for row in rows:
            rest = Quantity(Decimal(row["quantity"]) - Decimal(row["filled"]))
            try:
                self._fill_order(row["ref"], rest)
            except Refusal:
                # The rest can no longer be filled (funds, a closed position): it is cancelled.
                self._db.execute(
                    "UPDATE orders SET status = ? WHERE ref = ?",
                    (OrderStatus.CANCELLED.value, row["ref"]),
                )

    def _trigger_protection(self) -> None:
        for row in self._open_positions():
            instrument = self._instrument(row["symbol"])
            side = Side(row["side"])
            bid, ask = self._bid_ask(instrument)
            # A long is closed by selling at the bid; a short by buying at the ask.
            exit_price = bid if side is Side.LONG else ask
            stop_loss, take_profit = (
                decimal_or_none(row["stop_loss"]),
                decimal_or_none(row["take_profit"]),
            )
            if stop_loss is not None and (exit_price - stop_loss) * side.sign <= 0:
                self._close_at_broker(row, exit_price, FillReason.STOP_LOSS)
            elif take_profit is not None and (exit_price - take_profit) * side.sign >= 0:
                self._close_at_broker(row, exit_price, FillReason.TAKE_PROFIT)

    def _close_at_broker(self, row: sqlite3.Row, price: Price, reason: FillReason) -> None:
        """Close a whole position without an order of ours: a stop, a target, a hand."""
        instrument = self._instrument(row["symbol"])
        quantity = Quantity(Decimal(row["quantity"]))
        pnl = self._reduce(row["ref"], quantity, price, instrument)
        self._record_fill(
            order_ref=None,
            position_ref=row["ref"],
            account=row["account"],
            instrument=instrument,
            side=Side(row["side"]),
            opens=False,
            quantity=quantity,
            price=price,
            pnl=pnl,
            reason=reason,
            client_id=None,
        )

    # What happened while no one was watching -------------------------------------

    def _while_down(self, session: int) -> None:
        for row in self._open_positions():
            if row["stop_loss"] is not None and self._happens(
                Fault.STOP_HIT_WHILE_DOWN, f"{row['ref']}/{session}"
            ):
                stop = Price(Decimal(row["stop_loss"]))
                self._db.execute(
                    "UPDATE prices SET mid = ? WHERE symbol = ?", (str(stop), row["symbol"])
                )
                self._close_at_broker(row, stop, FillReason.STOP_LOSS)
            elif self._happens(Fault.MANUAL_CLOSE, f"{row['ref']}/{session}"):
                instrument = self._instrument(row["symbol"])
                bid, ask = self._bid_ask(instrument)
                self._close_at_broker(
                    row, bid if Side(row["side"]) is Side.LONG else ask, FillReason.MANUAL
                )
        if self._happens(Fault.EXTERNAL_ORDER, f"external/{session}"):
            self._external_order(session)

    def _external_order(self, session: int) -> None:
        chooser = market.draw(self.settings.seed, f"external/{session}/choice")
        for account in self._db.execute("SELECT name, currency FROM accounts ORDER BY name"):
            symbols = sorted(
                symbol
                for symbol, listing in market.LISTINGS.items()
                if listing.instrument.quote_currency == account["currency"]
            )
            if not symbols:
                continue
            instrument = self._instrument(chooser.choice(symbols))
            side = chooser.choice([Side.LONG, Side.SHORT])
            seq = self._next_seq("orders")
            step = self.step
            self._db.execute(
                "INSERT INTO orders (seq, ref, client_id, account, action, symbol, side,"
                " quantity, filled, status, position_ref, tag, created_step, visible_step)"
                " VALUES (?, ?, NULL, ?, 'open', ?, ?, ?, '0', 'working', NULL, 'external', ?, ?)",
                (
                    seq,
                    f"O{seq}",
                    account["name"],
                    instrument.symbol,
                    side.value,
                    str(instrument.quantity_step),
                    step,
                    step,
                ),
            )
            try:
                self._fill_order(f"O{seq}", Quantity(instrument.quantity_step))
            except Refusal:
                self._db.execute("DELETE FROM orders WHERE seq = ?", (seq,))
                continue
            return

    # Reads ---------------------------------------------------------------------------

    def lookup(self, client_id: str) -> LookupResult:
        if self.settings.scope is ClientIdScope.NONE:
            return LookupUnsupported()
        row = self._db.execute(
            "SELECT * FROM orders WHERE client_id = ? AND visible_step <= ?"
            " ORDER BY seq DESC LIMIT 1",
            (client_id, self.step),
        ).fetchone()
        if row is None:
            return NotFound(authoritative=True)
        order = order_from_row(row)
        fills = [fill for fill in self.fills() if fill.order_ref == order.broker_ref]
        return Found(order=order, fills=tuple(fills))

    def find_candidates(self, hint: CandidateHint) -> list[Order]:
        orders = [
            order_from_row(row)
            for row in self._db.execute(
                "SELECT * FROM orders WHERE account = ? AND symbol = ? AND side = ?"
                " AND visible_step <= ? ORDER BY seq",
                (hint.account, hint.symbol, hint.side.value, self.step),
            )
        ]
        return [
            order
            for order in orders
            if order.quantity == hint.quantity
            and hint.since <= order.created_at <= hint.until
            and (not hint.tag or order.tag == hint.tag)
        ]

    def orders(self, *, include_done: bool = False) -> list[Order]:
        status = "" if include_done else " AND status = 'working'"
        return [
            order_from_row(row)
            for row in self._db.execute(
                f"SELECT * FROM orders WHERE visible_step <= ?{status} ORDER BY seq",  # noqa: S608
                (self.step,),
            )
        ]

    def positions(self, *, include_closed: bool = False) -> list[BrokerPosition]:
        if not include_closed:
            return [position_from_row(row) for row in self._open_positions()]
        rows = self._db.execute("SELECT * FROM positions ORDER BY seq")
        return [position_from_row(row) for row in rows]

    def fills(self, since_step: int | None = None) -> list[Fill]:
        fills: list[Fill] = []
        for row in self._db.execute(
            "SELECT fills.*, accounts.currency FROM fills"
            " JOIN accounts ON accounts.name = fills.account"
            " WHERE fills.step > ? AND fills.visible_step <= ? ORDER BY fills.seq",
            (-1 if since_step is None else since_step, self.step),
        ):
            fill = fill_from_row(row, row["currency"])
            fills.extend([fill] * row["reported"])
        return fills

    def balances(self) -> list[Balance]:
        return [
            self._balance_of(row["name"])
            for row in self._db.execute("SELECT name FROM accounts ORDER BY name")
        ]

    def quote(self, symbol: str) -> Quote:
        instrument = market.instrument(symbol)
        if instrument is None:
            raise InvalidValue("symbol", f"{symbol!r} is not traded here")
        bid, ask = self._bid_ask(instrument)
        return Quote(symbol=symbol, bid=bid, ask=ask, time=market.clock(self.step))

    def dump(self) -> dict[str, list[dict[str, object]]]:
        """Every table's rows in key order: equal dumps mean equal broker states."""
        tables = ["settings", "clock", "prices", "accounts", "orders", "positions", "fills"]
        return {
            table: [dict(row) for row in self._db.execute(f"SELECT * FROM {table} ORDER BY 1")]  # noqa: S608
            for table in tables
        }

    # Helpers ----------------------------------------------------------------------

    def _happens(self, fault: Fault, key: str) -> bool:
        return market.happens(
            self.settings.seed, self.settings.probability(fault), f"{fault}/{key}"
        )

    def _next_seq(self, table: str) -> int:
        row = self._db.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM {table}").fetchone()  # noqa: S608
        return int(row["next"])

    def _instrument(self, symbol: str) -> Instrument:
        instrument = market.instrument(symbol)
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

    def _check_open_levels(self, instrument: Instrument, order: OrderRequest) -> None:
        self._check_levels(instrument, order.side, order.stop_loss, order.take_profit)

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
