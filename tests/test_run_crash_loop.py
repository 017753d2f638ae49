"""`ledger run --demo` killed (SIGKILL) at random moments, again and again.

After every kill: no client id twice at the broker, every broker order
traceable to an intent in the ledger, and no reservation without an
intent in flight. At the end `ledger recover` runs, and the ledger then
agrees with the broker: the same open positions, the same balances, and
nothing in flight. LEDGER_CRASH_LOOPS raises the number of kills.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import anyio

from adapters.paper.broker import PaperBroker
from adapters.store import Store
from ledger.account import Account, account_id
from ledger.client_ids import parse_client_id
from ledger.demo import DEMO_ACCOUNTS
from ledger.intent import Intent
from tests.agreement import assert_agrees
from tests.test_cli import LEDGER

LOOPS = int(os.environ.get("LEDGER_CRASH_LOOPS", "4"))
FAULTS = (
    "timeout_before_accept:0.05,timeout_after_accept:0.05,duplicate_ack:0.05,"
    "partial_fill:0.05,reject_sl_change:0.05,crash_after_accept:0.01"
)


def test_the_demo_survives_being_killed_at_random_moments(tmp_path):
    store_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    broker_path = tmp_path / "broker.db"
    moments = random.Random(LOOPS)  # noqa: S311 - when to kill, not a secret
    orders = 0
    for loop in range(LOOPS):
        broker_url = f"paper:///{broker_path}?seed=9&faults={FAULTS}"
        with subprocess.Popen(
            [str(LEDGER), "run", "--demo", "--seed", str(loop), "--store", store_url],
            env={**os.environ, "LEDGER_BROKER": broker_url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ) as demo:
            time.sleep(moments.uniform(0.8, 2.5))
            demo.send_signal(signal.SIGKILL)
            _, errors = demo.communicate()
        assert demo.returncode == -signal.SIGKILL, errors
        orders = check_consistent(store_url, f"paper:///{broker_path}?seed=9")
    assert orders > LOOPS, "the demo must have traded between the kills"
    clean_broker = f"paper:///{broker_path}?seed=9"
    recovered = subprocess.run(
        [str(LEDGER), "recover", "--json", "--store", store_url, "--broker", clean_broker],
        capture_output=True,
        text=True,
        check=False,
    )
    assert recovered.returncode in {0, 3}, recovered.stderr
    check_agrees_with_broker(store_url, clean_broker)


def check_agrees_with_broker(store_url: str, broker_url: str) -> None:
    """Open positions and balances equal the broker's; nothing left in flight."""

    async def broker_state() -> tuple[list, list]:
        with PaperBroker.open(broker_url, start_session=False) as broker:
            return await broker.positions(), await broker.account()

    positions, balances = anyio.run(broker_state)
    with Store.open(store_url) as store:
        assert_agrees(store, positions)
        for balance in balances:
            account = store.get(Account, account_id(balance.account))
            assert account is not None
            assert account.total == balance.balance, balance.account


def check_consistent(store_url: str, broker_url: str) -> int:
    """Check the ledger against the broker; return how many orders the broker has."""

    async def broker_orders() -> list:
        with PaperBroker.open(broker_url, start_session=False) as broker:
            return await broker.all_orders()

    orders = anyio.run(broker_orders)
    client_ids = [order.client_id for order in orders]
    assert len(client_ids) == len(set(client_ids)), "a client id reached the broker twice"
    with Store.open(store_url) as store:
        for client_id in client_ids:
            parts = parse_client_id(client_id or "")
            assert parts is not None, f"order {client_id} is not the ledger's"
            assert store.get(Intent, parts.intent_id) is not None, f"no intent for {client_id}"
        unfinished = set(store.unfinished_intents())
        for name in DEMO_ACCOUNTS:
            account = store.get(Account, account_id(name))
            if account is not None:
                assert set(account.reservations) <= unfinished
    return len(orders)
