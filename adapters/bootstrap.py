"""Build an engine from URLs: the store and the broker, chosen in one place.

from adapters.bootstrap import open_engine

async with open_engine(store="sqlite:///./ledger.db", broker="paper:///./paper.db") as engine:
    await engine.deposit("main", "10000", "USD")
    await engine.open_position("main", "BTCUSD", "long", "0.01", stop_loss="60000")
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from adapters.paper.broker import PaperBroker
from adapters.paper.settings import DEFAULT_BROKER_URL
from adapters.store import DEFAULT_STORE_URL, Store
from ledger.engine import Engine


def process_name() -> str:
    """How this process names itself when it holds a store's lease."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


@asynccontextmanager
async def open_engine(
    store: str = DEFAULT_STORE_URL, broker: str = DEFAULT_BROKER_URL, **options: object
) -> AsyncIterator[Engine]:
    """Open the store and the broker, take the lease, and run an engine on them."""
    with Store.open(store) as opened_store, PaperBroker.open(broker) as opened_broker:
        async with Engine.open(
            opened_store, opened_broker, holder=process_name(), **options
        ) as engine:
            yield engine
