"""Fixtures shared by the whole suite: stores on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings

from adapters.store import Store
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
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A store URL for an empty schema of its own in the throwaway server."""
    schema, url = fresh_postgres_schema(postgres_server)
    yield url
    drop_postgres_schema(postgres_server, schema)


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
