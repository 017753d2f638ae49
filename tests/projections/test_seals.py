"""Seals: the chain's head stored every N events and at the end, the same from any process."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from adapters.bootstrap import open_engine
from adapters.store import Store
from ledger.account import Account
from ledger.money import Money
from projections import catch_up
from projections.chain import GENESIS, Link, extend
from projections.database import Database
from projections.log import log_end, stored_rows
from projections.seals import SEAL_EVERY, Seal, head, last_seal, seal, seals

MOMENT = datetime(2026, 3, 4, tzinfo=UTC)


def deposit(store: Store, count: int, name: str = "main") -> None:
    """`count` events on account `name`, in one transaction."""
    account = Account.open(name, "USD", recorded_at=MOMENT)
    for _ in range(count - 1):
        account.deposit(Money.parse("1", "USD"), recorded_at=MOMENT)
    store.save(account)


def recomputed(store: Store) -> list[Link]:
    """Every link of the chain, from the start."""
    links, link = [], GENESIS
    for page in stored_rows(store, after=0, stop=log_end(store), size=7):
        for row in page:
            link = extend(link, row)
            links.append(link)
    return links


def stored(store: Store) -> list[Link]:
    return [found.link for found in seals(Database(store), size=3)]


def test_seals_every_n_events_and_at_the_end_when_final(store):
    deposit(store, 23)
    links = recomputed(store)
    assert seal(store, every=5) == links[-1]
    assert stored(store) == [links[4], links[9], links[14], links[19]]
    assert seal(store, every=5, final=True) == links[-1]
    assert stored(store) == [links[4], links[9], links[14], links[19], links[22]]
    sealed = last_seal(Database(store))
    assert isinstance(sealed, Seal)
    assert sealed.sealed_at.tzinfo is not None


def test_sealing_goes_on_from_the_last_seal_and_writes_a_seal_once(store):
    deposit(store, 6)
    seal(store, every=4, final=True)
    deposit(store, 6, name="desk")
    seal(store, every=4, final=True)
    seal(store, every=4, final=True)
    links = recomputed(store)
    assert stored(store) == [links[3], links[5], links[7], links[11]]
    assert head(store) == links[-1]


def test_an_empty_log_has_no_seal_and_the_chain_start_as_its_head(store):
    assert head(store) == GENESIS
    assert seal(store, final=True) == GENESIS
    assert stored(store) == []


def test_the_head_is_computed_without_writing(store):
    deposit(store, 3)
    assert head(store) == recomputed(store)[-1]
    assert last_seal(Database(store)) is None


def test_processes_sealing_at_once_agree(store_url):
    with Store.open(store_url) as store:
        deposit(store, 40)
        expected = recomputed(store)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def sealer(final: bool) -> None:  # noqa: FBT001
        try:
            with Store.open(store_url) as own:
                start.wait()
                seal(own, every=3, final=final)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    threads = [threading.Thread(target=sealer, args=(index % 2 == 0,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Store.open(store_url) as store:
        assert stored(store) == [*expected[2::3], expected[-1]]


def test_catching_up_the_views_extends_the_seals(store):
    deposit(store, SEAL_EVERY + 5)
    catch_up(store)
    assert stored(store) == [recomputed(store)[SEAL_EVERY - 1]]


def test_an_engine_session_that_ends_well_seals_its_last_event(sqlite_url, tmp_path: Path):
    async def session() -> None:
        async with open_engine(store=sqlite_url, broker=f"paper:///{tmp_path}/broker.db") as engine:
            await engine.deposit("main", "100", "USD")

    anyio.run(session)
    with Store.open(sqlite_url) as store:
        sealed = last_seal(Database(store))
        assert sealed is not None
        assert sealed.link == recomputed(store)[-1]


def test_an_engine_session_that_fails_seals_nothing(sqlite_url, tmp_path: Path):
    async def session() -> None:
        async with open_engine(store=sqlite_url, broker=f"paper:///{tmp_path}/broker.db") as engine:
            await engine.deposit("main", "100", "USD")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        anyio.run(session)
    with Store.open(sqlite_url) as store:
        assert log_end(store) > 0
        assert last_seal(Database(store)) is None
