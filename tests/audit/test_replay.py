"""Replay: the state as of any point is what the views showed at that point; the filters;
reading the log as it goes."""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from uuid import UUID, uuid4

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.store import Store
from audit.records import KIND_OF, Kind, Record
from audit.replay import Replay
from audit.state import State
from ledger.account import Account, account_id
from ledger.catalogue import EVENT_TYPES
from ledger.errors import IllegalTransition, NotFound
from ledger.instruments import Price, Quantity, Side
from ledger.intent import Intent, OpenRequest
from ledger.position import Position, PositionFlag, Provenance, position_id
from ledger.reconciliation import Finding, Item, ReconciliationLog, Trigger
from projections import catch_up, queries
from tests.audit.histories import fixed_history_fixture  # noqa: F401 - the fixture
from tests.projections.conftest import new_store_url  # noqa: F401 - the fixture
from tests.projections.scenario import BTC, START, Scenario, usd
from tests.projections.test_histories import History, steps
from tests.projections.test_runner import positions_of


def replayed(store: Store, **options) -> tuple[list[Record], State]:
    replay = Replay(store, **options)
    records = list(replay.records())
    return records, replay.state()


class Watched(History):
    """A history that notes what the balances and positions views show each time they catch up,
    and where in the log each view stood."""

    def __init__(self, store_url: str, folder: Path, seed: int) -> None:
        super().__init__(store_url, folder, seed)
        self.seen: list[tuple[str, int, list]] = []

    async def take(self, step, reader):
        await super().take(step, reader)
        if step[0] == "catch_up":
            self.note(reader)

    def note(self, reader: Store) -> None:
        at = positions_of(reader)
        self.seen.append(("balances", at["balances"], queries.balances(reader)))
        self.seen.append(("positions", at["positions"], queries.positions(reader)))


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(taken=steps, seed=st.integers(min_value=0, max_value=2**31))
def test_the_state_replayed_to_a_point_is_what_the_views_showed_at_that_point(
    new_store_url,  # noqa: F811 - pytest passes the fixture imported above
    taken,
    seed,
):
    folder = Path(tempfile.mkdtemp(prefix="replay-"))
    try:
        url = new_store_url()
        history = Watched(url, folder, seed)
        with Store.open(url) as reader:
            anyio.run(history.play, taken, reader)
            catch_up(reader)
            history.note(reader)
            # Each point replayed after the whole history: later events change nothing.
            for view, point, rows in history.seen:
                _, state = replayed(reader, until=point)
                assert getattr(state, view) == rows, f"{view} as of event {point}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_state_at_a_point_does_not_move_when_events_are_written_after_it(store):
    scenario = Scenario(store)
    kept = scenario.open_position()
    _, before = replayed(store)
    scenario.close(kept, "0.2", "61000")
    scenario.account.withdraw(usd("100"), recorded_at=scenario.tick())
    store.save(scenario.account)
    _, again = replayed(store, until=before.sequence)
    assert again == before
    _, now = replayed(store)
    assert now.sequence > before.sequence
    assert now.balances[0].total != before.balances[0].total


def test_every_event_is_shown_once_in_commit_order_with_its_decoded_fields(fixed_history):
    with Store.open(fixed_history.store_url) as store:
        records, state = replayed(store)
        assert [record.sequence for record in records] == sorted({r.sequence for r in records})
        assert state.sequence == records[-1].sequence
        for record in records:
            assert record.aggregate is KIND_OF[record.type]
            assert not {"originator_id", "originator_version", "recorded_at"} & set(record.payload)
        deposit = next(r for r in records if r.type == "account.deposited")
        assert deposit.payload["amount"] == {"amount": "20000.00", "currency": "USD"}
        assert deposit.aggregate_id == account_id("main")
        assert any(r.venue_time is not None for r in records if r.type == "position.opened")
        for row in state.balances:
            account = store.get(Account, row.account_id)
            assert (row.total, row.reserved, row.committed, row.available) == (
                account.total.amount,
                account.reserved.amount,
                account.committed.amount,
                account.available.amount,
            )
        # The fold keeps open positions only: closed ones are dropped as they close.
        assert {row.position_id for row in state.positions} == set(store.open_positions())
        assert len(state.positions) < len(fixed_history.positions)


def test_reconciliation_reports_are_decoded_and_shown_to_the_accounts_they_name(store):
    Scenario(store)
    log = ReconciliationLog.start()
    found = Item(finding=Finding.EXTERNAL, account="main", subject="EXT-9", detail="0.2 BTCUSD")
    log.record(
        uuid4(),
        Trigger.OPERATOR,
        [found],
        broker_time=datetime(2026, 3, 4, 9, 0, tzinfo=UTC),
        recorded_at=datetime(2026, 3, 4, 9, 0, tzinfo=UTC),
    )
    store.save(log)
    records, _ = replayed(store)
    report = records[-1]
    assert (report.aggregate, report.type) == (Kind.RECONCILIATION, "reconciliation.recorded")
    assert report.payload["items"] == [
        {"finding": "external", "account": "main", "subject": "EXT-9", "detail": "0.2 BTCUSD"}
    ]
    assert replayed(store, account="main")[0][-1] == report
    with pytest.raises(NotFound, match="no account 'desk'"):
        replayed(store, account="desk")
    assert {record.type for record in records} <= {cls.stored_name for cls in EVENT_TYPES}


def owner(store: Store, record: Record):
    """The account an event belongs to, found by loading its aggregate: not by the replay."""
    if record.aggregate is Kind.ACCOUNT:
        return record.aggregate_id
    if record.aggregate is Kind.POSITION:
        return store.get(Position, record.aggregate_id).account_id
    return store.get(Intent, record.aggregate_id).account_id


@pytest.mark.parametrize("name", ["main", "desk"])
def test_an_account_filter_shows_its_streams_and_the_state_of_that_account(fixed_history, name):
    with Store.open(fixed_history.store_url) as store:
        everything, full = replayed(store)
        replay = Replay(store, account=name)
        shown = list(replay.records())
        state = replay.state()
        expected = [r for r in everything if owner(store, r) == account_id(name)]
        assert shown == expected
        # What the filter keeps in memory is what may still grow: open and unfinished streams.
        (chosen,) = replay.filters
        assert chosen._open_positions == {
            p
            for p in store.open_positions()
            if store.get(Position, p).account_id == chosen.account_id
        }
        assert chosen._unfinished_intents == {
            i
            for i in store.unfinished_intents()
            if store.get(Intent, i).account_id == chosen.account_id
        }
        assert {r.aggregate for r in shown} == {Kind.ACCOUNT, Kind.POSITION, Kind.INTENT}
        assert [row.account for row in state.balances] == [name]
        assert state.positions == [row for row in full.positions if row.account == name]


def about(store: Store, record: Record, position) -> bool:
    """Whether an event is about `position`, found by loading aggregates: not by the replay."""
    if record.aggregate is Kind.POSITION:
        return record.aggregate_id == position
    if record.aggregate is Kind.INTENT:
        payload = store.get(Intent, record.aggregate_id).payload
        if isinstance(payload, OpenRequest):
            return position_id(record.aggregate_id) == position
        return getattr(payload, "position_id", None) == position
    named, intent = record.payload.get("position_id"), record.payload.get("intent_id")
    return named == str(position) or (intent is not None and position_id(UUID(intent)) == position)


def test_a_position_filter_shows_the_position_its_intents_and_its_money(fixed_history):
    with Store.open(fixed_history.store_url) as store:
        everything, full = replayed(store)
        for position in fixed_history.positions:
            shown, state = replayed(store, position=position)
            assert shown == [r for r in everything if about(store, r, position)]
            held = store.get(Position, position)
            assert [row.account_id for row in state.balances] == [held.account_id]
            assert state.positions == [r for r in full.positions if r.position_id == position]
        opened_by_intent = fixed_history.positions[0]
        shown, _ = replayed(store, position=opened_by_intent)
        assert [r.type for r in shown if r.aggregate is Kind.ACCOUNT][:3] == [
            "account.funds_reserved",
            "account.funds_settled",
            "account.fee_charged",
        ]
        assert "intent.recorded" in {r.type for r in shown}


def test_from_limits_what_is_shown_not_the_state(fixed_history):
    with Store.open(fixed_history.store_url) as store:
        everything, full = replayed(store)
        middle = everything[len(everything) // 2].sequence
        shown, state = replayed(store, start=middle)
        assert shown == [r for r in everything if r.sequence >= middle]
        assert state == full
        both, _ = replayed(store, start=middle, account="desk")
        assert both == [r for r in shown if owner(store, r) == account_id("desk")]


def test_until_a_sequence_number_or_a_time(fixed_history):
    with Store.open(fixed_history.store_url) as store:
        everything, _ = replayed(store)
        point = everything[len(everything) // 3]
        shown, state = replayed(store, until=point.sequence)
        assert shown == [r for r in everything if r.sequence <= point.sequence]
        assert (state.sequence, state.recorded_at) == (point.sequence, point.recorded_at)
        moment = point.recorded_at
        first_after = next(i for i, r in enumerate(everything) if r.recorded_at > moment)
        by_time, timed = replayed(store, until=moment)
        assert by_time == everything[:first_after]
        assert timed == replayed(store, until=by_time[-1].sequence)[1]
        assert replayed(store, until=everything[0].recorded_at.replace(year=2000)) == (
            [],
            State(sequence=0, recorded_at=None, balances=[], positions=[]),
        )


def test_the_log_is_read_a_page_at_a_time_as_records_are_taken(fixed_history, monkeypatch):
    with Store.open(fixed_history.store_url) as store:
        recorder = store.application.recorder
        real = recorder.select_notifications
        reads: list[int] = []

        def counted(*args, **kwargs):
            page = real(*args, **kwargs)
            reads.append(len(page))
            return page

        monkeypatch.setattr(recorder, "select_notifications", counted)
        done: list[tuple[int, int]] = []
        replay = Replay(store, page_size=5, progress=lambda at, end: done.append((at, end)))
        records = replay.records()
        next(records)
        assert reads == [5]
        assert done == []
        rest = list(records)
        assert sum(reads) == len(rest) + 1
        assert set(reads[:-1]) == {5}
        end = done[-1][1]
        assert done[-1] == (end, end)
        assert [at for at, _ in done] == sorted(at for at, _ in done)
        with pytest.raises(RuntimeError, match="read once"):
            next(replay.records())


def test_a_closed_position_cannot_be_flagged():
    position = Position.open(
        uuid4(),
        account_id=account_id("main"),
        instrument=BTC,
        side=Side.LONG,
        quantity=Quantity(Decimal("0.5")),
        entry_price=Price(Decimal(60000)),
        recorded_at=START,
        broker_ref="EXT-1",
        provenance=Provenance.ADOPTED,
    )
    position.close(Quantity(Decimal("0.5")), Price(Decimal(61000)), recorded_at=START)
    with pytest.raises(IllegalTransition):
        position.flag(PositionFlag.ORPHAN, "gone at the broker", recorded_at=START)
