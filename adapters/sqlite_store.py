"""eventsourcing's SQLite persistence, made durable and private.

Every connection is put in WAL mode with `synchronous=FULL`, and both are
read back: a connection that does not confirm them is refused, because a
commit that is not fsync'd is not a commit a ledger can promise. The
database file is created with mode 0600 before SQLite opens it; SQLite
gives its `-wal` and `-shm` files the database file's mode.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from eventsourcing.persistence import PersistenceError
from eventsourcing.sqlite import SQLiteConnection, SQLiteConnectionPool, SQLiteFactory
from eventsourcing.utils import Environment, EnvType

FILE_MODE = 0o600
SYNCHRONOUS_FULL = 2


class NotDurableError(PersistenceError):
    """Raised when SQLite will not confirm WAL mode and synchronous=FULL."""


def create_private_file(path: Path) -> None:
    """Create `path` with mode 0600 if it does not exist; never open an existing one.

    Closing any descriptor of a file releases every POSIX lock the process
    holds on it, SQLite's own included. Were an existing database opened
    and closed here while this process has it open, another process's
    SQLite would then find itself the last user on closing, checkpoint,
    and delete the write-ahead log this process is still appending to.
    """
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    except FileExistsError:
        return
    os.close(descriptor)


def make_durable(connection: sqlite3.Connection, name: str) -> None:
    """Put `connection` in WAL mode with synchronous=FULL, and confirm both took."""
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    synchronous = connection.execute("PRAGMA synchronous").fetchone()[0]
    journal_mode = str(connection.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    if synchronous != SYNCHRONOUS_FULL or journal_mode != "wal":
        msg = (
            f"SQLite at {name} runs journal_mode={journal_mode}, "
            f"synchronous={synchronous}; the ledger needs wal and 2 (FULL)"
        )
        raise NotDurableError(msg)


class DurableSQLiteConnectionPool(SQLiteConnectionPool):
    """A pool whose every connection is checked for WAL and synchronous=FULL."""

    def _create_connection(self) -> SQLiteConnection:
        connection = super()._create_connection()
        try:
            make_durable(connection._sqlite_conn, self.db_name)  # noqa: SLF001 - no public handle
        except NotDurableError:
            connection.close()
            raise
        return connection


class DurableSQLiteFactory(SQLiteFactory):
    """SQLiteFactory with the durable connection pool."""

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        # SQLiteFactory builds its own pool; nothing has connected through it
        # yet, so replacing it here is the one place our pragmas can go.
        pool = self.datastore.pool
        self.datastore.pool = DurableSQLiteConnectionPool(
            db_name=pool.db_name, lock_timeout=pool.lock_timeout
        )
