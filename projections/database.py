"""The views' access to the store's database: one SQL text for SQLite and PostgreSQL.

Views live next to the events, in the same database and (on PostgreSQL)
the same schema, and every write goes through the store's own connection
pool, so a view's rows and its tracked position commit together. The SQL
the views write uses `?` placeholders and the `ON CONFLICT` and
`RETURNING` clauses both backends understand; only the placeholder
differs, and `sql()` rewrites it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from adapters.store import Store, StoreKind


class Cursor(Protocol):
    """What both drivers' cursors (through eventsourcing's datastores) offer."""

    def execute(self, statement: str, params: Sequence[Any] = ..., /) -> Any: ...  # noqa: ANN401 - drivers differ

    def executemany(self, statement: str, params: Sequence[Sequence[Any]], /) -> Any: ...  # noqa: ANN401 - drivers differ

    def fetchone(self) -> Any: ...  # noqa: ANN401 - a sqlite3.Row or a psycopg dict row

    def fetchall(self) -> Any: ...  # noqa: ANN401 - a list of either


def values(row: Any) -> tuple[Any, ...]:  # noqa: ANN401 - a sqlite3.Row or a psycopg dict row
    """A row's values in column order, from either driver."""
    return tuple(row.values()) if isinstance(row, dict) else tuple(row)


def like_literal(text: str) -> str:
    """`text` as a SQL LIKE pattern that matches only itself (`\\` escapes)."""
    return text.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%")


class Database:
    """The store's database, as the views use it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.postgres = store.location.kind is StoreKind.POSTGRESQL

    def table(self, name: str) -> str:
        """`name` as the SQL names it: schema-qualified on PostgreSQL."""
        # One definition of where the ledger's tables live: the store's.
        return self.store._table(name)  # noqa: SLF001 - the store's own naming rule, reused

    @property
    def events_table(self) -> str:
        """The store's events table, as the SQL names it."""
        recorder = self.store.application.recorder
        return self.table(recorder.events_table_name)  # type: ignore[attr-defined]

    @property
    def sequence_column(self) -> str:
        """The events table's column that holds each event's place in the log."""
        # PostgreSQL has a notification_id column; SQLite numbers rows by rowid.
        return "notification_id" if self.postgres else "rowid"

    def sql(self, statement: str) -> str:
        """`statement` with `?` placeholders, in the driver's placeholder style."""
        return statement.replace("?", "%s") if self.postgres else statement

    @contextmanager
    def transaction(self, *, commit: bool) -> Iterator[Cursor]:
        """A cursor in one transaction: committed at the end when `commit`, else rolled back."""
        with self.store._transaction(commit=commit) as cursor:  # noqa: SLF001 - the store's pool
            yield cursor

    @contextmanager
    def snapshot(self) -> Iterator[Cursor]:
        """A read-only transaction in which every statement sees the same committed state.

        SQLite's read transactions are snapshots already; PostgreSQL's
        default (read committed) takes a new one per statement.
        """
        with self.transaction(commit=False) as cursor:
            if self.postgres:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield cursor

    def lock_for_writing(self, cursor: Cursor, table: str) -> None:
        """Take the database's write lock now, at the start of a transaction (SQLite only).

        SQLite starts a transaction as a reader; one that reads first and
        writes later fails at once ("database is locked", without waiting)
        if another connection committed in between. A write as the first
        statement waits for the lock instead. `table` must exist; no row
        changes. PostgreSQL locks rows, not the database: nothing to do.
        """
        if not self.postgres:
            cursor.execute(f"UPDATE {self.table(table)} SET rowid = rowid WHERE 1 = 0")  # noqa: S608

    def serialise_creation(self, cursor: Cursor) -> None:
        """Make a transaction that creates tables wait for any other doing so (PostgreSQL).

        On PostgreSQL two processes creating one table at once can collide
        in the catalogue; a lock per schema, held to the end of the
        transaction, makes the second wait instead. SQLite has one writer.
        """
        if self.postgres:
            key = zlib.crc32(f"ledger views {self.table('')}".encode())
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (key,))

    def has_table(self, cursor: Cursor, name: str) -> bool:
        """Whether this schema has a table called `name`."""
        return bool(self.tables_named_like(cursor, like_literal(name)))

    def tables_named_like(self, cursor: Cursor, pattern: str) -> list[str]:
        """Names of this schema's tables matching the SQL LIKE `pattern` (`\\` escapes)."""
        if self.postgres:
            qualified = self.table("x")  # '"schema"."x"'
            schema = qualified[1 : -len('"."x"')]
            cursor.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s "
                "AND tablename LIKE %s ESCAPE '\\'",
                (schema, pattern),
            )
        else:
            cursor.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ? ESCAPE '\\'",
                (pattern,),
            )
        return sorted(str(values(row)[0]) for row in cursor.fetchall())

    def rename(self, cursor: Cursor, old: str, new: str) -> None:
        """Rename table `old` to `new` (inside the caller's transaction)."""
        cursor.execute(f"ALTER TABLE {self.table(old)} RENAME TO {new}")
