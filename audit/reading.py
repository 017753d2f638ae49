"""Reading one aggregate's stream for the audit (the whole log: `projections.log.pages`).

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
from projections.database import Database, values
from projections.log import decode_checked
from projections.view import Numbered

PAGE_SIZE = 1000
"""Events read per query: what a reader holds in memory at once."""


def stream(store: Store, aggregate_id: UUID, *, page_size: int = PAGE_SIZE) -> Iterator[Numbered]:
    """Every event of one aggregate, oldest first, with its sequence number."""
    database = Database(store)
    # SQLite keeps ids as hex text; PostgreSQL has a uuid type.
    key = aggregate_id if database.postgres else aggregate_id.hex
    statement = database.sql(
        f"SELECT {database.sequence_column}, originator_version, topic, state "  # noqa: S608 - our own names
        f"FROM {database.events_table} "
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
            yield number, decode_checked(store, notification)
        if len(rows) < page_size:
            return
        version = rows[-1][1]
