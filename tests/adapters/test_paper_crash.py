"""A real `kill -9` in the middle of a stream of writes loses nothing acknowledged."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from adapters.paper.broker import PaperBroker
from ledger.money import Money
from ledger.ports import Found

ACKNOWLEDGED_BEFORE_KILL = 40

WRITER = textwrap.dedent(
    """
    import sys
    from decimal import Decimal
    import anyio
    from adapters.paper.broker import PaperBroker
    from ledger.instruments import Side
    from ledger.money import Money
    from ledger.ports import Accepted, OrderAction, OrderRequest

    async def main(url):
        broker = PaperBroker.open(url)
        await broker.fund("main", Money.parse("1000000", "USD"))
        print("funded", flush=True)
        number = 0
        while True:
            number += 1
            positions = await broker.positions()
            if positions and number % 2 == 0:
                held = positions[0]
                order = OrderRequest(
                    client_id=f"c{number}", account="main", action=OrderAction.CLOSE,
                    symbol=held.symbol, side=held.side, quantity=held.quantity,
                    position_ref=held.broker_ref,
                )
            else:
                order = OrderRequest(
                    client_id=f"c{number}", account="main", action=OrderAction.OPEN,
                    symbol="BTCUSD", side=Side.LONG, quantity=Decimal("0.01"),
                )
            result = await broker.submit(order)
            if isinstance(result, Accepted):
                print("ack", order.client_id, result.broker_ref, flush=True)

    anyio.run(main, sys.argv[1])
    """
)


def test_every_acknowledged_write_survives_a_kill_9(tmp_path):
    path = tmp_path / "broker.db"
    url = f"paper:///{path}?seed=3"
    root = Path(__file__).resolve().parents[2]
    acknowledged: dict[str, str] = {}
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, url],
        cwd=root,
        env={"PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        text=True,
    ) as writer:
        assert writer.stdout is not None
        try:
            assert writer.stdout.readline().strip() == "funded"
            while len(acknowledged) < ACKNOWLEDGED_BEFORE_KILL:
                line = writer.stdout.readline()
                assert line.startswith("ack "), line
                _, client_id, broker_ref = line.split()
                acknowledged[client_id] = broker_ref
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
    assert writer.returncode == -signal.SIGKILL

    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    async def check() -> None:
        with PaperBroker.open(url) as broker:
            for client_id, broker_ref in acknowledged.items():
                found = await broker.lookup(client_id)
                assert isinstance(found, Found), client_id
                assert found.order.broker_ref == broker_ref
                assert found.order.filled_quantity == found.order.quantity
            fills = await broker.fills()
            (balance,) = await broker.account()
            realised = sum((fill.pnl.amount for fill in fills if fill.pnl), Decimal(0))
            fees = sum((fill.fee.amount for fill in fills), Decimal(0))
            assert balance.balance.amount == Decimal(1000000) + realised - fees
            assert all(position.quantity > 0 for position in await broker.positions())

    anyio.run(check)


@pytest.mark.parametrize("scope", ["forever", "open_only"])
def test_a_reopened_broker_keeps_its_balances(tmp_path, scope):
    url = f"paper:///{tmp_path / 'broker.db'}?seed=5&scope={scope}"

    async def first() -> None:
        with PaperBroker.open(url) as broker:
            await broker.fund("main", Money.parse("1000", "USD"))

    async def second() -> None:
        with PaperBroker.open(url) as broker:
            (balance,) = await broker.account()
            assert balance.balance.amount == Decimal("1000.00")

    anyio.run(first)
    anyio.run(second)
