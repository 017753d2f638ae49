"""Catching up: in steps, concurrently, after failures and crashes, and while the engine runs."""

from __future__ import annotations

import textwrap
import threading

import anyio
import anyio.to_thread
import pytest
from eventsourcing.persistence import Tracking

from adapters.paper.broker import PaperBroker
from adapters.store import Store
from ledger.engine import Engine
from ledger.events import Event
from ledger.money import Money
from projections import ViewOutdated, catch_up, check, queries, rebuild
from projections.balances import BalancesView
from projections.catalogue import live_views
from projections.database import Database
from projections.log import log_end
from projections.runner import follow, prepare
from projections.tracking import APPLICATION, TRACKING_TABLE
from tests.agreement import assert_audit_clean
from tests.projections.crash import kill_when_paused
from tests.projections.scenario import Scenario


def positions_of(store: Store) -> dict[str, int]:
    database = Database(store)
    with database.transaction(commit=False) as cursor:
        return {
            view.name: view.tracking.read(cursor).notification_id for view in live_views(database)
        }


def test_catching_up_in_steps_ends_where_catching_up_at_once_does(new_store_url):
    with Store.open(new_store_url()) as store:
        Scenario(store).write_everything()
        end = log_end(store)
        for step in (1, 2, 7, end // 2, end - 1):
            assert catch_up(store, until=step) == step
            assert set(positions_of(store).values()) == {step}
        assert catch_up(store) == end
        assert check(store) is None


def test_writers_catching_up_at_once_apply_each_event_once(new_store_url):
    url = new_store_url()
    with Store.open(url) as store:
        Scenario(store).write_everything()
    errors: list[BaseException] = []
    # Each writer with a store of its own, as separate processes have.
    stores = [Store.open(url) for _ in range(4)]

    def catch_up_alone(own: Store) -> None:
        try:
            catch_up(own)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            own.close()

    threads = [threading.Thread(target=catch_up_alone, args=(own,)) for own in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Store.open(url) as store:
        assert set(positions_of(store).values()) == {log_end(store)}
        assert check(store) is None


class FailingBalances(BalancesView):
    """The balances view, failing at its tenth event: a crash in the middle of a batch."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.applied = 0

    def apply(self, event: Event) -> None:
        self.applied += 1
        if self.applied == 10:
            raise RuntimeError("the process died here")
        super().apply(event)


def test_a_batch_that_fails_half_way_leaves_every_view_as_it_was(new_store_url):
    with Store.open(new_store_url()) as store:
        Scenario(store).write_everything()
        catch_up(store, until=3)
        database = Database(store)
        views = [*live_views(database, ["positions"]), FailingBalances(database)]
        with pytest.raises(RuntimeError, match=r"the process died here"):
            catch_up(store, views=views)
        assert positions_of(store) == {"positions": 3, "balances": 3, "pending": 3, "risk": 3}
        assert queries.positions(store) == []
        catch_up(store)
        assert check(store) is None


def test_process_event_applies_each_event_once_however_often_delivered(new_store_url):
    with Store.open(new_store_url()) as store:
        Scenario(store).write_everything()
        database = Database(store)
        (view,) = live_views(database, ["positions"])
        prepare(database, [view])
        notifications = store.application.recorder.select_notifications(
            start=1, limit=1000, topics=view.topics
        )
        # Delivered at least once: some again, out of order.
        for notification in [*notifications, *notifications[:5]]:
            event = store.application.mapper.to_domain_event(notification)
            view.process_event(event, Tracking(APPLICATION, notification.id))
        assert view.tracking.max_tracking_id(APPLICATION) == notifications[-1].id
        catch_up(store)
        assert check(store, "positions") is None
        assert len(queries.positions(store, include_closed=True)) == 3


def test_a_view_built_by_other_rules_is_refused_until_rebuilt(new_store_url):
    url = new_store_url()
    with Store.open(url) as store:
        Scenario(store).write_everything()
        catch_up(store)
        database = Database(store)
        with database.transaction(commit=True) as cursor:
            cursor.execute(f"UPDATE {database.table(TRACKING_TABLE)} SET version = 99")  # noqa: S608
    with Store.open(url) as store:
        with pytest.raises(ViewOutdated, match=r"run `ledger rebuild --projection positions`"):
            catch_up(store)
        rebuild(store)
    with Store.open(url) as store:
        assert catch_up(store) == log_end(store)
        assert len(queries.positions(store)) == 2


ENGINE_CHILD = textwrap.dedent(
    """
    import os, sys
    import anyio
    from adapters.paper.broker import PaperBroker
    from adapters.store import Store
    from ledger.engine import Engine
    from ledger.money import Money
    from projections import follow
    from projections.catalogue import live_views
    from projections.database import Database
    from projections.log import log_end
    from projections.runner import PAUSE_VARIABLE

    async def main(store_url, broker_url):
        with Store.open(store_url) as store, PaperBroker.open(broker_url) as broker:
            await broker.fund("main", Money.parse("1000000", "USD"))
            async with Engine.open(store, broker, holder="child") as engine:
                async with anyio.create_task_group() as tasks:
                    await tasks.start(follow, store, 0.05)
                    await engine.deposit("main", "50000", "USD")
                    await engine.open_position("main", "BTCUSD", "long", "0.1")
                    (view,) = live_views(Database(store), ["positions"])
                    end = log_end(store)
                    await anyio.to_thread.run_sync(view.tracking.wait, "ledger", end, 20.0)
                    print(end, flush=True)
                    os.environ[PAUSE_VARIABLE] = "catch-up"
                    await engine.open_position("main", "ETHUSD", "short", "1")
                    await engine.withdraw("main", "10", "USD")
                    await anyio.sleep(60)

    anyio.run(main, *sys.argv[1:3])
    """
)


def test_after_a_kill_9_of_the_engine_views_go_on_from_their_tracked_position(
    new_store_url, tmp_path
):
    url = new_store_url()
    broker_url = f"paper:///{tmp_path / 'broker.db'}?seed=2"
    # The engine dies while its views are half way through a batch.
    printed = kill_when_paused(ENGINE_CHILD, url, broker_url, point="catch-up", set_pause=False)
    first_end = int(printed[0])
    with Store.open(url) as store:
        # What the views committed before stands; the batch in flight left no trace.
        assert set(positions_of(store).values()) == {first_end}
        assert log_end(store) > first_end

        async def next_start() -> None:
            with PaperBroker.open(broker_url) as broker:
                async with (
                    Engine.open(store, broker, holder="next") as engine,
                    anyio.create_task_group() as tasks,
                ):
                    # Ready once the views have caught up from where they stood.
                    await tasks.start(follow, engine.store)
                    tasks.cancel_scope.cancel()

        anyio.run(next_start)
        assert set(positions_of(store).values()) == {log_end(store)}
        assert check(store) is None
        assert_audit_clean(store)
        assert [row.symbol for row in queries.positions(store)] == ["BTCUSD", "ETHUSD"]


@pytest.mark.anyio
async def test_follow_keeps_the_views_current_while_the_engine_runs(store_url, tmp_path):
    broker_url = f"paper:///{tmp_path / 'broker.db'}?seed=5"
    with PaperBroker.open(broker_url) as broker:
        await broker.fund("main", Money.parse("1000000", "USD"))
    with Store.open(store_url) as reader, PaperBroker.open(broker_url) as broker:
        async with (
            Engine.open(reader, broker, holder="test") as engine,
            anyio.create_task_group() as tasks,
        ):
            await tasks.start(follow, engine.store)
            await engine.deposit("main", "50000", "USD")
            opened = await engine.open_position("main", "BTCUSD", "long", "0.1")
            await engine.withdraw("main", "100", "USD")
            end = log_end(reader)
            (view,) = live_views(Database(reader), ["balances"])
            await anyio.to_thread.run_sync(view.tracking.wait, APPLICATION, end, 20.0)
            tasks.cancel_scope.cancel()
        (balance,) = queries.balances(reader)
        assert balance.total == Money.parse("49900", "USD").amount - balance.fees
        assert [row.position_id for row in queries.positions(reader)] == [opened.position_id]
