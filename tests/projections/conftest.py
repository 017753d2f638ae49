"""Fixtures of the projection tests: stores made fresh as often as a test needs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.conftest import drop_postgres_schema, fresh_postgres_schema


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgresql"])
def new_store_url(request, tmp_path_factory) -> Iterator[Callable[[], str]]:
    """Make an empty store URL per call, on SQLite and on PostgreSQL (a schema each)."""
    server = request.getfixturevalue("postgres_server") if request.param == "postgresql" else ""
    schemas: list[str] = []

    def make() -> str:
        if not server:
            return f"sqlite:///{tmp_path_factory.mktemp('store') / 'ledger.db'}"
        schema, url = fresh_postgres_schema(server)
        schemas.append(schema)
        return url

    yield make
    for schema in schemas:
        drop_postgres_schema(server, schema)
