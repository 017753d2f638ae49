"""How the paper broker executes: fills, positions, stops and targets, and what
happens at the broker while no engine is connected."""

from __future__ import annotations

import sqlite3
from decimal import ROUND_DOWN, Decimal

from adapters.paper import market
from adapters.paper.schema import (
    decimal_or_none,
    fill_from_row,
    text_or_none,
)
from adapters.paper.settings import Fault
from adapters.paper.tables import Refusal, Tables
from ledger.instruments import Instrument, Price, Quantity, Side
from ledger.money import Money
from ledger.ports import (
    Fill,
    FillReason,
    OrderAction,
    OrderStatus,
)


class Execution(Tables):
    """Every change a fill makes to orders, positions and balances."""

    def _advance(self, steps: int) -> None:
        for _ in range(steps):
            step = self.step + 1
            self._db.execute("UPDATE clock SET step = ?", (step,))
            for symbol in sorted(market.LISTINGS):
                moved = market.next_price(self.settings.seed, symbol, step, self._mid(symbol))
                self._db.execute("UPDATE prices SET mid = ? WHERE symbol = ?", (str(moved), symbol))
            self._fill_working_orders()
            self._trigger_protection()

    def _fill_order(self, ref: str, quantity: Quantity, *, reported: int = 1) -> Fill:
        order = self._db.execute("SELECT * FROM orders WHERE ref = ?", (ref,)).fetchone()
        instrument = self._instrument(order["symbol"])
        side = Side(order["side"])
        opens = order["action"] == OrderAction.OPEN.value
        bid, ask = self._bid_ask(instrument)
        # Opening a long buys at the ask; closing one sells at the bid.
        price = ask if (side is Side.LONG) == opens else bid
        worst = order["worst_price"]
        if worst is not None and (price - Decimal(worst)) * side.sign > 0:
            raise Refusal(f"the price {price} is past the order's protection price {worst}")
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
        fee = instrument.fee(quantity, price)
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
            if row["closed_step"] is not None:
                raise Refusal(f"position {existing} closed before the rest of its order filled")
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
        # The rest of a partly filled close can outlive its position (a stop,
        # a manual close): then there is nothing left for it to close.
        if row["closed_step"] is not None or quantity > held:
            raise Refusal(f"position {position_ref} holds {held}, cannot close {quantity}")
        pnl = instrument.pnl(Side(row["side"]), quantity, Price(Decimal(row["entry_price"])), price)
        remaining = held - quantity
        used = Decimal(row["used"])
        # Round down, as the ledger does: a partial close frees no more than its share.
        released = (
            used
            if remaining == 0
            else Money.rounded(used * quantity / held, instrument.quote_currency, ROUND_DOWN).amount
        )
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
        protected = self._db.execute(
            "SELECT * FROM positions WHERE closed_step IS NULL "
            "AND (stop_loss IS NOT NULL OR take_profit IS NOT NULL) ORDER BY seq"
        ).fetchall()
        # Closing at a stop moves no price: one quote per symbol serves the whole pass.
        quotes: dict[str, tuple[Price, Price]] = {}
        for row in protected:
            symbol = row["symbol"]
            if symbol not in quotes:
                quotes[symbol] = self._bid_ask(self._instrument(symbol))
            side = Side(row["side"])
            bid, ask = quotes[symbol]
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
            ref = self._insert_order(
                client_id=None,
                account=account["name"],
                action=OrderAction.OPEN,
                symbol=instrument.symbol,
                side=side,
                quantity=Quantity(instrument.quantity_step),
                position_ref=None,
                tag="external",
            )
            try:
                self._fill_order(ref, Quantity(instrument.quantity_step))
            except Refusal:
                self._db.execute("DELETE FROM orders WHERE ref = ?", (ref,))
                continue
            return

    def _insert_order(
        self,
        *,
        client_id: str | None,
        account: str,
        action: OrderAction,
        symbol: str,
        side: Side,
        quantity: Quantity,
        position_ref: str | None,
        tag: str,
        lag: int = 0,
        worst_price: Decimal | None = None,
    ) -> str:
        """A new working order, visible to reads `lag` steps from now; returns its ref."""
        seq = self._next_seq("orders")
        ref = f"O{seq}"
        step = self.step
        self._db.execute(
            "INSERT INTO orders (seq, ref, client_id, account, action, symbol, side, quantity,"
            " filled, status, position_ref, tag, created_step, visible_step, worst_price)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, '0', ?, ?, ?, ?, ?, ?)",
            (
                seq,
                ref,
                client_id,
                account,
                action.value,
                symbol,
                side.value,
                str(quantity),
                OrderStatus.WORKING.value,
                position_ref,
                tag,
                step,
                step + lag,
                text_or_none(worst_price),
            ),
        )
        return ref
