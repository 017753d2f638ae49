"""What the paper broker answers to reads. Nothing here writes."""

from __future__ import annotations

from adapters.paper import market
from adapters.paper.schema import (
    fill_from_row,
    order_from_row,
    position_from_row,
)
from adapters.paper.settings import Fault
from adapters.paper.tables import Tables
from ledger.errors import InvalidValue
from ledger.ports import (
    Balance,
    BrokerPosition,
    CandidateHint,
    ClientIdScope,
    Fill,
    Found,
    LookupResult,
    LookupUnsupported,
    NotFound,
    Order,
    Quote,
)


class Queries(Tables):
    """Orders, positions, fills, balances and quotes, as the port returns them."""

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
            # By when a fill became visible, not when it happened: a fill hidden
            # by the visibility lag must still reach a reader whose cursor moved on.
            " WHERE fills.visible_step > ? AND fills.visible_step <= ? ORDER BY fills.seq",
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
        key = f"{symbol}/{self.step}"
        priced = market.clock(self.step)
        if self._happens(Fault.STALE_QUOTE, key):
            priced -= market.STALE_QUOTE_AGE
        return Quote(
            symbol=symbol,
            bid=bid,
            ask=ask,
            time=priced,
            market_open=not self._happens(Fault.MARKET_CLOSED, key),
        )

    def dump(self) -> dict[str, list[dict[str, object]]]:
        """Every table's rows in key order: equal dumps mean equal broker states."""
        tables = ["settings", "clock", "prices", "accounts", "orders", "positions", "fills"]
        return {
            table: [dict(row) for row in self._db.execute(f"SELECT * FROM {table} ORDER BY 1")]  # noqa: S608
            for table in tables
        }
