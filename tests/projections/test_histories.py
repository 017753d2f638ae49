"""Property: views kept up incrementally equal views rebuilt from zero, row for row.

Random histories run through the real engine against the real paper
broker (losing answers, reporting fills twice, refusing stop-loss
changes), with what recovery writes (positions adopted from the broker
and flagged, intents sent to review and resolved, closes found at the
broker), engine restarts that leave intents in flight, and days that
pass. The views catch up at random points, sometimes only part of the
way, and sometimes a batch fails half way. At the end they must equal a
rebuild from position 0, and agree with the aggregates they show.
"""

from __future__ import annotations

import contextlib
import decimal
import shutil
import tempfile
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.paper import market
from adapters.paper.broker import PaperBroker
from adapters.store import Store
from ledger.account import Account, account_id
from ledger.engine import Engine
from ledger.errors import LedgerError
from ledger.instruments import Price, Quantity, Side
from ledger.intent import Intent, IntentStatus
from ledger.money import Money
from ledger.position import CloseReason, Position, PositionFlag, Provenance
from ledger.writer import UnitOfWork
from projections import catch_up, check, queries
from projections.catalogue import live_views
from projections.database import Database
from projections.log import log_end
from tests.projections.test_runner import FailingBalances

ACCOUNTS = ("main", "desk")
SYMBOLS = ("BTCUSD", "ETHUSD")
FAULTS = (
    "timeout_before_accept:0.05,timeout_after_accept:0.05,duplicate_ack:0.2,reject_sl_change:0.2"
)
STOPS = {
    ("BTCUSD", Side.LONG): "50000.0",
    ("BTCUSD", Side.SHORT): "80000.0",
    ("ETHUSD", Side.LONG): "2500.00",
    ("ETHUSD", Side.SHORT): "4000.00",
}

steps = st.lists(
    st.one_of(
        st.tuples(st.just("deposit"), st.sampled_from(ACCOUNTS), st.integers(1_000, 5_000_000)),
        st.tuples(st.just("withdraw"), st.sampled_from(ACCOUNTS), st.integers(1, 2_000_000)),
        st.tuples(
            st.just("open"), st.sampled_from(ACCOUNTS), st.sampled_from(SYMBOLS), st.booleans()
        ),
        st.tuples(st.just("close"), st.integers(0, 20), st.booleans()),
        st.tuples(st.just("stop"), st.integers(0, 20)),
        st.tuples(st.just("adopt"), st.sampled_from(ACCOUNTS)),
        st.tuples(st.just("flag"), st.integers(0, 20), st.sampled_from(PositionFlag)),
        st.tuples(st.just("closed_at_broker"), st.integers(0, 20), st.booleans()),
        st.tuples(st.just("review"), st.integers(0, 20)),
        st.tuples(st.just("restart")),
        st.tuples(st.just("tomorrow")),
        st.tuples(st.just("catch_up"), st.integers(0, 100)),
        st.tuples(st.just("fail_mid_batch")),
    ),
    min_size=3,
    max_size=30,
)


class History:
    """One history: an engine on a fresh store and paper broker, and the steps it takes."""

    def __init__(self, store_url: str, folder: Path, seed: int) -> None:
        self.store_url = store_url
        self.clean_broker = f"paper:///{folder / 'broker.db'}?seed={seed}"
        self.broker = f"{self.clean_broker}&faults={FAULTS}"
        self.now = datetime(2026, 5, 1, 20, 0, tzinfo=UTC)
        self.positions: list[UUID] = []
        self.engine: Engine
        self.stack = AsyncExitStack()

    def clock(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now

    async def play(self, taken: list[tuple[Any, ...]], reader: Store) -> None:
        with PaperBroker.open(self.clean_broker) as funding:
            for name in ACCOUNTS:
                await funding.fund(name, Money.parse("100000000", "USD"))
        await self.start()
        try:
            for name in ACCOUNTS:
                await self.engine.deposit(name, "20000", "USD")
            for step in taken:
                await self.take(step, reader)
        finally:
            await self.stack.aclose()

    async def start(self) -> None:
        # Without startup recovery: what recovery writes, the steps below write.
        store = self.stack.enter_context(Store.open(self.store_url))
        broker = self.stack.enter_context(PaperBroker.open(self.broker))
        self.engine = await self.stack.enter_async_context(
            Engine.open(store, broker, holder="histories", clock=self.clock)
        )

    async def take(self, step: tuple[Any, ...], reader: Store) -> None:
        kind, *arguments = step
        if kind == "restart":
            # Intents in flight stay in flight; the next engine has a new epoch.
            await self.stack.aclose()
            self.stack = AsyncExitStack()
            await self.start()
        elif kind == "tomorrow":
            self.now += timedelta(hours=9)
        elif kind == "catch_up":
            catch_up(reader, until=log_end(reader) * arguments[0] // 100)
        elif kind == "fail_mid_batch":
            database = Database(reader)
            views = [*live_views(database, ["positions"]), FailingBalances(database)]
            with contextlib.suppress(RuntimeError):
                catch_up(reader, views=views)
        else:
            # Refused, rejected or unknown: each a legitimate outcome.
            with contextlib.suppress(LedgerError):
                await getattr(self, kind)(*arguments)

    def pick(self, index: int) -> UUID | None:
        return self.positions[index % len(self.positions)] if self.positions else None

    async def deposit(self, name: str, cents: int) -> None:
        await self.engine.deposit(name, str(Decimal(cents).scaleb(-2)), "USD")

    async def withdraw(self, name: str, cents: int) -> None:
        await self.engine.withdraw(name, str(Decimal(cents).scaleb(-2)), "USD")

    async def open(self, name: str, symbol: str, long: bool) -> None:  # noqa: FBT001
        side = Side.LONG if long else Side.SHORT
        quantity = "0.010" if symbol == "BTCUSD" else "0.10"
        result = await self.engine.open_position(
            name, symbol, side, quantity, stop_loss=STOPS[symbol, side]
        )
        if result.position_id is not None:
            self.positions.append(result.position_id)

    async def close(self, index: int, part: bool) -> None:  # noqa: FBT001
        target = self.pick(index)
        if target is not None:
            await self.engine.close_position(target, "0.005" if part else None)

    async def stop(self, index: int) -> None:
        target = self.pick(index)
        if target is not None:
            await self.engine.change_stop_loss(target, None)

    async def adopt(self, name: str) -> None:
        """What recovery writes for a position found only at the broker."""
        instrument = market.instrument("BTCUSD")
        assert instrument is not None

        def record(unit: UnitOfWork) -> UUID | None:
            account = unit.get(Account, account_id(name))
            if account is None:
                return None
            now = self.clock()
            position = Position.open(
                uuid4(),
                account_id=account.id,
                instrument=instrument,
                side=Side.SHORT,
                quantity=Quantity(Decimal("0.020")),
                entry_price=Price(Decimal("64000.0")),
                recorded_at=now,
                broker_ref=f"EXT-{len(self.positions)}",
                provenance=Provenance.ADOPTED,
            )
            unit.add(position)
            account.commit(position.id, Money.parse("1280", "USD"), recorded_at=now)
            position.flag(PositionFlag.EXTERNAL, "opened at the broker by hand", recorded_at=now)
            return position.id

        adopted = await self.engine.writer.execute(record)
        if adopted is not None:
            self.positions.append(adopted)

    async def flag(self, index: int, flag: PositionFlag) -> None:
        target = self.pick(index)

        def record(unit: UnitOfWork) -> None:
            position = unit.get(Position, target) if target else None
            if position is None:
                return
            if flag in position.flags:
                position.clear_flag(flag, "the broker agrees now", recorded_at=self.clock())
            else:
                position.flag(flag, f"found {flag.value}", recorded_at=self.clock())

        await self.engine.writer.execute(record)

    async def closed_at_broker(self, index: int, part: bool) -> None:  # noqa: FBT001
        """What recovery writes for an adopted position the broker closed meanwhile."""
        target = self.pick(index)

        def record(unit: UnitOfWork) -> None:
            position = unit.get(Position, target) if target else None
            if position is None or position.provenance is not Provenance.ADOPTED:
                return
            if not position.is_open:
                return
            account = unit.get(Account, position.account_id)
            assert account is not None
            size = Quantity(Decimal("0.010")) if part else position.quantity
            committed = account.commitments.get(position.id, Money.zero("USD"))
            released = Money.rounded(
                committed.amount * size / position.quantity, "USD", decimal.ROUND_DOWN
            )
            now = self.clock()
            pnl = position.close(
                size, Price(Decimal("63500.0")), recorded_at=now, reason=CloseReason.EXTERNAL
            )
            account.realise_pnl(position.id, pnl, released, recorded_at=now)
            account.charge_fee(Money.parse("0.75", "USD"), "broker fee", recorded_at=now)

        await self.engine.writer.execute(record)

    async def review(self, index: int) -> None:
        """An intent in flight goes to review; one in review is resolved by an operator."""
        unfinished = await anyio.to_thread.run_sync(Store.unfinished_intents, self.engine.store)
        if not unfinished:
            return
        target = unfinished[index % len(unfinished)]

        def record(unit: UnitOfWork) -> None:
            intent = unit.get(Intent, target)
            assert intent is not None
            now = self.clock()
            if intent.status is not IntentStatus.NEEDS_REVIEW:
                intent.flag_for_review("the broker shows two candidates", recorded_at=now)
                return
            intent.resolve_by_operator(
                IntentStatus.ROLLED_BACK, actor="ops", reason="never sent", recorded_at=now
            )
            account = unit.get(Account, intent.account_id)
            if account is not None and intent.id in account.reservations:
                account.release_reservation(intent.id, recorded_at=now)

        await self.engine.writer.execute(record)


def agrees_with_the_aggregates(store: Store) -> None:
    for row in queries.balances(store):
        account = store.get(Account, row.account_id)
        assert account is not None
        assert (row.account, row.currency) == (account.name, account.currency)
        assert row.total == account.total.amount
        assert row.reserved == account.reserved.amount
        assert row.committed == account.committed.amount
        assert row.available == account.available.amount
    for row in queries.positions(store, include_closed=True):
        position = store.get(Position, row.position_id)
        assert position is not None
        assert (row.quantity, row.status, row.stop_loss) == (
            position.quantity,
            position.status.value,
            position.stop_loss,
        )
        assert row.realised_pnl == position.realised_pnl.amount
        assert row.flags == sorted(flag.value for flag in position.flags)
    pending = {row.intent_id for row in queries.pending_intents(store)}
    assert pending == set(store.unfinished_intents())


@settings(
    max_examples=10,
    deadline=None,
    # Each example makes its own store (the fixture is a factory of fresh ones).
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(taken=steps, seed=st.integers(min_value=0, max_value=2**31))
def test_incremental_views_equal_views_rebuilt_from_zero(new_store_url, taken, seed):
    folder = Path(tempfile.mkdtemp(prefix="histories-"))
    try:
        url = new_store_url()
        with Store.open(url) as reader:
            anyio.run(History(url, folder, seed).play, taken, reader)
            catch_up(reader)
            difference = check(reader)
            assert difference is None, difference.describe()
            agrees_with_the_aggregates(reader)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
