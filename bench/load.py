"""Durable throughput and latency: open/close cycles, through the engine and the naive baseline.

Each worker opens a small position and closes it again, over and over,
for a fixed number of cycles; every operation is timed from the call to
the durable commit that decides it. The paper broker keeps its books in
memory, so the figures are the ledger's, not the broker's.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from datetime import timedelta
from decimal import Decimal
from typing import TypeVar
from uuid import UUID

import anyio
from eventsourcing.application import Application

from adapters.paper.broker import PaperBroker
from adapters.store import parse_store_url
from bench.measure import percentile
from bench.naive import NaiveLedger
from ledger.engine import Engine
from ledger.money import Money
from projections.live import ViewIndexedStore
from recovery.recover import recover_at_startup

T = TypeVar("T")

SYMBOL = "EURUSD"
QUANTITY = Decimal(1000)
FUNDS = "100000000"
QUOTE_AGE_MAX = timedelta(days=1)
"""The paper clock steps on every order, so with hundreds of workers an open's quote can be
minutes old on that clock by the time it is checked; a benchmark measures the ledger, not this."""


class Load:
    """Operations per second, and each operation's latency in seconds."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.seconds = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def p(self, share: float) -> float:
        return percentile(self.latencies, share)


def broker_url(latency_ms: int = 0) -> str:
    query = "seed=1" + (f"&latency_ms={latency_ms}" if latency_ms else "")
    return f"paper:///:memory:?{query}"


async def _timed(load: Load, call: Awaitable[T]) -> T:
    started = time.perf_counter()
    result = await call
    load.latencies.append(time.perf_counter() - started)
    return result


async def engine_cycles(
    store_url: str, *, concurrency: int, cycles: int, latency_ms: int = 0
) -> Load:
    """`cycles` open/close cycles in all, by `concurrency` workers, through one engine."""
    load = Load()
    # One account per worker: the broker nets positions per account and symbol.
    accounts = [f"bench{worker}" for worker in range(concurrency)]
    per_worker = max(1, cycles // concurrency)
    with (
        ViewIndexedStore.open(store_url) as store,
        PaperBroker.open(broker_url(latency_ms)) as broker,
    ):
        for account in accounts:
            await broker.fund(account, Money.parse(FUNDS, "USD"))
        async with Engine.open(
            store,
            broker,
            holder="bench",
            startup=recover_at_startup,
            quote_age_max=QUOTE_AGE_MAX,
        ) as engine:
            for account in accounts:
                await engine.deposit(account, FUNDS, "USD")
            await engine.instrument(SYMBOL)

            async def worker(account: str) -> None:
                for _ in range(per_worker):
                    opened = await _timed(
                        load, engine.open_position(account, SYMBOL, "long", QUANTITY)
                    )
                    if opened.position_id is None:
                        raise TypeError(f"an open without a position: {opened}")
                    await _timed(load, engine.close_position(opened.position_id))

            started = time.perf_counter()
            async with anyio.create_task_group() as tasks:
                for account in accounts:
                    tasks.start_soon(worker, account)
            load.seconds = time.perf_counter() - started
    return load


async def naive_cycles(store_url: str, *, cycles: int) -> Load:
    """The naive baseline: `cycles` open/close cycles, one after another."""
    load = Load()
    location = parse_store_url(store_url)
    application: Application[UUID] = Application(env=location.environment)
    with PaperBroker.open(broker_url()) as broker:
        await broker.fund("naive", Money.parse(FUNDS, "USD"))
        ledger = NaiveLedger(application, broker, "naive")
        started = time.perf_counter()
        for _ in range(cycles):
            position = await _timed(load, ledger.open(SYMBOL, QUANTITY))
            await _timed(load, ledger.close(position))
        load.seconds = time.perf_counter() - started
    application.close()
    return load
