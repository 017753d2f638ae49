"""Reading stored events for the audit: the whole log in pages, or one aggregate's stream.

Every event is decoded by the store's own mapper, which checks each field
as it decodes it and upcasts older versions: what the audit shows is what
loading the aggregates sees, and an altered event that no longer decodes
stops it instead of being shown. Each event comes with its sequence
number (its notification id: its place in the order of commits).

eventsourcing reads one stream without the sequence numbers of its
events, so `stream` asks the events table for them itself, with the
column each backend keeps them in.
"""

from __future__ import annotations

from collections.abc import Iterator
from uuid import UUID

from eventsourcing.persistence import Notification

from adapters.store import Store
from ledger.events import Event
from projections.database import Database, values
from projections.log import Page
from projections.view import Numbered

PAGE_SIZE = 1000
"""Events read per query: what a reader holds in memory at once."""


def decode(store: Store, notification: Notification) -> Event:
    """`notification` as its typed event, checked by the store's mapper."""
    event = store.application.mapper.to_domain_event(notification)
    if not isinstance(event, Event):  # pragma: no cover - the mapper only makes ledger events
        raise TypeError(f"{notification.topic} decoded to {type(event).__name__}")
    return event


def log_pages(store: Store, *, stop: int, page_size: int = PAGE_SIZE) -> Iterator[Page]:
    """The log from its first event up to and including `stop`, a page at a time.

    A page's `end` is the position reached: the last page ends at `stop`.
    """
    recorder = store.application.recorder
    position = 0
    while position < stop:
        notifications = recorder.select_notifications(
            start=position, limit=page_size, stop=stop, inclusive_of_start=False
        )
        end = notifications[-1].id if len(notifications) == page_size else stop
        events = [(notification.id, decode(store, notification)) for notification in notifications]
        yield Page(events, len(notifications), end)
        position = end


def stream(store: Store, aggregate_id: UUID, *, page_size: int = PAGE_SIZE) -> Iterator[Numbered]:
    """Every event of one aggregate, oldest first, with its sequence number."""
    database = Database(store)
    events = database.table(store.application.recorder.events_table_name)  # type: ignore[attr-defined]
    # SQLite numbers the log by rowid and keeps ids as hex text; PostgreSQL
    # has a notification_id column and a uuid type.
    sequence, key = (
        ("notification_id", aggregate_id) if database.postgres else ("rowid", aggregate_id.hex)
    )
    statement = database.sql(
        f"SELECT {sequence}, originator_version, topic, state FROM {events} "  # noqa: S608 - our own names
        "WHERE originator_id = ? AND originator_version > ? ORDER BY originator_version LIMIT ?"
    )
    version = 0
    while True:
        # Each page in a transaction of its own, closed before its events are handed on.
        with database.transaction(commit=False) as cursor:
            cursor.execute(statement, (key, version, page_size))
            rows = [values(row) for row in cursor.fetchall()]
        for number, row_version, topic, state in rows:
            notification = Notification(
                id=number,
                originator_id=aggregate_id,
                originator_version=row_version,
                topic=topic,
                state=bytes(state),
            )
            yield number, decode(store, notification)
        if len(rows) < page_size:
            return
        version = rows[-1][1]
