"""Reading the notification log in pages: for views, decoding only the events they read.

Events no view reads (a type added later, such as a reconciliation
report) are skipped without being decoded; an event of a type a view
reads is decoded (see `decoding`), and a version this code does not know
stops the views instead of being skipped.

`stored_rows` reads the same log as the events table stores it, byte for
byte, for the hash chain (see `projections.chain`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple
from uuid import UUID

from eventsourcing.persistence import Notification

from adapters.store import Store
from ledger.events import Event
from projections.chain import StoredRow
from projections.database import Database, values
from projections.decoding import ViewDecoder
from projections.errors import MalformedRow
from projections.view import Numbered


class Page(NamedTuple):
    events: list[Numbered]
    """The events asked for, in log order."""
    read: int
    """How many notifications the page held, read or not."""
    end: int
    """The notification id the page reaches: views that apply it are at `end`."""


def pages(
    store: Store,
    *,
    after: int,
    stop: int,
    size: int,
    names: frozenset[str] | None = None,
) -> Iterator[Page]:
    """Pages of the log after `after` up to and including `stop`.

    With `names`, only the events of those types, decoded for views (see
    `decoding`); without, every event, decoded and checked by the store's
    own mapper, as loading an aggregate would (for the audit).

    The last page ends at `stop` even when the ids before it hold no event
    (ids a rolled-back transaction took), so views reach `stop` exactly.
    """
    if names is not None:
        yield from _view_pages(store, after=after, stop=stop, size=size, names=names)
        return
    recorder = store.application.recorder
    position = after
    while position < stop:
        notifications = recorder.select_notifications(
            start=position, limit=size, stop=stop, inclusive_of_start=False
        )
        end = notifications[-1].id if len(notifications) == size else stop
        events: list[Numbered] = [
            (notification.id, decode_checked(store, notification)) for notification in notifications
        ]
        yield Page(events, len(notifications), end)
        position = end


def _view_pages(
    store: Store, *, after: int, stop: int, size: int, names: frozenset[str]
) -> Iterator[Page]:
    """Pages for views, read straight from the events table.

    A rebuild reads every event of the log: eventsourcing's recorder would
    turn each row into a notification, its id into a UUID, before the
    topic says whether a view reads it at all.
    """
    database = Database(store)
    decoder = ViewDecoder(store, names)
    position = database.sequence_column
    statement = database.sql(
        f"SELECT {position}, originator_id, originator_version, topic, state "  # noqa: S608 - the store's own table
        f"FROM {database.events_table} WHERE {position} > ? AND {position} <= ? "
        f"ORDER BY {position} LIMIT ?"
    )
    while after < stop:
        with database.transaction(commit=False) as cursor:
            cursor.execute(statement, (after, stop, size))
            fetched = cursor.fetchall()
        # SQLite's rows index and unpack as they come; PostgreSQL's are dicts.
        rows = [values(row) for row in fetched] if database.postgres else fetched
        end = rows[-1][0] if len(rows) == size else stop
        events: list[Numbered] = [
            (row[0], decoder.decode(row)) for row in rows if row[3].rpartition("/v")[0] in names
        ]
        yield Page(events, len(rows), end)
        after = end


def decode_checked(store: Store, notification: Notification) -> Event:
    """`notification` as its typed event, checked (and upcast) by the store's own mapper."""
    event = store.application.mapper.to_domain_event(notification)
    if not isinstance(event, Event):  # pragma: no cover - the mapper only makes ledger events
        raise TypeError(f"{notification.topic} decoded to {type(event).__name__}")
    return event


def log_end(store: Store) -> int:
    """The id of the last notification committed (0 for an empty log)."""
    return store.application.recorder.max_notification_id() or 0


def stored_rows(store: Store, *, after: int, stop: int, size: int) -> Iterator[list[StoredRow]]:
    """Pages of the events table's rows after `after` up to and including `stop`, as stored.

    eventsourcing's recorder parses each row on the way out: on SQLite a
    text id becomes a UUID, so a changed letter case reads as the same id
    and a garbled one fails the whole page. These are the stored values.
    """
    database = Database(store)
    position = database.sequence_column
    if database.postgres:
        columns = "originator_id, originator_version, topic, state"
    else:
        # As BLOBs, the texts come back as the bytes stored, valid UTF-8 or not.
        columns = "CAST(originator_id AS BLOB), originator_version, CAST(topic AS BLOB), state"
    statement = database.sql(
        f"SELECT {position}, {columns} FROM {database.events_table} "  # noqa: S608 - the store's own table
        f"WHERE {position} > ? AND {position} <= ? ORDER BY {position} LIMIT ?"
    )
    while after < stop:
        with database.transaction(commit=False) as cursor:
            cursor.execute(statement, (after, stop, size))
            fetched = [values(row) for row in cursor.fetchall()]
        if not fetched:
            return
        page: list[StoredRow] = []
        try:
            page.extend(_stored_row(row) for row in fetched)
        except MalformedRow:
            if page:
                yield page  # the rows before the malformed one
            raise
        yield page
        after = page[-1].sequence


def _stored_row(stored: tuple[Any, ...]) -> StoredRow:
    sequence, originator_id, version, topic, state = stored
    if isinstance(originator_id, UUID):  # a PostgreSQL uuid
        originator_id = originator_id.bytes
    if isinstance(topic, str):  # PostgreSQL text, always valid UTF-8
        topic = topic.encode()
    if isinstance(state, memoryview):
        state = bytes(state)
    for name, value, kind in (
        ("originator_id", originator_id, bytes),
        ("originator_version", version, int),
        ("topic", topic, bytes),
        ("state", state, bytes),
    ):
        if not isinstance(value, kind):
            raise MalformedRow(sequence, f"{name} is {type(value).__name__}, not {kind.__name__}")
    return StoredRow(sequence, originator_id, version, topic, state)
