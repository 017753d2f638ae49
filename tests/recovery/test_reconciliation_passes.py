"""What a reconciliation pass writes: once and no more, nothing when planning, by policy.

- run twice in a row, the second pass writes nothing (SQLite and PostgreSQL);
- a plan writes nothing and lists what the apply that follows applies, and
  every event that apply writes carries the plan's id;
- a stop-loss changed at the broker behind the ledger's back is restored,
  flagged or adopted, as the protection policy says.
"""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from ledger.engine import Engine
from ledger.instruments import Side
from ledger.ports import Accepted, OrderAction, OrderRequest, ProtectionRequest
from ledger.position import Position, PositionFlag
from ledger.reconciliation import ATTENTION, Finding, Item, Trigger
from recovery.context import Apply, ProtectionPolicy
from recovery.recover import Report, reconcile, recover_at_startup
from tests.recovery.test_recovery import (
    ACCOUNT,
    DEPOSIT,
    MOVES,
    Venue,
    assert_ledger_matches_broker,
    committed,
    events_after,
    printed,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def found(items: list[Item]) -> list[tuple[str, str, str, str]]:
    return sorted((item.finding, item.account, item.subject, item.detail) for item in items)


def standing(report: Report) -> list[tuple[str, str, str, str]]:
    return found([item for item in report.items if item.finding in ATTENTION])


async def events_written(engine: Engine) -> int:
    return await committed(
        engine, lambda _: engine.store.application.recorder.max_notification_id() or 0
    )


async def skip(_engine: Engine) -> None:
    """No startup recovery: the passes under test run on what the crash left."""


async def test_a_second_recovery_in_a_row_writes_nothing(tmp_path, store_url):
    faults = "timeout_after_accept:1,stop_hit_while_down:0.5,external_order:1"
    venue = Venue(tmp_path, store_url=store_url, faults=faults)
    await venue.fund()
    lines = await venue.crash()
    assert len(printed(lines, "unknown")) == MOVES  # the stop-loss changes are left in flight
    venue.while_down()
    reports: list[Report] = []

    async def recover(engine: Engine) -> None:
        reports.append(await recover_at_startup(engine))

    async with venue.engine(startup=recover) as engine:
        before = await events_written(engine)
        again = await reconcile(engine, trigger=Trigger.STARTUP, apply=Apply.EVIDENCE)
        after = await events_written(engine)
    (first,) = reports
    assert first.recorded
    done = {item.finding for item in first.items if item.applied}
    assert {Finding.INTENT_COMPLETED, Finding.FILL_RECORDED} <= done
    # What needs an operator (positions not adopted, the balance they explain) still stands.
    assert {Finding.EXTERNAL, Finding.BALANCE_DIFFERENCE} <= {i.finding for i in first.items}
    assert after == before
    assert not again.recorded
    assert [item for item in again.items if item.applied] == []
    assert standing(again) == standing(first)


async def behind_the_ledgers_back(
    venue: Venue, symbol: str, quantity: str, *, stop_below_bid: Decimal | None = None
) -> None:
    """Someone at the broker closes `quantity` of the `symbol` position, and moves its stop."""
    with venue.broker() as broker:
        (held,) = [p for p in await broker.positions() if p.symbol == symbol]
        reduce = OrderRequest(
            client_id="desk1",
            account=ACCOUNT,
            action=OrderAction.REDUCE,
            symbol=held.symbol,
            side=held.side,
            quantity=Decimal(quantity),
            position_ref=held.broker_ref,
        )
        assert isinstance(await broker.submit(reduce), Accepted)
        if stop_below_bid is not None:
            quote = await broker.quote(held.symbol)
            moved = ProtectionRequest(
                client_id="desk2",
                account=ACCOUNT,
                position_ref=held.broker_ref,
                stop_loss=quote.bid - stop_below_bid,
            )
            assert isinstance(await broker.amend_protection(moved), Accepted)


async def crashed_with_changes_in_flight(venue: Venue) -> None:
    """The child's stop-loss changes are left in flight; its last position has none pending."""
    await venue.fund()
    lines = await venue.crash()
    assert len(printed(lines, "unknown")) == MOVES


async def plan_then_apply(venue: Venue) -> tuple[int, Report, Report]:
    """A plan and then an apply, on what the crash left (no startup recovery first)."""
    async with venue.engine(startup=skip) as engine:
        before = await events_written(engine)
        plan = await reconcile(engine, trigger=Trigger.OPERATOR, apply=Apply.NOTHING)
        assert await events_written(engine) == before
        done = await reconcile(engine, trigger=Trigger.OPERATOR, apply=Apply.ALL)
    assert not plan.recorded
    assert [item for item in plan.items if item.applied] == []
    return before, plan, done


def unexplained(report: Report) -> str:
    (difference,) = [i for i in report.items if i.finding is Finding.BALANCE_DIFFERENCE]
    match = re.search(r"not recorded yet, (\S+) unexplained$", difference.detail)
    assert match is not None, difference.detail
    return match[1]


async def test_a_plan_writes_nothing_and_lists_what_the_apply_then_applies(tmp_path):
    venue = Venue(tmp_path, faults="timeout_after_accept:1")
    await crashed_with_changes_in_flight(venue)
    await behind_the_ledgers_back(venue, "US500", "0.5", stop_below_bid=Decimal(30))
    _, plan, done = await plan_then_apply(venue)
    planned = [item for item in plan.items if item.finding not in ATTENTION]
    assert {item.finding for item in planned} == {
        Finding.INTENT_COMPLETED,
        Finding.FILL_RECORDED,
        Finding.PROTECTION_RESTORED,
    }
    assert found(planned) == found([item for item in done.items if item.applied])
    # The plan explains the balance by the fill it would record; once recorded, none is left.
    assert unexplained(plan) == "0.00"
    assert standing(done) == []
    await assert_ledger_matches_broker(venue)


async def test_every_event_an_apply_writes_carries_its_plan_id(tmp_path):
    venue = Venue(tmp_path, faults="timeout_after_accept:1")
    await crashed_with_changes_in_flight(venue)
    await behind_the_ledgers_back(venue, "US500", "0.5", stop_below_bid=Decimal(30))
    before, _, done = await plan_then_apply(venue)
    assert Finding.PROTECTION_RESTORED in {item.finding for item in done.items if item.applied}
    written = events_after(venue.store_url, before)
    assert written
    untagged = [(type(e).__name__, e.plan_id) for e in written if e.plan_id != done.report_id]
    assert untagged == []


async def test_a_plan_lists_the_fills_of_positions_whose_intents_it_would_settle(tmp_path):
    venue = Venue(tmp_path, faults="timeout_after_accept:1")
    await crashed_with_changes_in_flight(venue)
    # The first position has a stop-loss change in flight.
    await behind_the_ledgers_back(venue, "BTCUSD", "0.05")
    _, plan, done = await plan_then_apply(venue)
    applied = [item for item in done.items if item.applied]
    assert Finding.FILL_RECORDED in {item.finding for item in applied}
    planned = [item for item in plan.items if item.finding not in ATTENTION]
    assert found(planned) == found(applied)
    assert unexplained(plan) == "0.00"


@pytest.mark.parametrize("policy", list(ProtectionPolicy))
async def test_a_stop_loss_changed_at_the_broker_follows_the_protection_policy(tmp_path, policy):
    venue = Venue(tmp_path)
    await venue.fund()
    async with venue.engine() as engine:
        await engine.deposit(ACCOUNT, DEPOSIT, "USD")
        quote = await engine.broker.quote("ETHUSD")
        ledger_stop, target = quote.ask + 100, quote.bid - 100
        opened = await engine.open_position(
            ACCOUNT, "ETHUSD", Side.SHORT, "1", stop_loss=ledger_stop, take_profit=target
        )
    with venue.broker() as broker:
        (held,) = await broker.positions()
        broker_stop = (await broker.quote("ETHUSD")).ask + 40
        moved = ProtectionRequest(
            client_id="desk1", account=ACCOUNT, position_ref=held.broker_ref, stop_loss=broker_stop
        )
        assert isinstance(await broker.amend_protection(moved), Accepted)
    reports: list[Report] = []

    async def recover(engine: Engine) -> None:
        reports.append(await recover_at_startup(engine, policy))

    async with venue.engine(startup=recover) as engine:
        position = await committed(engine, lambda unit: unit.get(Position, opened.position_id))
    with venue.broker() as broker:
        (at_broker,) = await broker.positions()
    assert position is not None
    (report,) = reports
    (item,) = [i for i in report.items if i.subject == str(position.id)]
    assert item.detail == (
        f"ledger stop-loss {ledger_stop}, take-profit {target}; "
        f"broker stop-loss {broker_stop}, take-profit {target}"
    )
    expected = {
        ProtectionPolicy.RESTORE: (Finding.PROTECTION_RESTORED, ledger_stop, ledger_stop),
        ProtectionPolicy.FLAG: (Finding.PROTECTION_MISMATCH, ledger_stop, broker_stop),
        ProtectionPolicy.ADOPT: (Finding.PROTECTION_ADOPTED, broker_stop, broker_stop),
    }
    assert (item.finding, position.stop_loss, at_broker.stop_loss) == expected[policy]
    assert item.applied
    assert (position.take_profit, at_broker.take_profit) == (target, target)
    if policy is ProtectionPolicy.FLAG:
        assert position.flags == {PositionFlag.PROTECTION_MISMATCH: item.detail}
    else:
        assert position.flags == {}
        await assert_ledger_matches_broker(venue)


async def test_a_flag_is_lowered_once_the_broker_agrees_again(tmp_path):
    venue = Venue(tmp_path)
    await venue.fund()
    async with venue.engine() as engine:
        await engine.deposit(ACCOUNT, DEPOSIT, "USD")
        quote = await engine.broker.quote("ETHUSD")
        ledger_stop = quote.ask + 100
        opened = await engine.open_position(
            ACCOUNT, "ETHUSD", Side.SHORT, "1", stop_loss=ledger_stop
        )
    with venue.broker() as broker:
        (held,) = await broker.positions()

    async def move_stop(stop: Decimal, client_id: str) -> None:
        with venue.broker() as broker:
            moved = ProtectionRequest(
                client_id=client_id, account=ACCOUNT, position_ref=held.broker_ref, stop_loss=stop
            )
            assert isinstance(await broker.amend_protection(moved), Accepted)

    async def flags_after_recovery() -> dict[PositionFlag, str]:
        async def recover(engine: Engine) -> None:
            await recover_at_startup(engine, ProtectionPolicy.FLAG)

        async with venue.engine(startup=recover) as engine:
            position = await committed(engine, lambda unit: unit.get(Position, opened.position_id))
        assert position is not None
        return position.flags

    await move_stop(quote.ask + 40, "desk1")
    assert set(await flags_after_recovery()) == {PositionFlag.PROTECTION_MISMATCH}
    await move_stop(ledger_stop, "desk2")
    assert await flags_after_recovery() == {}
