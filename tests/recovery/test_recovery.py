"""Startup recovery after a real crash (SIGKILL), under every fault of the paper broker.

A child process runs an engine against a faulty broker until it is killed,
by the broker's crash_after_accept or by the test once it is done. The
broker then starts a session with its faults (what happens while no
engine is connected), and an engine on the same files without the faults
recovers. Afterwards the ledger and the broker agree: the same open
positions with the same levels, the same balance to the cent, no intent
left in flight, and no client id used twice.

The helpers here are shared by the other recovery tests.
"""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import anyio
import anyio.to_thread
import pytest

from adapters.bootstrap import open_engine
from adapters.paper.broker import PaperBroker
from adapters.paper.settings import Fault
from adapters.store import Store
from ledger.account import Account
from ledger.catalogue import EVENT_TYPES
from ledger.engine import Engine
from ledger.errors import Frozen
from ledger.events import Event
from ledger.intent import (
    CloseRequest,
    Intent,
    IntentKind,
    IntentRecorded,
    IntentStatus,
    OpenRequest,
    ProtectionChange,
)
from ledger.money import Money
from ledger.ports import ClientIdScope, Fill, FillReason
from ledger.position import Position
from ledger.reconciliation import Finding, Item, Trigger
from ledger.writer import UnitOfWork
from recovery.context import Apply
from recovery.recover import Report, reconcile, recover_at_startup
from tests.agreement import assert_agrees

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
SEED = 3
ACCOUNT = "main"
DEPOSIT = "100000"
# symbol:side:quantity, opened in this order with a stop-loss and a take-profit each.
TRADES = "BTCUSD:long:0.1,ETHUSD:short:1,US500:long:1"
# How many of the opened positions then get a tighter stop-loss.
MOVES = 2
CHILD_WATCHDOG_SECONDS = 120

# The child opens an engine (with its startup recovery), deposits, opens the
# trades with levels on the protective side of the broker's quote, tightens
# some stop-losses, prints what it was told, and waits to be killed.
CHILD = textwrap.dedent(
    """
    import sys, time
    from decimal import Decimal
    import anyio
    from adapters.bootstrap import open_engine
    from ledger.errors import LedgerError, OutcomeUnknown
    from ledger.instruments import Side

    DISTANCE = {"BTCUSD": Decimal("2000"), "ETHUSD": Decimal("100"), "US500": Decimal("100")}

    def levels(quote, side, distance):
        if side is Side.LONG:
            return quote.bid - distance, quote.ask + distance
        return quote.ask + distance, quote.bid - distance

    async def attempt(operation, done):
        try:
            result = await operation
        except OutcomeUnknown as unknown:
            print("unknown", unknown.intent_id, flush=True)
        except LedgerError as error:
            print("refused", type(error).__name__, flush=True)
        else:
            print(done, result.position_id, flush=True)
            return result
        return None

    async def main(store, broker, deposit, trades, moves):
        async with open_engine(store=store, broker=broker) as engine:
            if deposit != "0":
                await engine.deposit("main", deposit, "USD")
            opened = []
            for trade in filter(None, trades.split(",")):
                symbol, side, quantity = trade.split(":")
                side, distance = Side(side), DISTANCE[symbol]
                stop, target = levels(await engine.broker.quote(symbol), side, distance)
                operation = engine.open_position(
                    "main", symbol, side, quantity, stop_loss=stop, take_profit=target
                )
                result = await attempt(operation, "opened")
                if result is not None:
                    opened.append((result.position_id, symbol, side, distance))
            for position_id, symbol, side, distance in opened[: int(moves)]:
                stop, _ = levels(await engine.broker.quote(symbol), side, distance / 2)
                await attempt(engine.change_stop_loss(position_id, stop), "moved")
            print("done", flush=True)
            time.sleep(600)

    anyio.run(main, *sys.argv[1:6])
    """
)


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Venue:
    """A ledger store and a paper broker's file; the broker's URL with and without faults."""

    def __init__(
        self,
        folder: Path,
        *,
        store_url: str | None = None,
        scope: ClientIdScope = ClientIdScope.FOREVER,
        faults: str = "",
        lag_seconds: int = 0,
    ) -> None:
        self.store_url = store_url or f"sqlite:///{folder / 'ledger.db'}"
        lag = f"&lag_seconds={lag_seconds}" if lag_seconds else ""
        query = f"seed={SEED}&scope={scope}{lag}"
        self.broker_url = f"paper:///{folder / 'broker.db'}?{query}"
        self.faulty_url = f"{self.broker_url}&faults={faults}" if faults else self.broker_url

    async def fund(self, amount: str = DEPOSIT) -> None:
        with PaperBroker.open(self.broker_url) as broker:
            await broker.fund(ACCOUNT, Money.parse(amount, "USD"))

    async def crash(
        self, *, trades: str = TRADES, moves: int = MOVES, deposit: str = DEPOSIT
    ) -> list[list[str]]:
        """Run the child on the faulty broker until it is killed; return what it printed."""
        return await anyio.to_thread.run_sync(
            lambda: run_child(self.store_url, self.faulty_url, deposit, trades, moves)
        )

    def while_down(self) -> None:
        """A broker session starts with the faults: what happens while no engine is connected."""
        with PaperBroker.open(self.faulty_url):
            pass

    def engine(self, **options: Any):
        return open_engine(store=self.store_url, broker=self.broker_url, **options)

    def broker(self) -> PaperBroker:
        """The broker as an operator sees it: opening it starts no session."""
        return PaperBroker.open(self.broker_url, start_session=False)

    def store(self) -> Store:
        return Store.open(self.store_url)


def run_child(
    store_url: str, broker_url: str, deposit: str, trades: str, moves: int
) -> list[list[str]]:
    lines: list[list[str]] = []
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, store_url, broker_url, deposit, trades, str(moves)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        assert child.stderr is not None
        # A child that hangs is stopped with SIGTERM, which the assertion below tells apart.
        watchdog = threading.Timer(CHILD_WATCHDOG_SECONDS, child.terminate)
        watchdog.start()
        try:
            for line in child.stdout:
                lines.append(line.split())
                if line.strip() == "done":
                    child.send_signal(signal.SIGKILL)
                    break
            errors = child.stderr.read()
            child.wait()
        finally:
            watchdog.cancel()
    assert child.returncode == -signal.SIGKILL, errors
    return lines


def printed(lines: list[list[str]], word: str) -> list[UUID]:
    """The ids the child printed after `word` (opened, moved, unknown)."""
    return [UUID(line[1]) for line in lines if line[0] == word and line[1] != "None"]


# Reading the ledger -------------------------------------------------------------------


def events_after(store_url: str, position: int) -> list[Event]:
    with Store.open(store_url) as store:
        notifications = store.application.recorder.select_notifications(
            start=position + 1, limit=100_000
        )
        events = []
        for notification in notifications:
            event = store.application.mapper.to_domain_event(notification)
            assert isinstance(event, Event)
            events.append(event)
        return events


def all_intents(store: Store) -> list[Intent]:
    topic = EVENT_TYPES.topic(IntentRecorded)
    recorded = store.application.recorder.select_notifications(
        start=1, limit=100_000, topics=[topic]
    )
    intents = [store.get(Intent, UUID(str(n.originator_id))) for n in recorded]
    return [intent for intent in intents if intent is not None]


async def committed(engine: Engine, read: Callable[[UnitOfWork], T]) -> T:
    """What `read` returns from the ledger as committed, read through the engine's writer."""
    return await engine.writer.execute(lambda unit: copy.deepcopy(read(unit)))


async def symbol_of(engine: Engine, intent: Intent) -> str:
    payload = intent.payload
    if isinstance(payload, OpenRequest):
        return payload.symbol
    assert isinstance(payload, CloseRequest | ProtectionChange)
    held = await committed(engine, lambda unit: unit.get(Position, payload.position_id))
    assert held is not None
    return held.instrument.symbol


async def assert_frozen_where_reviewing(engine: Engine) -> list[Intent]:
    """Every intent awaiting review freezes its account and symbol; returns those intents."""
    ids = await committed(engine, lambda _: engine.store.unfinished_intents())
    reviewing = []
    frozen: set[tuple[UUID, str]] = set()
    for intent_id in ids:
        intent = await committed(engine, lambda unit, i=intent_id: unit.get(Intent, i))
        assert intent is not None
        assert intent.status is IntentStatus.NEEDS_REVIEW, (intent.kind, intent.status)
        reviewing.append(intent)
        account = await committed(engine, lambda unit, a=intent.account_id: unit.get(Account, a))
        assert account is not None
        symbol = await symbol_of(engine, intent)
        assert engine.frozen[intent.account_id, symbol] == intent.id
        frozen.add((intent.account_id, symbol))
        step = (await engine.instrument(symbol)).quantity_step
        with pytest.raises(Frozen, match=rf"writes on {symbol} in this account are frozen"):
            await engine.open_position(account.name, symbol, "long", step)
    assert set(engine.frozen) == frozen
    return reviewing


async def assert_ledger_matches_broker(venue: Venue) -> None:
    """Same open positions and levels, same balances, nothing in flight, no client id twice."""
    with venue.store() as store, venue.broker() as broker:
        assert_agrees(store, await broker.positions())
        balances = {balance.account: balance.balance for balance in await broker.account()}
        for account_id in store.accounts():
            account = store.get(Account, account_id)
            assert account is not None
            assert account.total == balances[account.name], account.name
        client_ids = [o.client_id for o in await broker.all_orders() if o.client_id is not None]
        assert [c for c, n in Counter(client_ids).items() if n > 1] == []


# The matrix -------------------------------------------------------------------------

# Faults keyed by a client id (random per run) happen always, so every run is
# the same; the while-down faults are keyed by position and session, and the
# seed makes them hit some of the positions and spare others.
PROBABILITY = {Fault.STOP_HIT_WHILE_DOWN: "0.5", Fault.MANUAL_CLOSE: "0.5"}


@dataclass
class Observed:
    """What a run showed: the child's lines, the ledger's intents, the broker's books."""

    lines: list[list[str]]
    intents: list[Intent]
    fills: list[Fill]
    orders: list[dict[str, Any]]
    startup: Report
    operator: Report | None


def applied(report: Report, finding: Finding) -> list[Item]:
    return [item for item in report.items if item.finding is finding and item.applied]


def settled_by_recovery(intents: list[Intent], ids: list[UUID], status: IntentStatus) -> None:
    chosen = [intent for intent in intents if intent.id in ids]
    assert len(chosen) == len(ids) > 0
    for intent in chosen:
        assert intent.status is status
        assert intent.evidence[-1].source in {"lookup", "candidates", "positions"}


def assert_refused_before_commit_1(seen: Observed) -> None:
    """Every open was refused before commit 1: no intent, nothing at the broker."""
    assert [i for i in seen.intents if i.kind is IntentKind.POSITION_OPEN] == []
    assert seen.orders == []
    assert seen.lines.count(["refused", "Refused"]) == len(TRADES.split(","))


def assert_fault_happened(fault: Fault, seen: Observed) -> None:
    """The fault did what it does, so the case tests recovery from it and not from nothing."""
    opens = [i.id for i in seen.intents if i.kind is IntentKind.POSITION_OPEN]
    if fault is Fault.TIMEOUT_BEFORE_ACCEPT:
        assert seen.orders == []
        settled_by_recovery(seen.intents, opens, IntentStatus.ROLLED_BACK)
    elif fault is Fault.TIMEOUT_AFTER_ACCEPT:
        settled_by_recovery(seen.intents, printed(seen.lines, "unknown"), IntentStatus.COMPLETED)
    elif fault is Fault.CRASH_AFTER_ACCEPT:
        assert seen.lines == []
        settled_by_recovery(seen.intents, opens, IntentStatus.COMPLETED)
    elif fault is Fault.DUPLICATE_ACK:
        assert len({f.fill_id for f in seen.fills}) < len(seen.fills)
    elif fault is Fault.PARTIAL_FILL:
        assert max(Counter(f.order_ref for f in seen.fills).values()) > 1
        assert applied(seen.startup, Finding.FILL_RECORDED)
    elif fault is Fault.REJECT_SL_CHANGE:
        updates = [i for i in seen.intents if i.kind is IntentKind.POSITION_UPDATE]
        assert updates
        assert {i.status for i in updates} == {IntentStatus.FAILED}
    elif fault is Fault.SL_CHANGE_ACCEPTED_NOT_APPLIED:
        assert len(applied(seen.startup, Finding.PROTECTION_RESTORED)) == MOVES
    elif fault is Fault.LOOKUP_LAG:
        assert all(order["visible_step"] > order["created_step"] for order in seen.orders)
    elif fault in {Fault.STOP_HIT_WHILE_DOWN, Fault.MANUAL_CLOSE}:
        reason = FillReason.STOP_LOSS if fault is Fault.STOP_HIT_WHILE_DOWN else FillReason.MANUAL
        closed = [f for f in seen.fills if f.reason is reason]
        assert 0 < len(closed) < len(opens)
        assert len(applied(seen.startup, Finding.FILL_RECORDED)) == len(closed)
    else:
        assert fault is Fault.EXTERNAL_ORDER
        assert seen.operator is not None
        external = [i for i in seen.startup.items if i.finding is Finding.EXTERNAL]
        assert external
        assert not any(item.applied for item in external)
        adopted = applied(seen.operator, Finding.EXTERNAL)
        assert [i.subject for i in adopted] == [i.subject for i in external]


QUOTE_FAULTS = {Fault.STALE_QUOTE, Fault.MARKET_CLOSED}
"""Faults that refuse opens before anything is written: one client-id scope is enough."""

MATRIX = [
    pytest.param(
        fault,
        scope,
        id=f"{fault}-{scope}",
    )
    for fault in Fault
    for scope in ClientIdScope
    if fault not in QUOTE_FAULTS or scope is ClientIdScope.FOREVER
]


@pytest.mark.anyio
@pytest.mark.parametrize(("fault", "scope"), MATRIX)
async def test_after_a_crash_under_each_fault_the_ledger_matches_the_broker(tmp_path, fault, scope):
    lag = 5 if fault is Fault.LOOKUP_LAG else 0
    probability = PROBABILITY.get(fault, "1")
    venue = Venue(tmp_path, scope=scope, faults=f"{fault}:{probability}", lag_seconds=lag)
    await venue.fund()
    lines = await venue.crash()
    assert (["done"] in lines) is (fault is not Fault.CRASH_AFTER_ACCEPT)
    venue.while_down()
    reports: list[Report] = []

    async def recover(engine: Engine) -> None:
        reports.append(await recover_at_startup(engine))

    operator = None
    async with venue.engine(startup=recover) as engine:
        if fault is Fault.EXTERNAL_ORDER:
            # Adopting what the broker holds and the ledger does not is an operator's call.
            operator = await reconcile(engine, trigger=Trigger.OPERATOR, apply=Apply.ALL)
        await assert_frozen_where_reviewing(engine)
    await assert_ledger_matches_broker(venue)
    with venue.store() as store, venue.broker() as broker:
        seen = Observed(
            lines=lines,
            intents=all_intents(store),
            fills=await broker.fills(),
            orders=broker.dump()["orders"],
            startup=reports[0],
            operator=operator,
        )
    if fault in QUOTE_FAULTS:
        assert_refused_before_commit_1(seen)
    else:
        assert_fault_happened(fault, seen)
