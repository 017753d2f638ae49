"""Rebuilding views: equal to what was there, swapped in at once, and safe to crash."""

from __future__ import annotations

import textwrap

import pytest

from adapters.store import Store
from ledger.account import Account, account_id
from projections import UnknownView, catch_up, check, queries, rebuild
from projections.catalogue import live_views
from projections.database import Database
from projections.log import log_end
from projections.tracking import TRACKING_TABLE
from tests.agreement import assert_audit_clean
from tests.projections.crash import kill_when_paused
from tests.projections.scenario import Scenario, usd


def snapshot(store: Store) -> tuple[list, list, list, list]:
    return (
        queries.positions(store, include_closed=True),
        queries.balances(store),
        queries.pending_intents(store),
        queries.daily_risk(store),
    )


def generations(store: Store) -> dict[str, str]:
    database = Database(store)
    with database.transaction(commit=False) as cursor:
        return {view.name: view.tracking.read(cursor).generation for view in live_views(database)}


def leftovers(store: Store) -> list[str]:
    database = Database(store)
    with database.transaction(commit=False) as cursor:
        tables = database.tables_named_like(cursor, "view%\\_\\_r%")
        cursor.execute(
            f"SELECT view_name FROM {database.table(TRACKING_TABLE)} ORDER BY view_name"  # noqa: S608
        )
        tracked = [
            row[0] if not isinstance(row, dict) else row["view_name"] for row in cursor.fetchall()
        ]
    return [*tables, *(name for name in tracked if "__r" in name)]


@pytest.fixture
def store(new_store_url):
    with Store.open(new_store_url()) as opened:
        Scenario(opened).write_everything()
        catch_up(opened)
        yield opened


def test_a_rebuild_swaps_in_the_same_rows_under_a_new_generation(store):
    before, old = snapshot(store), generations(store)
    assert rebuild(store) == log_end(store)
    assert snapshot(store) == before
    new = generations(store)
    assert all(new[name] != old[name] for name in old)
    assert leftovers(store) == []


def test_rebuilding_one_view_leaves_the_others_alone(store):
    old = generations(store)
    rebuild(store, "risk")
    new = generations(store)
    assert [name for name in old if new[name] != old[name]] == ["risk"]
    with pytest.raises(UnknownView, match=r"no view named 'nope'"):
        rebuild(store, "nope")


def test_check_names_the_first_difference_and_a_rebuild_repairs_it(store):
    assert check(store) is None
    database = Database(store)
    with database.transaction(commit=True) as cursor:
        cursor.execute(f"UPDATE {database.table('view_balances')} SET total = '1.00'")  # noqa: S608
        cursor.execute(f"DELETE FROM {database.table('view_pending_intents')}")  # noqa: S608
    balances = check(store, "balances")
    assert balances is not None
    assert (balances.table, balances.column, balances.live) == ("view_balances", "total", "1.00")
    assert "column total: '1.00' in the view, '99643.10' rebuilt" in balances.describe()
    pending = check(store)
    assert pending is not None
    assert pending.view == "balances"  # views are checked in order; balances comes first
    only = check(store, "pending")
    assert only is not None
    assert only.describe().endswith("only in the rebuild")
    assert leftovers(store) == []
    rebuild(store)
    assert check(store) is None


def test_a_rebuild_follows_views_that_move_on_while_it_runs(store):
    moved: list[int] = []

    def meanwhile(done: int, _total: int) -> None:
        if done and not moved:
            # The engine commits more, and the views follow, mid-rebuild.
            account = store.get(Account, account_id("main"))
            assert account is not None
            account.deposit(usd("7"), recorded_at=account.modified_at)
            store.save(account)
            moved.append(catch_up(store))

    position = rebuild(store, progress=meanwhile, page_size=10)
    assert moved
    assert position == moved[0] == log_end(store)
    assert queries.balances(store)[0].total == usd("99650.10").amount
    assert check(store) is None


REBUILD_CHILD = textwrap.dedent(
    """
    import sys
    from adapters.store import Store
    from projections import rebuild

    with Store.open(sys.argv[1]) as store:
        rebuild(store, page_size=10)
    """
)


def test_a_crash_mid_rebuild_leaves_the_old_view_served_and_a_later_rebuild_succeeds(
    new_store_url,
):
    url = new_store_url()
    with Store.open(url) as store:
        Scenario(store).write_everything()
        catch_up(store)
        before = snapshot(store)
        served: list[tuple] = []

        def read_while_paused() -> None:
            catch_up(store)
            served.append(snapshot(store))

        kill_when_paused(REBUILD_CHILD, url, point="rebuild", while_paused=read_while_paused)
        assert served == [before]
    with Store.open(url) as store:
        assert snapshot(store) == before
        assert leftovers(store) != []
        assert catch_up(store) == log_end(store)
        assert rebuild(store) == log_end(store)
        assert leftovers(store) == []
        assert snapshot(store) == before
        assert check(store) is None
        assert_audit_clean(store)
