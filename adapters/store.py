"""The ledger's event store, chosen by URL.

- `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`: one local
  file in WAL mode with synchronous=FULL, created 0600 (the default).
- `postgresql://user:password@host:port/database[?schema=name&connect_timeout=5]`:
  a PostgreSQL database through a psycopg connection pool.

Either way it is an eventsourcing `Application` with our MessagePack
mapper; `save(*aggregates)` is one atomic transaction.
"""

from __future__ import annotations

import enum
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit
from uuid import UUID

import msgspec
import psycopg
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import InternalError, Mapper, PersistenceError
from eventsourcing.utils import Environment, EnvType, get_topic

from adapters.codec import MsgspecMapper
from adapters.lease import postgres_lease, sqlite_lease
from adapters.sqlite_store import DurableSQLiteFactory, create_private_file
from ledger.account import Account
from ledger.aggregate import Aggregate
from ledger.catalogue import EVENT_TYPES

DEFAULT_STORE_URL = "sqlite:///./ledger.db"

A = TypeVar("A", bound=Aggregate)

NOTIFICATION_PAGE = 1000


def _topics(*names: str) -> list[str]:
    """Every stored topic (every version) of the events called `names`."""
    by_name = {cls.stored_name: cls for cls in EVENT_TYPES}
    return [
        f"{name}/v{version}"
        for name in names
        for version in range(1, by_name[name].class_version + 1)
    ]


INTENT_STARTS = _topics("intent.recorded")
INTENT_ENDS = _topics(
    "intent.completed", "intent.failed", "intent.rolled_back", "intent.resolved_by_operator"
)
POSITION_STARTS = _topics("position.opened")
POSITION_ENDS = _topics("position.closed")
ACCOUNT_STARTS = _topics("account.opened")

# The version of the tables this code writes. Stored in the database, so an
# older ledger refuses a store a newer one has migrated.
SCHEMA_VERSION = 1

# Opening a store that another process is opening at the same moment may
# need another try (see _application); bounded, like every retry here.
OPEN_ATTEMPTS = 5
OPEN_RETRY_SECONDS = 0.05

# Accounts see the most events (every reservation, settlement, fee); a
# snapshot every this many events bounds the replay needed to load one.
ACCOUNT_SNAPSHOT_INTERVAL = 100


class StoreError(Exception):
    """Raised when a store URL is malformed or the store cannot be opened as the ledger's."""


class StoreKind(enum.StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


@dataclass(frozen=True)
class StoreLocation:
    """A parsed store URL. `describe()` is safe to print: it never shows a password."""

    kind: StoreKind
    environment: dict[str, str] = field(repr=False)  # holds the password
    path: Path | None = None

    def describe(self) -> str:
        if self.path is not None:
            return str(self.path.resolve())
        env = self.environment
        return (
            f"postgresql://{env['POSTGRES_USER']}@{env['POSTGRES_HOST']}:"
            f"{env['POSTGRES_PORT']}/{env['POSTGRES_DBNAME']}"
            + (f"?schema={env['POSTGRES_SCHEMA']}" if env.get("POSTGRES_SCHEMA") else "")
        )


def parse_store_url(url: str) -> StoreLocation:
    """Parse `url` into a store location, or raise `StoreError` saying what is wrong."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise StoreError("the store URL is malformed") from None
    if parts.scheme == "sqlite":
        # The URL is never echoed: a mistyped one may carry a password.
        if parts.netloc or not parts.path.startswith("/") or len(parts.path) < 2 or parts.query:
            raise StoreError("a SQLite store URL is sqlite:///path/to/ledger.db")
        path = Path(unquote(parts.path[1:]))
        # SQLite is opened with URI names on: "file:..." or "?" would name another file.
        if str(path).startswith("file:") or any(c in str(path) for c in "?#\0"):
            raise StoreError("a SQLite store path may not start with file: or hold ? or #")
        environment = {
            "PERSISTENCE_MODULE": get_topic(DurableSQLiteFactory),
            "SQLITE_DBNAME": str(path),
        }
        return StoreLocation(StoreKind.SQLITE, environment, path=path)
    if parts.scheme in {"postgresql", "postgres"}:
        database = unquote(parts.path.lstrip("/"))
        if not parts.hostname or not database:
            raise StoreError("a PostgreSQL store URL is postgresql://user:password@host:port/db")
        try:
            port = parts.port or 5432
        except ValueError:  # also raised for a malformed host, e.g. "[::1"
            raise StoreError("the PostgreSQL port in the store URL is not a number") from None
        options = parse_qs(parts.query, keep_blank_values=True)
        for name in options.keys() - {"schema", "connect_timeout"}:
            raise StoreError(
                f"unknown PostgreSQL store option {name!r} (known: schema, connect_timeout)"
            )
        timeout = options.get("connect_timeout", ["5"])[0]
        if not (timeout.isascii() and timeout.isdigit()) or not 1 <= int(timeout[:6]) <= 3600:
            raise StoreError("connect_timeout is a whole number of seconds, 1..3600")
        environment = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": database,
            "POSTGRES_HOST": parts.hostname,
            "POSTGRES_PORT": str(port),
            "POSTGRES_USER": unquote(parts.username or ""),
            "POSTGRES_PASSWORD": unquote(parts.password or ""),
            "POSTGRES_SCHEMA": options.get("schema", [""])[0],
            # Seconds to wait for a connection: an operator at a terminal
            # should hear that the database is unreachable, not wait 30 s.
            "POSTGRES_CONNECT_TIMEOUT": timeout,
        }
        return StoreLocation(StoreKind.POSTGRESQL, environment)
    shown = parts.scheme or url.split(":", 1)[0] or "(none)"
    raise StoreError(f"unknown store kind {shown!r}: use sqlite:/// or postgresql://")


class LedgerApplication(Application[UUID]):
    """The eventsourcing application that holds the ledger's aggregates."""

    name = "ledger"
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {Account: ACCOUNT_SNAPSHOT_INTERVAL}
    snapshotting_projectors: ClassVar[dict[type[Any], Any]] = {Account: Account.project}

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        # Only the store URL configures the ledger: variables that happen to
        # be in the process environment (a CIPHER_KEY, a PERSISTENCE_MODULE)
        # must not silently change how money is stored.
        settings = {"IS_SNAPSHOTTING_ENABLED": "y"}
        settings.update(env or {})
        return Environment(name, settings)

    def construct_mapper(self) -> Mapper[UUID]:
        return MsgspecMapper(
            EVENT_TYPES, compressor=self.factory.compressor(), cipher=self.factory.cipher()
        )


class StoreInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What `ledger info` reports about a store."""

    kind: str
    location: str
    event_count: int
    last_sequence: int
    schema_version: int


class Store:
    """An open ledger store: the application, and facts about the database under it."""

    def __init__(self, location: StoreLocation) -> None:
        self.location = location
        if location.path is not None:
            _prepare_sqlite_file(location.path)
        self.application = _application(location)
        try:
            self._check_durability()
            self._check_schema_version()
        except PersistenceError as error:
            self.close()
            raise StoreError(f"cannot open {location.describe()}: {error}") from error
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, url: str) -> Store:
        return cls(parse_store_url(url))

    def close(self) -> None:
        self.application.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # The ledger store port (ledger.ports.LedgerStore) --------------------------------

    def save(self, *aggregates: Aggregate) -> None:
        self.application.save(*aggregates)

    def get(self, aggregate_class: type[A], aggregate_id: UUID) -> A | None:
        try:
            aggregate: A = self.application.repository.get(
                aggregate_id, projector_func=aggregate_class.project
            )
        except AggregateNotFoundError:
            return None
        return aggregate

    def refreshed(self, aggregate_class: type[A], aggregate_id: UUID, known: A | None) -> A | None:
        if known is None:
            return self.get(aggregate_class, aggregate_id)
        stored = self.application.recorder.select_events(aggregate_id, gt=known.version)
        if not stored:
            return known
        events = [self.application.mapper.to_domain_event(item) for item in stored]
        return aggregate_class.project(known, events)

    def unfinished_intents(self) -> list[UUID]:
        """Intents recorded and not yet terminal, oldest first."""
        return self._live(INTENT_STARTS, INTENT_ENDS)

    def open_positions(self) -> list[UUID]:
        """Positions opened and not yet closed, oldest first."""
        return self._live(POSITION_STARTS, POSITION_ENDS)

    def accounts(self) -> list[UUID]:
        """Every account, oldest first."""
        return self._live(ACCOUNT_STARTS, [])

    def _live(self, starts: list[str], ends: list[str]) -> list[UUID]:
        """Streams with a `starts` event and no `ends` event, by reading those events in order."""
        ending = frozenset(ends)
        live: dict[UUID, None] = {}
        position = 1
        while True:
            page = self.application.recorder.select_notifications(
                start=position, limit=NOTIFICATION_PAGE, topics=[*starts, *ends]
            )
            for notification in page:
                stream = UUID(str(notification.originator_id))
                if notification.topic in ending:
                    live.pop(stream, None)
                else:
                    live[stream] = None
            if len(page) < NOTIFICATION_PAGE:
                return list(live)
            position = page[-1].id + 1

    @contextmanager
    def lease(self, holder: str) -> Iterator[int]:
        """Hold the single-writer lease; yields this lease's epoch (one more than the last)."""
        if self.location.path is not None:
            lock = sqlite_lease(self.location.path, holder)
        else:
            schema = self.application.recorder.datastore.schema  # type: ignore[attr-defined]
            lock = postgres_lease(self._connect, schema, holder)
        with lock:
            table = self._table("ledger_lease")
            with self._transaction(commit=True) as cursor:
                cursor.execute(f"UPDATE {table} SET epoch = epoch + 1")  # noqa: S608
                cursor.execute(f"SELECT epoch FROM {table}")  # noqa: S608
                epoch = int(_first(cursor.fetchone()))
            yield epoch

    def _connect(self) -> psycopg.Connection[Any]:
        env = self.location.environment
        return psycopg.connect(
            host=env["POSTGRES_HOST"],
            port=int(env["POSTGRES_PORT"]),
            user=env["POSTGRES_USER"],
            password=env["POSTGRES_PASSWORD"],
            dbname=env["POSTGRES_DBNAME"],
            connect_timeout=int(env["POSTGRES_CONNECT_TIMEOUT"]),
        )

    def info(self) -> StoreInfo:
        events = self._table(self.application.recorder.events_table_name)  # type: ignore[attr-defined]
        count = self._scalar(f"SELECT COUNT(*) FROM {events}")  # noqa: S608 - our own table name
        return StoreInfo(
            kind=self.location.kind.value,
            location=self.location.describe(),
            event_count=count,
            last_sequence=self.application.recorder.max_notification_id() or 0,
            schema_version=self._scalar(f"SELECT version FROM {self._table('ledger_schema')}"),  # noqa: S608
        )

    def _table(self, name: str) -> str:
        """`name` qualified with the PostgreSQL schema the store URL chose."""
        if self.location.kind is StoreKind.POSTGRESQL:
            schema = self.application.recorder.datastore.schema  # type: ignore[attr-defined]
            return f'"{schema}"."{name}"'
        return name

    def _check_durability(self) -> None:
        """Refuse a PostgreSQL server that would acknowledge commits it has not flushed.

        (SQLite's equivalent is checked on every connection by the pool.)
        """
        if self.location.kind is not StoreKind.POSTGRESQL:
            return
        with self._transaction(commit=False) as cursor:
            cursor.execute("SHOW fsync")
            fsync = _first(cursor.fetchone())
            cursor.execute("SHOW synchronous_commit")
            synchronous_commit = _first(cursor.fetchone())
        if fsync != "on" or synchronous_commit == "off":
            raise StoreError(
                f"{self.location.describe()} runs with fsync={fsync}, "
                f"synchronous_commit={synchronous_commit}: a commit could be lost; "
                "the ledger needs fsync=on and synchronous_commit other than off"
            )

    def _check_schema_version(self) -> None:
        stored = self._stored_schema_version()
        if stored is None:
            stored = self._create_schema_tables()
        if stored > SCHEMA_VERSION:
            raise StoreError(
                f"{self.location.describe()} has schema version {stored}; this ledger "
                f"understands up to {SCHEMA_VERSION}: upgrade the ledger"
            )

    def _stored_schema_version(self) -> int | None:
        """The schema version, read only: None while the store's own tables are not made yet.

        Read first, so opening an existing store never writes: processes that
        open it at once (an engine, its views, an operator's read) must not
        queue for SQLite's single write lock just to find nothing to do.
        """
        try:
            with self._transaction(commit=False) as cursor:
                cursor.execute(f"SELECT version FROM {self._table('ledger_schema')}")  # noqa: S608
                version = cursor.fetchone()
                cursor.execute(f"SELECT epoch FROM {self._table('ledger_lease')}")  # noqa: S608
                epoch = cursor.fetchone()
        except (sqlite3.Error, psycopg.Error, PersistenceError):
            return None  # the tables do not exist yet
        return None if version is None or epoch is None else int(_first(version))

    def _create_schema_tables(self) -> int:
        table = self._table("ledger_schema")
        with self._transaction(commit=True) as cursor:
            cursor.execute(f"CREATE TABLE IF NOT EXISTS {table} (version INTEGER NOT NULL)")
            # Written once, by whichever process opens the new store first.
            cursor.execute(
                f"INSERT INTO {table} (version) SELECT {SCHEMA_VERSION} "  # noqa: S608
                f"WHERE NOT EXISTS (SELECT 1 FROM {table})"
            )
            cursor.execute(f"SELECT version FROM {table}")  # noqa: S608 - our own table
            stored = int(_first(cursor.fetchone()))
            lease = self._table("ledger_lease")
            cursor.execute(f"CREATE TABLE IF NOT EXISTS {lease} (epoch INTEGER NOT NULL)")
            cursor.execute(
                f"INSERT INTO {lease} (epoch) SELECT 0 "  # noqa: S608
                f"WHERE NOT EXISTS (SELECT 1 FROM {lease})"
            )
        return stored

    def _scalar(self, statement: str) -> int:
        with self._transaction(commit=False) as cursor:
            cursor.execute(statement)
            return int(_first(cursor.fetchone()))

    def _transaction(self, *, commit: bool) -> AbstractContextManager[Any]:
        datastore = self.application.recorder.datastore  # type: ignore[attr-defined]
        return cast("AbstractContextManager[Any]", datastore.transaction(commit=commit))


def _application(location: StoreLocation) -> LedgerApplication:
    """The application on `location`, opened again if a concurrent open got in the way.

    eventsourcing makes its tables (IF NOT EXISTS) on every open, and
    PostgreSQL refuses the same DDL from two sessions at the same moment
    ("tuple concurrently updated"): a second try finds the tables made.
    """
    attempt = 1
    while True:
        try:
            return LedgerApplication(env=location.environment)
        except InternalError as error:
            if attempt == OPEN_ATTEMPTS:
                raise StoreError(f"cannot open {location.describe()}: {error}") from error
        except PersistenceError as error:
            raise StoreError(f"cannot open {location.describe()}: {error}") from error
        time.sleep(OPEN_RETRY_SECONDS * attempt)
        attempt += 1


def _first(row: object) -> int | str:
    """The first column of a row: psycopg gives dicts here, sqlite3 gives Rows."""
    value = next(iter(row.values())) if isinstance(row, dict) else row[0]  # type: ignore[index]
    if not isinstance(value, int | str):
        msg = f"expected a number or text from the store, got {type(value).__name__}"
        raise StoreError(msg)
    return value


def _prepare_sqlite_file(path: Path) -> None:
    if not path.parent.is_dir():
        raise StoreError(f"the folder for {path} does not exist")
    try:
        create_private_file(path)
    except OSError as error:
        raise StoreError(f"cannot create {path}: {error.strerror}") from error
