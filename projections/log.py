"""Reading the notification log in pages, decoding only the events some view reads.

Events no view reads (a type added later, such as a reconciliation
report) are skipped without being decoded; an event of a type a view
reads is decoded (see `decoding`), and a version this code does not know
stops the views instead of being skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from adapters.store import Store
from projections.decoding import ViewDecoder
from projections.view import Numbered


class Page(NamedTuple):
    events: list[Numbered]
    """The events some view reads, in log order."""
    read: int
    """How many notifications the page held, read or not."""
    end: int
    """The notification id the page reaches: views that apply it are at `end`."""


def pages(
    store: Store, *, after: int, stop: int, names: frozenset[str], size: int
) -> Iterator[Page]:
    """Pages of the log after `after` up to and including `stop`.

    The last page ends at `stop` even when the ids before it hold no event
    (ids a rolled-back transaction took), so views reach `stop` exactly.
    """
    recorder = store.application.recorder
    decoder = ViewDecoder(store, names)
    position = after
    while position < stop:
        notifications = recorder.select_notifications(
            start=position, limit=size, stop=stop, inclusive_of_start=False
        )
        end = notifications[-1].id if len(notifications) == size else stop
        events: list[Numbered] = [
            (notification.id, decoder.decode(notification))
            for notification in notifications
            if notification.topic.rpartition("/v")[0] in names
        ]
        yield Page(events, len(notifications), end)
        position = end


def log_end(store: Store) -> int:
    """The id of the last notification committed (0 for an empty log)."""
    return store.application.recorder.max_notification_id() or 0
