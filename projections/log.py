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
from functools import partial
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
    recorder = store.application.recorder
    decode = partial(decode_checked, store) if names is None else ViewDecoder(store, names).decode
    position = after
    while position < stop:
        notifications = recorder.select_notifications(
            start=position, limit=size, stop=stop, inclusive_of_start=False
        )
        end = notifications[-1].id if len(notifications) == size else stop
        events: list[Numbered] = [
            (notification.id, decode(notification))
            for notification in notifications
            if names is None or notification.topic.rpartition("/v")[0] in names
        ]
        yield Page(events, len(notifications), end)
        position = end


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
