"""The broker port: what the ledger may ask of any broker, and what it gets back.

Every adapter (the paper broker, a real venue) implements `Broker`. Writes
answer `Accepted | Rejected | Unknown` and are never retried inside an
adapter: only the caller, which has recorded an intent, may decide to try
again, and only from evidence. Reads are what recovery reconciles with.
"""

from __future__ import annotations

import enum
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol, TypeVar
from uuid import UUID

import msgspec

from ledger.aggregate import Aggregate
from ledger.instruments import Instrument, Side
from ledger.money import Money

A = TypeVar("A", bound=Aggregate)


class ClientIdScope(enum.StrEnum):
    """How long a venue keeps a client order id unique."""

    FOREVER = "forever"
    """Unique for ever; a reused id is refused (Alpaca)."""
    OPEN_ONLY = "open_only"
    """Unique among open orders only; reusing one after a fill makes a second order (Binance)."""
    NONE = "none"
    """Not unique and not searchable (MT5, Deriv): only candidate matching works."""


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a broker can do, so recovery knows which evidence it can trust."""

    venue: str
    """The venue's name: what the circuit breaker in front of it is known by."""
    lookup_by_client_id: bool
    client_id_scope: ClientIdScope
    client_id_length_max: int
    client_id_characters: str
    """The characters a client id may use, as a regular-expression class body."""
    native_protection_amend: bool
    """Whether SL/TP of an open position can be amended in place."""
    history_lookback: timedelta
    """How far back orders and fills stay visible."""
    visibility_lag: timedelta
    """How long after an accepted write a read may still not show it."""


class OrderAction(enum.StrEnum):
    OPEN = "open"
    CLOSE = "close"
    """Close all of a position."""
    REDUCE = "reduce"
    """Close part of a position."""


class OrderRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A market order. `side` is the side of the position it opens, closes or reduces."""

    client_id: str
    account: str
    action: OrderAction
    symbol: str
    side: Side
    quantity: Decimal
    position_ref: str | None = None
    """The broker's position, for close and reduce."""
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    tag: str = ""
    """Free text the venue keeps with the order (an MT5 comment), for candidate matching."""
    worst_price: Decimal | None = None
    """The order fills at this price or better, or not at all (a protected market order)."""


class ProtectionRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Amend the stop-loss and/or take-profit of a position.

    A field left UNSET is not changed; None removes the level.
    """

    client_id: str
    account: str
    position_ref: str
    stop_loss: Decimal | msgspec.UnsetType | None = msgspec.UNSET
    take_profit: Decimal | msgspec.UnsetType | None = msgspec.UNSET


class FillReason(enum.StrEnum):
    ORDER = "order"
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    MANUAL = "manual"
    """Closed at the broker by a person (a manual close)."""
    EXTERNAL = "external"
    """An order placed at the broker by someone other than this ledger."""


class Fill(msgspec.Struct, frozen=True, kw_only=True):
    """One execution, with an id that stays the same every time it is read."""

    fill_id: str
    order_ref: str | None
    position_ref: str
    account: str
    symbol: str
    side: Side
    """The side of the position this fill opened, closed or reduced."""
    opens: bool
    quantity: Decimal
    price: Decimal
    fee: Money
    pnl: Money | None
    """Realised by a closing fill; None for an opening one."""
    reason: FillReason
    client_id: str | None
    time: datetime


class OrderStatus(enum.StrEnum):
    WORKING = "working"
    """Partly filled; the rest is still working."""
    FILLED = "filled"
    CANCELLED = "cancelled"
    """Cancelled; any part filled before stays filled."""


class Order(msgspec.Struct, frozen=True, kw_only=True):
    broker_ref: str
    client_id: str | None
    account: str
    action: OrderAction
    symbol: str
    side: Side
    quantity: Decimal
    filled_quantity: Decimal
    status: OrderStatus
    position_ref: str | None
    tag: str
    created_at: datetime


class BrokerPosition(msgspec.Struct, frozen=True, kw_only=True):
    broker_ref: str
    account: str
    symbol: str
    side: Side
    quantity: Decimal
    entry_price: Decimal
    stop_loss: Decimal | None
    take_profit: Decimal | None
    client_id: str | None
    opened_at: datetime
    closed_at: datetime | None = None


class Balance(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    currency: str
    balance: Money
    """Deposits + realised P&L - fees."""
    used: Money
    """Held by open positions (cost, margin or stake)."""
    available: Money


class Quote(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str
    bid: Decimal
    ask: Decimal
    time: datetime
    """When the venue priced it, on the venue's clock."""
    market_open: bool = True
    """False while the market is closed: the quote is the last one, not a price to trade at."""


class CandidateHint(msgspec.Struct, frozen=True, kw_only=True):
    """What is known of an order whose client id the venue cannot search."""

    account: str
    symbol: str
    side: Side
    quantity: Decimal
    since: datetime
    until: datetime
    tag: str = ""


# Write results ------------------------------------------------------------------


class Accepted(msgspec.Struct, frozen=True, kw_only=True, tag="accepted"):
    broker_ref: str
    fills: tuple[Fill, ...] = ()


class Rejected(msgspec.Struct, frozen=True, kw_only=True, tag="rejected"):
    reason: str


class Unknown(msgspec.Struct, frozen=True, kw_only=True, tag="unknown"):
    """The write may or may not have happened: only a read can tell."""

    cause: str


WriteResult = Accepted | Rejected | Unknown


# Lookup results -----------------------------------------------------------------


class Found(msgspec.Struct, frozen=True, kw_only=True, tag="found"):
    order: Order
    fills: tuple[Fill, ...]


class NotFound(msgspec.Struct, frozen=True, kw_only=True, tag="not_found"):
    authoritative: bool
    """True when the broker's history covers the id and it is not there.

    Even then, a caller trusts it only once `visibility_lag` has passed
    since the write it is asking about.
    """


class LookupUnsupported(msgspec.Struct, frozen=True, kw_only=True, tag="unsupported"):
    pass


LookupResult = Found | NotFound | LookupUnsupported


class Broker(Protocol):
    """The port every broker adapter implements."""

    @property
    def capabilities(self) -> Capabilities: ...

    async def submit(self, order: OrderRequest) -> WriteResult: ...

    async def amend_protection(self, request: ProtectionRequest) -> WriteResult: ...

    async def cancel(self, client_id: str, account: str) -> WriteResult: ...

    async def lookup(self, client_id: str) -> LookupResult: ...

    async def find_candidates(self, hint: CandidateHint) -> list[Order]: ...

    async def open_orders(self) -> list[Order]: ...

    async def positions(self) -> list[BrokerPosition]: ...

    async def fills(self, since: datetime | None = None) -> list[Fill]: ...

    async def account(self) -> list[Balance]: ...

    async def quote(self, symbol: str) -> Quote: ...

    async def instrument(self, symbol: str) -> Instrument | None:
        """The venue's terms for `symbol` (tick, step, contract size, funding), if it trades it."""
        ...

    async def server_time(self) -> datetime: ...

    async def wait_until(self, moment: datetime) -> None:
        """Return once the broker's clock reads `moment` or later.

        How recovery lets a venue's visibility lag pass, measured on the
        venue's own clock rather than ours.
        """
        ...


class LedgerStore(Protocol):
    """Where the aggregates live. Synchronous: only the engine's writer thread calls it."""

    def save(self, *aggregates: Aggregate) -> None:
        """Store the pending events of `aggregates` in one durable transaction."""
        ...

    def get(self, aggregate_class: type[A], aggregate_id: UUID) -> A | None:
        """The aggregate as stored, or None if it has no events."""
        ...

    def refreshed(self, aggregate_class: type[A], aggregate_id: UUID, known: A | None) -> A | None:
        """`known` (an earlier `get` of it, or None) with the events stored since applied.

        Reads only what was stored after `known`: for an aggregate other
        processes may write, checked on every batch.
        """
        ...

    def unfinished_intents(self) -> list[UUID]:
        """Every intent that has not reached a terminal status, oldest first."""
        ...

    def open_positions(self) -> list[UUID]:
        """Every position not closed yet, oldest first."""
        ...

    def accounts(self) -> list[UUID]:
        """Every account, oldest first."""
        ...

    def lease(self, holder: str) -> AbstractContextManager[int]:
        """Hold the single-writer lease while the context lasts; yields the new epoch.

        Raises `LeaseHeld` naming the holder when another engine has it.
        """
        ...


class Observer(Protocol):
    """What the engine reports as it works (for metrics); nothing it reports changes its course."""

    def operation(self, name: str, outcome: str) -> None:
        """An operation (deposit, open, ...) ended: completed, rejected, refused, unknown, ..."""
        ...

    def broker_call(self, seconds: float) -> None: ...

    def commit(self, commands: int, seconds: float) -> None:
        """The writer committed one batch of `commands` in `seconds`."""
        ...


class Unobserved:
    """The observer when nobody watches."""

    def operation(self, name: str, outcome: str) -> None:
        pass

    def broker_call(self, seconds: float) -> None:
        pass

    def commit(self, commands: int, seconds: float) -> None:
        pass
