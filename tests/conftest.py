"""Fixtures shared by the whole suite: stores on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings

from adapters.store import Store
from tests.agreement import assert_audit_clean
from tests.postgres_server import throwaway_postgres

# Property tests run on shared two-core machines: no deadline, modest counts.
settings.register_profile("ledger", deadline=None, max_examples=100)
settings.load_profile("ledger")

POSTGRES_URL_VARIABLE = "LEDGER_TEST_POSTGRES_URL"

# Engines the tests run serve their API on any free port, never on the
# default one another engine on this machine may hold.
os.environ["LEDGER_HTTP"] = "127.0.0.1:0"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of the session's throwaway PostgreSQL database.

    An already running server can be used instead by setting
    LEDGER_TEST_POSTGRES_URL; without it, one is started and stopped here.
    A missing server is an error, never a skip.
    """
    given = os.environ.get(POSTGRES_URL_VARIABLE)
    if given:
        yield given
        return
    with throwaway_postgres() as url:
        os.environ[POSTGRES_URL_VARIABLE] = url
        try:
            yield url
        finally:
            del os.environ[POSTGRES_URL_VARIABLE]


def fresh_postgres_schema(server_url: str) -> tuple[str, str]:
    """Create an empty schema; return its name and a store URL that uses it."""
    schema = f"test_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    return schema, f"{server_url}?schema={schema}"


def drop_postgres_schema(server_url: str, schema: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def postgres_url(postgres_server: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A store URL for an empty schema of its own in the throwaway server.

    What the test leaves in it must pass `ledger audit verify` (see
    `every_sqlite_store_audits_clean`) before the schema is dropped.
    """
    schema, url = fresh_postgres_schema(postgres_server)
    yield url
    try:
        if not _tampered(request):
            with Store.open(url) as store:
                if store.info().event_count:
                    assert_audit_clean(store)
    finally:
        drop_postgres_schema(postgres_server, schema)


@pytest.fixture(autouse=True)
def every_sqlite_store_audits_clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every ledger store a test leaves in its folder passes `ledger audit verify`.

    So every store the crash, fault and property tests produce is audited,
    not only those a test thinks of checking. A test that damages stored
    events on purpose says so with the `tampered` mark.
    """
    if "tmp_path" not in request.fixturenames or _tampered(request):
        yield
        return
    # Asked for here, so that it is torn down after this fixture looks in it.
    folder: Path = request.getfixturevalue("tmp_path")
    yield
    for path in sorted(folder.rglob("*.db")):
        if _holds_ledger_events(path):
            with Store.open(f"sqlite:///{path}") as store:
                assert_audit_clean(store)


def _tampered(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker("tampered") is not None


def _holds_ledger_events(path: Path) -> bool:
    """Whether `path` is a ledger store with events (not a paper broker's books)."""
    with closing(sqlite3.connect(path)) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        if "stored_events" not in tables:
            return False
        return connection.execute("SELECT 1 FROM stored_events LIMIT 1").fetchone() is not None


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The same test, once on SQLite and once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store.open(store_url) as opened:
        yield opened
