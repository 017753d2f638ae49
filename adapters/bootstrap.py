"""Build an engine from URLs: the store and the broker, chosen in one place.

from adapters.bootstrap import open_engine

async with open_engine(store="sqlite:///./ledger.db", broker="paper:///./paper.db") as engine:
    await engine.deposit("main", "10000", "USD")
    await engine.open_position("main", "BTCUSD", "long", "0.01", stop_loss="60000")
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import anyio.to_thread

from adapters.paper.broker import PaperBroker
from adapters.paper.settings import DEFAULT_BROKER_URL
from adapters.store import DEFAULT_STORE_URL
from ledger.engine import BROKER_TIMEOUT_SECONDS, Engine
from ledger.ports import Observer
from projections.live import ViewIndexedStore
from projections.seals import seal
from recovery.recover import recover_at_startup

Startup = Callable[[Engine], Awaitable[object]]


def process_name() -> str:
    """How this process names itself when it holds a store's lease."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


@asynccontextmanager
async def open_engine(
    store: str = DEFAULT_STORE_URL,
    broker: str = DEFAULT_BROKER_URL,
    *,
    startup: Startup = recover_at_startup,
    broker_timeout: float = BROKER_TIMEOUT_SECONDS,
    observer: Observer | None = None,
) -> AsyncIterator[Engine]:
    """Open the store and the broker, take the lease, recover, and run an engine on them.

    `startup` runs before the engine serves: startup recovery, unless the
    caller runs its own reconciliation instead.
    """
    with (
        ViewIndexedStore.open(store) as opened_store,
        PaperBroker.open(broker) as opened_broker,
    ):
        async with Engine.open(
            opened_store,
            opened_broker,
            holder=process_name(),
            startup=startup,
            broker_timeout=broker_timeout,
            observer=observer,
        ) as engine:
            yield engine
            # A session that ends well seals what it wrote: the chain's head at its end.
            await anyio.to_thread.run_sync(partial(seal, opened_store, final=True))
