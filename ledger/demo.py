"""A paper-trading session that exercises the engine the way a busy bot would.

Many concurrent traders open positions with a stop-loss, trail their
stops as prices move, take profit and close, all through the engine, so
every operation is a write-ahead intent. The traders' decisions come from
a seeded generator; the prices and faults come from the broker.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from uuid import UUID

import anyio

from ledger.engine import Engine
from ledger.errors import LedgerError, OperationRejected, OutcomeUnknown
from ledger.instruments import Instrument, Side
from ledger.money import Money
from ledger.ports import Broker

DEMO_ACCOUNTS = ("demo-1", "demo-2")
DEMO_SYMBOLS = ("BTCUSD", "ETHUSD", "EURUSD", "US500")
DEMO_DEPOSIT = Money(amount=Decimal(1_000_000), currency="USD")
TRADERS = 16
POSITIONS_PER_TRADER_MAX = 3
# A stop this far from the price (as a fraction) rarely triggers at once.
STOP_DISTANCE = Decimal("0.01")
PAUSE_SECONDS = 0.01


@dataclass
class DemoStatistics:
    """What the session did, for the live view and the summary."""

    started: float = field(default_factory=time.monotonic)
    opened: int = 0
    closed: int = 0
    stops_moved: int = 0
    rejected: int = 0
    unknown: int = 0
    in_flight: int = 0
    open_positions: dict[UUID, str] = field(default_factory=dict)

    @property
    def operations(self) -> int:
        return self.opened + self.closed + self.stops_moved + self.rejected + self.unknown

    def per_second(self) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return self.operations / elapsed


Fund = Callable[[str, Money], Awaitable[None]]


async def prepare_accounts(engine: Engine, broker: Broker, fund_broker: Fund) -> None:
    """Fund the demo accounts at the broker and in the ledger, where they are not yet.

    Each side is checked on its own: a crash between funding the broker and
    the ledger's deposit must not leave an account the demo cannot use.
    """
    at_broker = {balance.account for balance in await broker.account()}
    for account in DEMO_ACCOUNTS:
        if account not in at_broker:
            await fund_broker(account, DEMO_DEPOSIT)
        if await engine.account(account) is None:
            await engine.deposit(account, DEMO_DEPOSIT.amount, DEMO_DEPOSIT.currency)


async def run_demo(
    engine: Engine,
    broker: Broker,
    *,
    seed: int,
    stop: anyio.Event,
    statistics: DemoStatistics,
    traders: int = TRADERS,
) -> None:
    """Trade until `stop` is set; each trader finishes the operation it is in."""
    async with anyio.create_task_group() as tasks:
        for number in range(traders):
            trader = Trader(engine, broker, random.Random(f"{seed}/{number}"), statistics)  # noqa: S311
            tasks.start_soon(trader.run, stop)


@dataclass
class Trader:
    engine: Engine
    broker: Broker
    choices: random.Random
    statistics: DemoStatistics
    positions: dict[UUID, tuple[Instrument, Side]] = field(default_factory=dict)

    async def run(self, stop: anyio.Event) -> None:
        while not stop.is_set():
            self.statistics.in_flight += 1
            try:
                await self.act()
            except OperationRejected:
                self.statistics.rejected += 1
            except OutcomeUnknown:
                self.statistics.unknown += 1
            except LedgerError:
                # The position is gone (closed by its stop at the broker): forget it.
                self.statistics.rejected += 1
            finally:
                self.statistics.in_flight -= 1
            await anyio.sleep(PAUSE_SECONDS)

    async def act(self) -> None:
        if len(self.positions) < POSITIONS_PER_TRADER_MAX and self.choices.random() < 0.5:
            await self.open()
        elif self.positions:
            position = self.choices.choice(sorted(self.positions))
            if self.choices.random() < 0.6:
                await self.trail(position)
            else:
                await self.close(position)

    async def open(self) -> None:
        symbol = self.choices.choice(DEMO_SYMBOLS)
        instrument = await self.engine.instrument(symbol)
        side = self.choices.choice([Side.LONG, Side.SHORT])
        quote = await self.broker.quote(symbol)
        price = quote.ask if side is Side.LONG else quote.bid
        stop = _on_tick(price * (1 - STOP_DISTANCE * side.sign), instrument)
        account = self.choices.choice(DEMO_ACCOUNTS)
        quantity = instrument.quantity_step * self.choices.randint(1, 10)
        result = await self.engine.open_position(account, symbol, side, quantity, stop_loss=stop)
        assert result.position_id is not None  # noqa: S101 - an open always names it
        self.positions[result.position_id] = (instrument, side)
        self.statistics.open_positions[result.position_id] = symbol
        self.statistics.opened += 1

    async def trail(self, position: UUID) -> None:
        instrument, side = self.positions[position]
        quote = await self.broker.quote(instrument.symbol)
        price = quote.bid if side is Side.LONG else quote.ask
        stop = _on_tick(price * (1 - STOP_DISTANCE * side.sign / 2), instrument)
        try:
            await self.engine.change_stop_loss(position, stop)
        except LedgerError:
            self.forget(position)
            raise
        self.statistics.stops_moved += 1

    async def close(self, position: UUID) -> None:
        try:
            await self.engine.close_position(position)
        finally:
            self.forget(position)
        self.statistics.closed += 1

    def forget(self, position: UUID) -> None:
        self.positions.pop(position, None)
        self.statistics.open_positions.pop(position, None)


def _on_tick(price: Decimal, instrument: Instrument) -> Decimal:
    return (price / instrument.price_tick).to_integral_value() * instrument.price_tick
