"""`/ready` says false, and operations are refused, until startup recovery has finished."""

from __future__ import annotations

import time

import anyio
import pytest

from adapters.bootstrap import open_engine
from adapters.paper.broker import PaperBroker
from ledger.errors import OutcomeUnknown
from ledger.money import Money
from tests.adapters.http.running import RunningEngine

LATENCY_MS = 400
"""Each broker call takes this long: recovery's reads take seconds, long enough to watch."""


def leave_an_intent_in_flight(engine: RunningEngine) -> None:
    """An open whose answer is lost before the broker took it: recovery must decide it."""

    async def crash_course() -> None:
        with PaperBroker.open(f"paper:///{engine.folder / 'broker.db'}") as broker:
            await broker.fund("main", Money.parse("100000", "USD"))
        lossy = f"paper:///{engine.folder / 'broker.db'}?faults=timeout_before_accept:1"
        async with open_engine(store=engine.store_url, broker=lossy, startup=None) as ledger:
            await ledger.deposit("main", "100000", "USD")
            with pytest.raises(OutcomeUnknown):
                await ledger.open_position("main", "BTCUSD", "long", "0.01")

    anyio.run(crash_course)


def test_ready_is_false_until_recovery_has_finished(tmp_path):
    engine = RunningEngine(tmp_path, broker_query=f"?latency_ms={LATENCY_MS}")
    leave_an_intent_in_flight(engine)
    with engine:
        # The API answers as soon as the lease is held, while recovery reads the broker.
        started = time.monotonic()
        waiting = engine.call("GET", "/ready")
        assert waiting.status_code == 503
        assert waiting.json() == {"ready": False, "epoch": 2}
        refused = engine.call(
            "POST", "/deposits", body={"account": "main", "amount": "1", "currency": "USD"}
        )
        assert refused.status_code == 503
        assert refused.json()["code"] == "not_ready"
        assert engine.call("GET", "/health", who=None).status_code == 200
        engine.wait_ready()
        assert time.monotonic() - started > 1  # it did wait for recovery
        assert engine.call("GET", "/ready").json() == {"ready": True, "epoch": 2}
        assert engine.call("GET", "/wal/pending").json() == []
