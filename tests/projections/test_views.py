"""Each view, after a known history, on SQLite and PostgreSQL: as the aggregates have it."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import MapperDeserialisationError, StoredEvent

from adapters.store import Store
from ledger.account import Account, account_id
from ledger.intent import Intent
from ledger.position import Position
from projections import catch_up, check, queries
from tests.projections.scenario import START, Scenario, usd


@pytest.fixture
def history(new_store_url):
    with Store.open(new_store_url()) as store:
        ids = Scenario(store).write_everything()
        catch_up(store)
        yield store, ids


def test_each_balance_row_is_the_account_aggregate(history):
    store, _ = history
    (row,) = queries.balances(store)
    account = store.get(Account, account_id("main"))
    assert account is not None
    assert (row.account, row.currency, row.account_id) == ("main", "USD", account.id)
    assert row.total == account.total.amount
    assert row.reserved == account.reserved.amount
    assert row.committed == account.committed.amount
    assert row.available == account.available.amount
    # The history leaves something in each: the check above is not of zeros.
    assert row.reserved == Decimal("1000.00")
    assert row.committed == Decimal("48250.00")
    assert row.fees == Decimal("7.00")


def test_each_position_row_is_the_position_aggregate(history):
    store, ids = history
    rows = {row.position_id: row for row in queries.positions(store, include_closed=True)}
    assert set(rows) == {ids["kept"], ids["gone"], ids["adopted"]}
    for position_id, row in rows.items():
        position = store.get(Position, position_id)
        assert position is not None
        assert row.quantity == position.quantity
        assert row.entry_price == position.entry_price
        assert (row.stop_loss, row.take_profit) == (position.stop_loss, position.take_profit)
        assert row.status == position.status.value
        assert row.realised_pnl == position.realised_pnl.amount
        assert row.flag_details == {flag.value: detail for flag, detail in position.flags.items()}
        assert (row.provenance, row.broker_ref) == (position.provenance.value, position.broker_ref)
        assert row.account == "main"
    assert rows[ids["kept"]].quantity == Decimal("0.600")
    assert rows[ids["kept"]].take_profit == Decimal("70000.0")
    assert rows[ids["adopted"]].flags == ["external"]
    assert rows[ids["gone"]].close_reason == "requested"


def test_positions_shows_open_ones_unless_asked_for_all(history):
    store, ids = history
    assert {row.position_id for row in queries.positions(store)} == {ids["kept"], ids["adopted"]}
    assert queries.positions(store, account="desk") == []
    assert len(queries.positions(store, account="main", include_closed=True)) == 3


def test_pending_holds_the_intents_not_yet_terminal(history):
    store, ids = history
    rows = {row.intent_id: row for row in queries.pending_intents(store)}
    assert set(rows) == {ids["in_flight"], ids["reviewed"]}
    assert set(rows) == set(store.unfinished_intents())
    for intent_id, row in rows.items():
        intent = store.get(Intent, intent_id)
        assert intent is not None
        assert (row.kind, row.status, row.client_id) == (
            intent.kind.value,
            intent.status.value,
            intent.client_id,
        )
    assert rows[ids["reviewed"]].reason == "two candidate orders"
    assert rows[ids["in_flight"]].reservation == Decimal("1000.00")


def test_daily_risk_counts_per_account_and_utc_day(history):
    store, _ = history
    first, second = queries.daily_risk(store)
    assert (first.day, second.day) == (
        START.date().isoformat(),
        (START + timedelta(1)).date().isoformat(),
    )
    assert (first.trades_opened, second.trades_opened) == (1, 2)
    assert first.peak_equity == Decimal("100000.00")
    assert first.fees == Decimal("3.50")
    assert second.realised_pnl == Decimal("-99.90")
    assert second.net_pnl == second.realised_pnl - second.fees
    assert second.open_positions == 2
    account = store.get(Account, account_id("main"))
    assert account is not None
    assert second.peak_equity >= account.total.amount


def test_events_no_view_reads_are_skipped(new_store_url):
    with Store.open(new_store_url()) as store:
        scenario = Scenario(store)
        store.application.recorder.insert_events(
            [StoredEvent(uuid4(), 1, "reconciliation.someday/v1", b"not for views")]
        )
        scenario.account.deposit(usd("5"), recorded_at=scenario.tick())
        store.save(scenario.account)
        assert catch_up(store) == 4
        (row,) = queries.balances(store)
        assert row.total == Decimal("100005.00")
        assert check(store) is None


def test_an_event_stored_by_newer_code_stops_the_views(new_store_url):
    with Store.open(new_store_url()) as store:
        Scenario(store)
        store.application.recorder.insert_events(
            [StoredEvent(UUID(int=7), 1, "account.deposited/v99", b"")]
        )
        with pytest.raises(MapperDeserialisationError, match=r"newer than this code"):
            catch_up(store)
