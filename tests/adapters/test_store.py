"""The store: the same aggregate tests on SQLite and PostgreSQL, durability and privacy."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError

from adapters.store import (
    ACCOUNT_SNAPSHOT_INTERVAL,
    SCHEMA_VERSION,
    Store,
    StoreError,
    parse_store_url,
)
from ledger.account import Account, account_id
from ledger.instruments import Instrument, Price, Quantity, Side
from ledger.intent import Evidence, Intent, IntentKind, IntentStatus, OpenRequest
from ledger.money import Money
from ledger.position import Position, position_id

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
BTC = Instrument(
    symbol="BTCUSD", quote_currency="USD", price_tick=Decimal("0.5"), quantity_step=Decimal("0.001")
)


def usd(text: str) -> Money:
    return Money.parse(text, "USD")


def funded_account(store: Store, name: str = "main") -> Account:
    account = Account.open(name, "USD", recorded_at=NOW)
    account.deposit(usd("10000"), recorded_at=NOW)
    store.application.save(account)
    return account


def test_an_account_reads_back_as_it_was_saved(store):
    account = funded_account(store)
    account.withdraw(usd("250.50"), recorded_at=NOW)
    store.application.save(account)
    loaded = store.application.repository.get(account_id("main"), projector_func=Account.project)
    assert loaded.total == usd("9749.50")
    assert loaded.version == 3
    assert loaded.name == "main"


def test_one_operation_saves_intent_reservation_and_position_together(store):
    account = funded_account(store)
    intent_id = uuid4()
    intent = Intent.record(
        intent_id,
        kind=IntentKind.POSITION_OPEN,
        account_id=account.id,
        payload=OpenRequest(symbol="BTCUSD", side=Side.LONG, quantity=Decimal("0.1")),
        epoch=1,
        recorded_at=NOW,
        reservation=usd("6000"),
    )
    account.reserve(intent_id, usd("6000"), recorded_at=NOW)
    store.application.save(intent, account)

    intent.submit(recorded_at=NOW)
    intent.complete(Evidence(source="submit", observed_at=NOW, broker_ref="B-1"), recorded_at=NOW)
    position = Position.open(
        position_id(intent_id),
        account_id=account.id,
        instrument=BTC,
        side=Side.LONG,
        quantity=Quantity(Decimal("0.1")),
        entry_price=Price(Decimal("59000.5")),
        recorded_at=NOW,
        intent_id=intent_id,
        broker_ref="B-1",
    )
    account.settle(intent_id, position.id, usd("5900.05"), recorded_at=NOW)
    store.application.save(intent, position, account)

    repository = store.application.repository
    assert repository.get(intent_id, projector_func=Intent.project).status is IntentStatus.COMPLETED
    loaded = repository.get(account.id, projector_func=Account.project)
    assert loaded.reserved == usd("0")
    assert loaded.committed == usd("5900.05")
    assert loaded.available == usd("4099.95")
    opened = repository.get(position.id, projector_func=Position.project)
    assert opened.entry_price == Decimal("59000.5")
    assert opened.instrument == BTC


def test_saving_several_aggregates_is_all_or_nothing(store):
    account = funded_account(store)
    stale = store.application.repository.get(account.id, projector_func=Account.project)
    account.deposit(usd("1"), recorded_at=NOW)
    store.application.save(account)
    before = store.info().event_count

    intent_id = uuid4()
    intent = Intent.record(
        intent_id,
        kind=IntentKind.POSITION_OPEN,
        account_id=stale.id,
        payload=OpenRequest(symbol="BTCUSD", side=Side.LONG, quantity=Decimal("0.1")),
        epoch=1,
        recorded_at=NOW,
    )
    stale.reserve(intent_id, usd("100"), recorded_at=NOW)
    with pytest.raises(IntegrityError):
        store.application.save(intent, stale)

    assert store.info().event_count == before
    assert list(store.application.events.get(intent_id)) == []


def test_accounts_are_snapshotted_and_load_the_same_from_a_snapshot(store):
    account = funded_account(store)
    for _ in range(ACCOUNT_SNAPSHOT_INTERVAL):
        account.deposit(usd("1"), recorded_at=NOW)
        store.application.save(account)
    snapshots = store.application.snapshots
    assert snapshots is not None
    assert [s.originator_version for s in snapshots.get(account.id)] == [ACCOUNT_SNAPSHOT_INTERVAL]
    loaded = store.application.repository.get(account.id, projector_func=Account.project)
    assert loaded.total == usd("10100")
    assert loaded.version == ACCOUNT_SNAPSHOT_INTERVAL + 2


def test_info_counts_events_and_reports_the_schema_version(store):
    empty = store.info()
    assert (empty.event_count, empty.last_sequence, empty.schema_version) == (0, 0, SCHEMA_VERSION)
    funded_account(store)
    assert store.info().event_count == 2
    assert store.info().last_sequence == 2


@pytest.mark.tampered
def test_a_store_from_a_newer_ledger_is_refused(store_url):
    with Store.open(store_url) as store:
        table = store._table("ledger_schema")
        with store._transaction(commit=True) as cursor:
            cursor.execute(f"UPDATE {table} SET version = {SCHEMA_VERSION + 1}")  # noqa: S608
    with pytest.raises(StoreError, match="schema version 2; this ledger understands up to 1"):
        Store.open(store_url)


def test_sqlite_files_are_private_and_durable(tmp_path):
    path = tmp_path / "ledger.db"
    with Store.open(f"sqlite:///{path}") as store:
        funded_account(store)
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == ["ledger.db", "ledger.db-shm", "ledger.db-wal"]
        for file in tmp_path.iterdir():
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        with store._transaction(commit=False) as cursor:
            cursor.execute("PRAGMA synchronous")
            assert cursor.fetchone()[0] == 2
            cursor.execute("PRAGMA journal_mode")
            assert cursor.fetchone()[0] == "wal"


def test_sqlite_files_are_private_whatever_the_umask(tmp_path):
    previous = os.umask(0)
    try:
        with Store.open(f"sqlite:///{tmp_path / 'ledger.db'}") as store:
            funded_account(store)
            modes = {stat.S_IMODE(file.stat().st_mode) for file in tmp_path.iterdir()}
    finally:
        os.umask(previous)
    assert modes == {0o600}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://x/y", "unknown store kind 'mysql'"),
        ("ledger.db", "unknown store kind"),
        ("sqlite://ledger.db", "sqlite:///path/to/ledger.db"),
        ("sqlite:///", "sqlite:///path/to/ledger.db"),
        ("postgresql://user@/db", "postgresql://user:password@host:port/db"),
        ("postgresql://user@host/", "postgresql://user:password@host:port/db"),
        ("postgresql://user@host:port/db", "port in the store URL is not a number"),
        ("sqlite:///file:other.db", "may not start with file:"),
        ("sqlite:///ledger.db?mode=ro", "sqlite:///path/to/ledger.db"),
        ("postgresql://u@h/db?sslmode=require", "unknown PostgreSQL store option 'sslmode'"),
        ("postgresql://u@h/db?connect_timeout=abc", "connect_timeout is a whole number"),
        ("postgresql://u@[::1/db", "malformed"),
    ],
)
def test_malformed_store_urls_are_refused_with_the_expected_form(url, message):
    with pytest.raises(StoreError, match=message):
        parse_store_url(url)


def test_a_malformed_url_is_never_echoed_it_may_hold_a_password():
    with pytest.raises(StoreError) as refused:
        parse_store_url("sqlite://bob:S3cretPW@db.example.com/ledger")
    assert "S3cretPW" not in str(refused.value)


def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(f"sqlite:///{tmp_path / 'missing' / 'ledger.db'}")


def test_descriptions_of_a_store_never_show_its_password():
    location = parse_store_url("postgresql://trader:s3cr%40t@db.example:5433/books?schema=live")
    assert location.environment["POSTGRES_PASSWORD"] == "s3cr@t"  # noqa: S105 - a test value
    assert location.describe() == "postgresql://trader@db.example:5433/books?schema=live"
    assert "s3cr" not in repr(location)


def test_relative_and_absolute_sqlite_paths():
    assert parse_store_url("sqlite:///./ledger.db").path == Path("ledger.db")
    assert parse_store_url("sqlite:////var/lib/ledger.db").path == Path("/var/lib/ledger.db")


def test_postgresql_that_acknowledges_unflushed_commits_is_refused(postgres_server):
    server = postgres_server.rsplit("/", 1)[0]
    database = "ledger_async_commit"
    with psycopg.connect(postgres_server, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
        connection.execute(f"ALTER DATABASE {database} SET synchronous_commit = off")
    try:
        with pytest.raises(StoreError, match="synchronous_commit=off: a commit could be lost"):
            Store.open(f"{server}/{database}")
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE {database} WITH (FORCE)")


def test_many_processes_may_open_one_store_at_once(store_url):
    Store.open(store_url).close()  # made once; from then on opening only reads
    errors: list[BaseException] = []

    def open_and_close() -> None:
        try:
            with Store.open(store_url) as opened:
                opened.info()
        except BaseException as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=open_and_close) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def _count_in_child(url: str) -> int:
    """The number of stored events, as a process of its own reads them (and then closes)."""
    code = (
        "import sys\n"
        "from adapters.store import Store\n"
        "with Store.open(sys.argv[1]) as store:\n"
        "    print(store.application.recorder.max_notification_id() or 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, url], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_opening_the_store_again_in_a_process_keeps_its_commits_safe_from_others(tmp_path):
    # Closing any descriptor of a file drops every POSIX lock the process
    # holds on it, SQLite's included. A second open in the same process
    # must not do that, or another process's close would take the last
    # connection's liberty to checkpoint and delete the WAL under us.
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url) as engine_store:
        funded_account(engine_store, "first")
        with Store.open(url):  # as `ledger run` opens the store for its views
            pass
        assert _count_in_child(url) == 2
        funded_account(engine_store, "second")
        assert (tmp_path / "ledger.db-wal").exists()
        assert _count_in_child(url) == 4
    assert _count_in_child(url) == 4
