"""Where each view is in the notification log: eventsourcing's tracking, one row per view.

eventsourcing's own tracking recorders keep one row per upstream
application in a table of their own (on SQLite always named `tracking`),
which assumes one view per database. Here several views share the
store's database, so the tracking table is keyed by view and application.
Each row also holds the version of the view's code and a generation that
changes whenever a rebuild swaps the view's tables: a writer that read
the view before a swap can tell, and starts again.
"""

from __future__ import annotations

import secrets

import msgspec
from eventsourcing.persistence import IntegrityError, Tracking, TrackingRecorder

from adapters.store import LedgerApplication
from projections.database import Cursor, Database, values

TRACKING_TABLE = "view_tracking"
APPLICATION = LedgerApplication.name


class Tracked(msgspec.Struct, frozen=True):
    """A view's tracked notification id, with the generation and code version it holds."""

    notification_id: int
    generation: str
    version: int


def new_generation() -> str:
    return secrets.token_hex(4)


def create_tracking_table(database: Database, cursor: Cursor) -> None:
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {database.table(TRACKING_TABLE)} ("
        "view_name TEXT NOT NULL, application_name TEXT NOT NULL, "
        "notification_id BIGINT NOT NULL, generation TEXT NOT NULL, version BIGINT NOT NULL, "
        "PRIMARY KEY (view_name, application_name))"
    )


class ViewTracking(TrackingRecorder):
    """The tracked position of one view (`view_name`) in the ledger's notification log."""

    def __init__(self, database: Database, view_name: str) -> None:
        self.database = database
        self.view_name = view_name
        table = database.table(TRACKING_TABLE)
        self._select = database.sql(
            f"SELECT notification_id, generation, version FROM {table} "  # noqa: S608
            "WHERE view_name = ? AND application_name = ?"
        )
        self._start = database.sql(
            f"INSERT INTO {table} VALUES (?, ?, 0, ?, ?) "  # noqa: S608 - our own table
            "ON CONFLICT (view_name, application_name) DO NOTHING"
        )
        self._advance = database.sql(
            f"UPDATE {table} SET notification_id = ? "  # noqa: S608 - our own table
            "WHERE view_name = ? AND application_name = ? "
            "AND notification_id = ? AND generation = ? RETURNING notification_id"
        )
        self._replace = database.sql(
            f"UPDATE {table} SET notification_id = ?, generation = ?, version = ? "  # noqa: S608
            "WHERE view_name = ? AND application_name = ? RETURNING notification_id"
        )
        self._lock = database.sql(
            f"UPDATE {table} SET notification_id = notification_id "  # noqa: S608
            "WHERE view_name = ? AND application_name = ? "
            "RETURNING notification_id, generation, version"
        )
        self._remove = database.sql(
            f"DELETE FROM {table} WHERE view_name = ?"  # noqa: S608 - our own table
        )

    # eventsourcing's TrackingRecorder ---------------------------------------------

    def max_tracking_id(self, application_name: str) -> int | None:
        with self.database.transaction(commit=False) as cursor:
            position = self.read(cursor, application_name)
        return (position.notification_id or None) if position else None

    def insert_tracking(self, tracking: Tracking) -> None:
        """Move the view forward to `tracking` (never back), with no rows: for gaps."""
        with self.database.transaction(commit=True) as cursor:
            self.database.lock_for_writing(cursor, TRACKING_TABLE)
            position = self.read(cursor, tracking.application_name)
            if position is None or position.notification_id >= tracking.notification_id:
                msg = f"view {self.view_name} cannot move to {tracking.notification_id}"
                raise IntegrityError(msg)
            self.advance(cursor, position, tracking.notification_id)

    # Within a caller's transaction -------------------------------------------------

    def start(self, cursor: Cursor, version: int) -> None:
        """Track the view from position 0, unless it is tracked already."""
        cursor.execute(self._start, (self.view_name, APPLICATION, new_generation(), version))

    def read(self, cursor: Cursor, application_name: str = APPLICATION) -> Tracked | None:
        cursor.execute(self._select, (self.view_name, application_name))
        row = cursor.fetchone()
        return None if row is None else Tracked(*values(row))

    def lock(self, cursor: Cursor) -> Tracked | None:
        """Read the position, holding its row until the transaction ends."""
        cursor.execute(self._lock, (self.view_name, APPLICATION))
        row = cursor.fetchone()
        return None if row is None else Tracked(*values(row))

    def advance(self, cursor: Cursor, expected: Tracked, notification_id: int) -> bool:
        """Move from `expected` to `notification_id`; False if another writer moved it first.

        The first write of the transaction, so it also takes the row (and on
        SQLite the database) for the rest of it: two processes catching up
        at once apply each batch once, never twice.
        """
        cursor.execute(
            self._advance,
            (
                notification_id,
                self.view_name,
                APPLICATION,
                expected.notification_id,
                expected.generation,
            ),
        )
        return cursor.fetchone() is not None

    def replace(self, cursor: Cursor, position: Tracked) -> None:
        """Set the position outright: a rebuild's, when its tables become the view."""
        cursor.execute(
            self._replace,
            (
                position.notification_id,
                position.generation,
                position.version,
                self.view_name,
                APPLICATION,
            ),
        )
        if cursor.fetchone() is None:
            msg = f"view {self.view_name} is not tracked"
            raise IntegrityError(msg)

    def remove(self, cursor: Cursor) -> None:
        cursor.execute(self._remove, (self.view_name,))
