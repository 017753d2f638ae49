"""The single-writer lease on SQLite and PostgreSQL, and the engine on both."""

from __future__ import annotations

from decimal import Decimal

import anyio
import pytest

from adapters.paper.broker import PaperBroker
from adapters.store import Store
from ledger.account import Account, account_id
from ledger.engine import Engine
from ledger.errors import LeaseHeld
from ledger.money import Money


def test_one_holder_at_a_time_and_each_lease_a_new_epoch(store_url):
    with Store.open(store_url) as first, Store.open(store_url) as second:
        with (
            first.lease("pid 1 on alpha") as epoch,
            pytest.raises(LeaseHeld, match=r"in use by another engine.*pid 1 on alpha"),
            second.lease("pid 2 on beta"),
        ):
            pass
        with second.lease("pid 2 on beta") as next_epoch:
            assert next_epoch == epoch + 1


def test_the_engine_trades_on_either_store(store_url, tmp_path):
    broker_url = f"paper:///{tmp_path / 'broker.db'}?seed=2"

    async def trade() -> None:
        with Store.open(store_url) as store, PaperBroker.open(broker_url) as broker:
            await broker.fund("main", Money.parse("100000", "USD"))
            async with Engine.open(store, broker, holder="test") as engine:
                await engine.deposit("main", "50000", "USD")
                opened = await engine.open_position("main", "ETHUSD", "long", "2")
                closed = await engine.close_position(opened.position_id)
            account = store.get(Account, account_id("main"))
            assert account is not None
            assert account.committed.is_zero
            assert account.reserved.is_zero
            assert closed.pnl is not None
            fees = Decimal(50000) - account.total.amount + closed.pnl.amount
            assert fees > 0

    anyio.run(trade)
