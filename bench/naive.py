"""The naive baseline: the same operations the way a first version would write them.

An eventsourcing application with the library's own aggregates and its
default JSON mapper, on the same kind of store: each open records its
intent, reserves funds, calls the broker, completes the intent, opens the
position and settles the funds, one save (one transaction, one fsync) per
state change, and nothing shared between operations.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from adapters.paper.broker import PaperBroker
from ledger.instruments import Side
from ledger.ports import Accepted, OrderAction, OrderRequest


class NaiveAccount(Aggregate):
    @event("Opened")
    def __init__(self, name: str, total: Decimal) -> None:
        self.name = name
        self.total = total
        self.reserved: dict[str, Decimal] = {}

    @event("FundsReserved")
    def reserve(self, intent_id: str, amount: Decimal) -> None:
        self.reserved[intent_id] = amount

    @event("FundsSettled")
    def settle(self, intent_id: str, amount: Decimal) -> None:
        del self.reserved[intent_id]
        self.total -= amount

    @event("PnlRealised")
    def realise(self, amount: Decimal) -> None:
        self.total += amount


class NaiveIntent(Aggregate):
    @event("Recorded")
    def __init__(self, kind: str, symbol: str, quantity: Decimal) -> None:
        self.kind = kind
        self.symbol = symbol
        self.quantity = quantity
        self.status = "submitted"

    @event("Completed")
    def complete(self, broker_ref: str) -> None:
        self.status = "completed"
        self.broker_ref = broker_ref


class NaivePosition(Aggregate):
    @event("Opened")
    def __init__(self, symbol: str, quantity: Decimal, price: Decimal, broker_ref: str) -> None:
        self.symbol = symbol
        self.quantity = quantity
        self.price = price
        self.broker_ref = broker_ref
        self.open = True

    @event("Closed")
    def close(self, price: Decimal) -> None:
        self.open = False
        self.exit_price = price


class NaiveLedger:
    """Opens and closes, each state change saved on its own."""

    def __init__(self, application: Application[UUID], broker: PaperBroker, account: str) -> None:
        self.application = application
        self.broker = broker
        self.account = NaiveAccount(account, Decimal(10_000_000))
        application.save(self.account)
        self.sequence = 0

    def _client_id(self) -> str:
        self.sequence += 1
        return f"naive{self.sequence}"

    async def open(self, symbol: str, quantity: Decimal) -> NaivePosition:
        intent = NaiveIntent("open", symbol, quantity)
        self.application.save(intent)
        quote = await self.broker.quote(symbol)
        self.account.reserve(str(intent.id), quote.ask * quantity * Decimal("1.01"))
        self.application.save(self.account)
        order = OrderRequest(
            client_id=self._client_id(),
            account=self.account.name,
            action=OrderAction.OPEN,
            symbol=symbol,
            side=Side.LONG,
            quantity=quantity,
        )
        result = await self.broker.submit(order)
        if not isinstance(result, Accepted):
            raise TypeError(f"the naive baseline expects every order to fill: {result}")
        fill = result.fills[0]
        intent.complete(result.broker_ref)
        self.application.save(intent)
        position = NaivePosition(symbol, quantity, fill.price, fill.position_ref)
        self.application.save(position)
        self.account.settle(str(intent.id), fill.price * quantity)
        self.application.save(self.account)
        return position

    async def close(self, position: NaivePosition) -> None:
        intent = NaiveIntent("close", position.symbol, position.quantity)
        self.application.save(intent)
        order = OrderRequest(
            client_id=self._client_id(),
            account=self.account.name,
            action=OrderAction.CLOSE,
            symbol=position.symbol,
            side=Side.LONG,
            quantity=position.quantity,
            position_ref=position.broker_ref,
        )
        result = await self.broker.submit(order)
        if not isinstance(result, Accepted):
            raise TypeError(f"the naive baseline expects every order to fill: {result}")
        fill = result.fills[0]
        intent.complete(result.broker_ref)
        self.application.save(intent)
        position.close(fill.price)
        self.application.save(position)
        self.account.realise(fill.price * position.quantity)
        self.application.save(self.account)


def naive_log(path: Path, *, events: int) -> Application[UUID]:
    """The naive application's store at `path`, holding about `events` of its events."""
    application: Application[UUID] = Application(
        env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
    )
    account = NaiveAccount("naive", Decimal(10_000_000))
    written = 1
    while written < events:
        intents = []
        for _ in range(250):
            intent = NaiveIntent("deposit", "USD", Decimal(1))
            intent.complete("ledger")
            account.reserve(str(intent.id), Decimal(1))
            account.settle(str(intent.id), Decimal(-1))
            intents.append(intent)
            written += 4
        application.save(account, *intents)
    return application
