"""Keeping views current: catch up to the log's end, once (`catch_up`) or while the engine runs.

Each page of the log is one transaction: every view behind moves its
tracked position and writes its rows in it, so a crash (even `kill -9`)
leaves each view exactly at a page boundary, and the next catch-up goes
on from there. Two processes catching up at once do not apply a page
twice: the first to move a view's position wins and the other reads the
view again and goes on from where it now is.

eventsourcing's `ProjectionRunner` would follow the log through a
subscription, which SQLite's recorder does not offer, in threads of its
own, and commit once per event. Here a poll reads pages with
`select_notifications` instead: the same position, tracked the same way,
with far fewer commits, on both backends, and inside the caller's anyio
task group.
"""

from __future__ import annotations

import os
import sys
import time
import weakref
from collections.abc import Callable, Sequence

import anyio
import anyio.abc
import anyio.to_thread
from eventsourcing.persistence import InterfaceError, OperationalError

from adapters.store import Store
from projections.catalogue import live_views
from projections.database import Database
from projections.errors import ViewMoved, ViewNotTracked, ViewOutdated, ViewsKeepMoving
from projections.log import Page, log_end, pages
from projections.seals import seal
from projections.tracking import TRACKING_TABLE, create_tracking_table
from projections.view import View

PAGE_SIZE = 1000
"""Events per transaction when catching up."""
ATTEMPTS_MAX = 20
"""Times a catch-up starts again after losing a race to another writer."""
FOLLOW_INTERVAL_SECONDS = 0.5
FOLLOW_FAILURES_MAX = 20
"""Consecutive failed catch-ups (the database unreachable) before following gives up."""

PAUSE_VARIABLE = "LEDGER_TEST_VIEWS_PAUSE"
PAUSE_SECONDS = 60.0

_prepared: weakref.WeakKeyDictionary[Store, set[str]] = weakref.WeakKeyDictionary()


def pause_point(name: str) -> None:
    """Where crash tests kill the process: with LEDGER_TEST_VIEWS_PAUSE=`name`, say so and wait."""
    if os.environ.get(PAUSE_VARIABLE) == name:
        sys.stderr.write(f"paused at {name}\n")
        sys.stderr.flush()
        time.sleep(PAUSE_SECONDS)


def prepare(database: Database, views: Sequence[View], *, outdated_ok: bool = False) -> None:
    """Create the views' tables and tracking if missing.

    Refuses a view built by other rules (an older version of this code),
    unless `outdated_ok` (a rebuild, which replaces it).
    """
    known = _prepared.setdefault(database.store, set())
    missing = [view for view in views if view.tracking.view_name not in known]
    if not missing:
        return
    with database.transaction(commit=True) as cursor:
        database.serialise_creation(cursor)
        create_tracking_table(database, cursor)
    with database.transaction(commit=True) as cursor:
        database.lock_for_writing(cursor, TRACKING_TABLE)
        database.serialise_creation(cursor)
        for view in missing:
            view.create(cursor)
            tracked = view.tracking.read(cursor)
            if tracked is None:  # pragma: no cover - created just above
                raise ViewNotTracked(f"view {view.name} is not tracked")
            if tracked.version != view.version and not outdated_ok:
                raise ViewOutdated(
                    f"view {view.name} was built by rules version {tracked.version}, these are "
                    f"version {view.version}: run `ledger rebuild --projection {view.name}`"
                )
    if not outdated_ok:
        known.update(view.tracking.view_name for view in missing)


def advance(
    database: Database,
    views: Sequence[View],
    *,
    stop: int,
    page_size: int = PAGE_SIZE,
    on_page: Callable[[Page], None] | None = None,
) -> None:
    """Bring `views` (their tables exist) to notification `stop` at least."""
    for _ in range(ATTEMPTS_MAX):
        with database.transaction(commit=False) as cursor:
            for view in views:
                tracked = view.tracking.read(cursor)
                if tracked is None:
                    raise ViewNotTracked(f"view {view.tracking.view_name} has no tables")
                view.begin(tracked)
        try:
            _pages(database, views, stop=stop, page_size=page_size, on_page=on_page)
        except BaseException as error:
            # What the views kept may include a batch that was never committed.
            for view in views:
                view.forget()
            if isinstance(error, ViewMoved):
                continue
            raise
        return
    raise ViewsKeepMoving(f"other writers kept moving the views {ATTEMPTS_MAX} times")


def _pages(
    database: Database,
    views: Sequence[View],
    *,
    stop: int,
    page_size: int,
    on_page: Callable[[Page], None] | None,
) -> None:
    def position(view: View) -> int:
        if view.tracked is None:  # pragma: no cover - begun by the caller
            raise ViewNotTracked(f"view {view.tracking.view_name} was not begun")
        return view.tracked.notification_id

    names = frozenset(name for view in views for name in view.handled_names)
    start = min(position(view) for view in views)
    for page in pages(database.store, after=start, stop=stop, names=names, size=page_size):
        behind = [view for view in views if position(view) < page.end]
        if behind:
            with database.transaction(commit=True) as cursor:
                for view in behind:
                    view.apply_batch(cursor, page.events, page.end)
                pause_point("catch-up")
        if on_page is not None:
            on_page(page)


def catch_up(store: Store, *, until: int | None = None, views: Sequence[View] | None = None) -> int:
    """Bring the views to the log's end (or to notification `until`); return where that is.

    What the views show afterwards is never older than the last commit
    before the call. The hash chain's seals are extended too (see `seals`).
    """
    database = Database(store)
    chosen = list(views) if views is not None else live_views(database)
    prepare(database, chosen)
    stop = log_end(store) if until is None else until
    advance(database, chosen, stop=stop)
    seal(store)
    return stop


async def follow(
    store: Store,
    interval: float = FOLLOW_INTERVAL_SECONDS,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Keep the views current while the engine runs: catch up now, then every `interval`.

    Started with `await task_group.start(follow, store)`: ready once the
    views have caught up with everything committed before the start (after
    a crash, from their tracked positions). A database that stays
    unreachable for FOLLOW_FAILURES_MAX tries in a row ends it with the error.
    """
    limiter = anyio.CapacityLimiter(1)
    await anyio.to_thread.run_sync(catch_up, store, limiter=limiter)
    task_status.started()
    failures = 0
    while True:
        await anyio.sleep(interval)
        try:
            await anyio.to_thread.run_sync(catch_up, store, limiter=limiter)
        except (OperationalError, InterfaceError):
            failures += 1
            if failures >= FOLLOW_FAILURES_MAX:
                raise
        else:
            failures = 0
