"""What every view is: an eventsourcing `Projection` over tables of its own.

A view applies events to rows it keeps (see `rows.Rows`) and writes them,
with its new tracked position, in the caller's transaction: so a batch of
events is applied entirely, once, or not at all.

eventsourcing's `Projection.process_event` handles one event per
transaction, which is the library's contract and is honoured here; the
runner instead hands a view a page of events per transaction, because a
commit per event (an fsync each on SQLite) would make a rebuild of a long
log take minutes instead of seconds.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import msgspec
from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from ledger.events import Event
from projections.database import Cursor, Database
from projections.errors import ViewMoved, ViewNotTracked
from projections.rows import Rows, Table
from projections.tracking import TRACKING_TABLE, Tracked, ViewTracking

R = TypeVar("R", bound=msgspec.Struct)

Numbered = tuple[int, Event]
"""An event and its notification id."""


def topics_of(handles: frozenset[type[Event]]) -> tuple[str, ...]:
    """Every stored topic (each version) of the event classes in `handles`."""
    return tuple(
        sorted(
            f"{cls.stored_name}/v{version}"
            for cls in handles
            for version in range(1, cls.class_version + 1)
        )
    )


KEPT_ROWS_MAX = 20_000
"""Rows a view keeps between batches, at most: past this it reads them again as needed."""


class View(Projection[ViewTracking]):
    """A read model: tables, the events it reads, and how each event changes its rows.

    `generation` is empty for the view readers see, and a suffix for a
    copy being rebuilt aside. `complete` says this instance starts from
    empty tables it alone writes (a rebuild), so from position 0 on it
    holds every row there is, and a row it has not seen is absent without
    asking the database.
    """

    version: ClassVar[int] = 1
    """Raised whenever the tables or the rules change: the stored view must be rebuilt."""
    tables: ClassVar[tuple[Table[Any], ...]]
    handles: ClassVar[frozenset[type[Event]]]
    handled_names: ClassVar[frozenset[str]]

    def __init__(self, database: Database, *, generation: str = "", complete: bool = False) -> None:
        super().__init__(view=ViewTracking(database, self.name + generation))
        self.database = database
        self.generation = generation
        self.complete = complete
        self.tracked: Tracked | None = None
        """Where the rows this instance keeps stand; None: nothing is kept."""
        self._rows: list[Rows[Any]] = []
        self._holds_all = False
        """True while the kept rows are every row the tables hold (an empty start)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:  # noqa: ANN401 - passed on as given
        named = "name" in cls.__dict__
        super().__init_subclass__(**kwargs)
        if not named:
            # eventsourcing names a projection after its class; a subclass of a
            # view (one that fails on purpose, in a test) is still that view,
            # over the same tables and the same tracked position.
            for base in cls.__mro__[1:]:
                if issubclass(base, View) and base is not View and "name" in base.__dict__:
                    cls.name = base.__dict__["name"]
                    break
        cls.topics = topics_of(cls.handles)
        cls.handled_names = frozenset(event.stored_name for event in cls.handles)

    @property
    def tracking(self) -> ViewTracking:
        return self.view

    def rows(self, table: Table[R]) -> Rows[R]:
        """This instance's rows of `table` (called once per table, in `__init__`)."""
        rows = Rows(self.database, table, table.name + self.generation)
        self._rows.append(rows)
        return rows

    def table_names(self) -> list[str]:
        return [table.name + self.generation for table in self.tables]

    # Tables -------------------------------------------------------------------------

    def create(self, cursor: Cursor) -> None:
        """Create the tables, tracked from position 0, unless they exist."""
        for table in self.tables:
            table.create(self.database, cursor, table.name + self.generation)
        self.tracking.start(cursor, self.version)

    def drop(self, cursor: Cursor) -> None:
        for name in self.table_names():
            cursor.execute(f"DROP TABLE IF EXISTS {self.database.table(name)}")
        self.tracking.remove(cursor)

    # Applying events -----------------------------------------------------------------

    def begin(self, tracked: Tracked) -> None:
        """Go on from the view's stored position `tracked`.

        Rows kept from this instance's last batch are kept if that batch is
        what left the view at `tracked` (no one else has written it since:
        every write moves the position or the generation); otherwise they
        are dropped and read again as needed.
        """
        if tracked == self.tracked:
            return
        self.forget()
        self.tracked = tracked
        self._holds_all = self.complete and tracked.notification_id == 0

    def forget(self) -> None:
        """Drop every kept row and the position: a failed transaction left them behind."""
        for rows in self._rows:
            rows.forget()
        self.tracked = None
        self._holds_all = False

    def apply_batch(self, cursor: Cursor, events: Sequence[Numbered], end: int) -> None:
        """Apply the events after the view's position, and move it to `end`, in `cursor`'s
        transaction. Raises `ViewMoved` if another writer moved the view meanwhile.
        """
        tracked = self.tracked
        if tracked is None:
            raise ViewNotTracked(f"view {self.tracking.view_name} was not begun")
        if tracked.notification_id >= end:
            return
        if not self.tracking.advance(cursor, tracked, end):
            raise ViewMoved(f"view {self.tracking.view_name} moved past {tracked.notification_id}")
        for rows in self._rows:
            rows.bind(None if self._holds_all else cursor)
        names = self.handled_names
        for notification_id, event in events:
            if notification_id > tracked.notification_id and event.stored_name in names:
                self.apply(event)
        for rows in self._rows:
            rows.flush(cursor)
        if sum(rows.kept for rows in self._rows) > KEPT_ROWS_MAX:
            # Written, so safe to drop: later batches read what they need again. A view
            # with many rows (every position ever) never holds them all in memory.
            for rows in self._rows:
                rows.forget()
            self._holds_all = False
        self.tracked = msgspec.structs.replace(tracked, notification_id=end)

    @abstractmethod
    def apply(self, event: Event) -> None:
        """Change the kept rows as `event` says."""

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:  # noqa: ANN401
        """Apply one event and record `tracking`, in one transaction (eventsourcing's contract).

        An event at or before the view's position was applied already and
        changes nothing: delivery may repeat, application may not.
        """
        try:
            with self.database.transaction(commit=True) as cursor:
                self._process(cursor, domain_event, tracking)
        except BaseException:
            self.forget()
            raise

    def _process(self, cursor: Cursor, event: Event, tracking: Tracking) -> None:
        self.database.lock_for_writing(cursor, TRACKING_TABLE)
        tracked = self.tracking.read(cursor, tracking.application_name)
        if tracked is None:
            raise ViewNotTracked(f"view {self.tracking.view_name} has no tables")
        if tracking.notification_id > tracked.notification_id:
            self.begin(tracked)
            self.apply_batch(cursor, [(tracking.notification_id, event)], tracking.notification_id)
