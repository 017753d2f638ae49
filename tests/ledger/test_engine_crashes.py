"""A real engine process killed (SIGKILL) at every point of an operation's path.

After each crash a fresh engine starts on the same store and broker: no
acknowledged operation is lost, no terminal intent keeps a reservation,
and no write is sent twice.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import anyio
import pytest

from adapters.bootstrap import open_engine
from adapters.paper.broker import PaperBroker
from adapters.store import Store
from ledger.account import Account, account_id
from ledger.client_ids import parse_client_id
from ledger.intent import Intent, IntentStatus
from ledger.money import Money
from ledger.position import Position
from tests.agreement import assert_audit_clean

ROOT = Path(__file__).resolve().parents[2]

# The child deposits, then opens a position, printing what was acknowledged,
# then waits to be killed (unless the broker kills it first).
CHILD = textwrap.dedent(
    """
    import sys, time
    import anyio
    from adapters.bootstrap import open_engine
    from ledger.errors import OutcomeUnknown

    async def main(store, broker, point):
        async with open_engine(store=store, broker=broker) as engine:
            result = await engine.deposit("main", "100000", "USD")
            print("ack deposit", result.intent_id, flush=True)
            if point == "before_commit_1":
                print("waiting", flush=True)
                time.sleep(60)
            try:
                opened = await engine.open_position("main", "BTCUSD", "long", "0.1")
            except OutcomeUnknown as unknown:
                print("unknown", unknown.intent_id, flush=True)
            else:
                print("ack open", opened.intent_id, opened.position_id, flush=True)
            print("waiting", flush=True)
            time.sleep(60)

    anyio.run(main, *sys.argv[1:4])
    """
)

FAULTS = {
    "before_commit_1": "",
    "after_commit_1": "timeout_before_accept:1",
    "after_broker_accepted": "crash_after_accept:1",
    "after_commit_2": "",
}


def crash(store_url: str, broker_url: str, point: str) -> list[list[str]]:
    """Run the child to `point`, kill it, and return what it acknowledged."""
    lines: list[list[str]] = []
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, store_url, broker_url, point],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        for line in child.stdout:
            if line.strip() == "waiting":
                child.send_signal(signal.SIGKILL)
                break
            lines.append(line.split())
        child.wait()
    assert child.returncode == -signal.SIGKILL
    return lines


@pytest.mark.parametrize("point", list(FAULTS))
def test_a_crash_at_any_point_loses_nothing_acknowledged_and_sends_nothing_twice(tmp_path, point):
    store_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    clean_broker = f"paper:///{tmp_path / 'broker.db'}?seed=4"
    faults = FAULTS[point]
    broker_url = f"{clean_broker}&faults={faults}" if faults else clean_broker

    async def fund() -> None:
        with PaperBroker.open(clean_broker) as broker:
            await broker.fund("main", Money.parse("1000000", "USD"))

    anyio.run(fund)
    acknowledged = crash(store_url, broker_url, point)

    async def restart() -> None:
        async with open_engine(store=store_url, broker=clean_broker) as engine:
            await engine.deposit("main", "1", "USD")
            assert isinstance(engine.broker, PaperBroker)
            orders = await engine.broker.all_orders()
        check(store_url, acknowledged, orders, point)

    anyio.run(restart)


def check(store_url: str, acknowledged: list[list[str]], orders: list, point: str) -> None:
    with Store.open(store_url) as store:
        unfinished = set(store.unfinished_intents())
        for line in acknowledged:
            if line[:2] == ["ack", "deposit"]:
                intent = store.get(Intent, UUID(line[2]))
                assert intent is not None
                assert intent.status is IntentStatus.COMPLETED
            if line[:2] == ["ack", "open"]:
                position = store.get(Position, UUID(line[3]))
                assert position is not None
                assert position.is_open
        account = store.get(Account, account_id("main"))
        assert account is not None
        # No terminal intent holds a reservation; every reservation is in flight.
        assert set(account.reservations) <= unfinished
        client_ids = [order.client_id for order in orders]
        assert len(client_ids) == len(set(client_ids)), "a write was sent twice"
        for client_id in client_ids:
            parts = parse_client_id(client_id)
            assert parts is not None
            assert store.get(Intent, parts.intent_id) is not None
        # Startup recovery settled what the crash left in flight, from evidence.
        assert unfinished == set()
        positions = [store.get(Position, p) for p in store.open_positions()]
        if point in {"before_commit_1", "after_commit_1"}:
            assert orders == []
            assert positions == []
        else:
            (held,) = positions
            assert held is not None
            assert held.quantity == Decimal("0.1")
            assert held.broker_ref == orders[0].position_ref
        assert len(orders) == {"before_commit_1": 0, "after_commit_1": 0}.get(point, 1)
        assert_audit_clean(store)
