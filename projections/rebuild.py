"""Rebuilding views from position 0 into fresh tables, and swapping them in at once.

A rebuild fills tables of its own (the view's names with a `__r<token>`
suffix) while readers keep reading the old view, then, in one
transaction, drops the old tables, renames the fresh ones and sets the
view's tracked position. A crash before that transaction leaves the old
view served and the fresh tables behind; the next rebuild drops them.
`check` builds the same fresh tables and compares them with the view
row by row instead of swapping.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from adapters.store import Store
from projections.catalogue import VIEWS, live_views, view_names
from projections.database import Cursor, Database, like_literal
from projections.errors import ViewNotTracked, ViewsKeepMoving
from projections.log import Page, log_end
from projections.rows import Table
from projections.runner import ATTEMPTS_MAX, advance, pause_point, prepare
from projections.tracking import TRACKING_TABLE, Tracked, new_generation
from projections.view import View

REBUILD_PAGE_SIZE = 2000
FRESH_MARK = "__r"

Progress = Callable[[int, int], None]
"""Called as pages are applied, with the position reached and the position to reach."""


class Difference(msgspec.Struct, frozen=True, kw_only=True):
    """The first place a view differs from its rebuild."""

    view: str
    table: str
    key: str
    column: str | None
    """None when the row is in one and not the other."""
    live: str | None
    rebuilt: str | None

    def describe(self) -> str:
        where = f"view {self.view} differs from its rebuild: table {self.table}, row {self.key}"
        if self.column is None:
            found = "only in the view" if self.rebuilt is None else "only in the rebuild"
            return f"{where}: {found}"
        return f"{where}, column {self.column}: {self.live!r} in the view, {self.rebuilt!r} rebuilt"


def rebuild(
    store: Store,
    name: str | None = None,
    *,
    progress: Progress | None = None,
    page_size: int = REBUILD_PAGE_SIZE,
) -> int:
    """Rebuild the view called `name` (every view for None or "all"); return its new position."""
    database = Database(store)
    names = view_names(name)
    live = live_views(database, names)
    prepare(database, live, outdated_ok=True)
    with _built_aside(database, names, progress, page_size) as fresh:
        return _swap(database, live, fresh)


def check(
    store: Store,
    name: str | None = None,
    *,
    progress: Progress | None = None,
    page_size: int = REBUILD_PAGE_SIZE,
) -> Difference | None:
    """Rebuild aside and compare with the view row by row; the first difference, or None."""
    database = Database(store)
    names = view_names(name)
    live = live_views(database, names)
    prepare(database, live)
    with _built_aside(database, names, progress, page_size) as fresh:
        for view, copy in zip(live, fresh, strict=True):
            difference = _compare(database, view, copy)
            if difference is not None:
                return difference
    return None


@contextmanager
def _built_aside(
    database: Database, names: list[str], progress: Progress | None, page_size: int
) -> Iterator[list[View]]:
    """Fresh tables for `names`, filled from position 0 to the log's end; dropped at the end
    unless they became the view.
    """
    generation = FRESH_MARK + new_generation()
    fresh = [VIEWS[name](database, generation=generation, complete=True) for name in names]
    with database.transaction(commit=True) as cursor:
        database.lock_for_writing(cursor, TRACKING_TABLE)
        _drop_leftovers(database, cursor, names)
        for view in fresh:
            view.create(cursor)
    try:
        stop = log_end(database.store)
        paused = False

        def on_page(page: Page) -> None:
            nonlocal paused
            if progress is not None:
                progress(page.end, stop)
            if not paused:
                paused = True
                pause_point("rebuild")

        if progress is not None:
            progress(0, stop)
        advance(database, fresh, stop=stop, page_size=page_size, on_page=on_page)
        yield fresh
    finally:
        # Tables that were swapped in carry the view's name now: this drops
        # only what is left of a rebuild that did not finish, or a check.
        with contextlib.suppress(Exception), database.transaction(commit=True) as cursor:
            database.lock_for_writing(cursor, TRACKING_TABLE)
            for view in fresh:
                view.drop(cursor)


def _advance_fresh(database: Database, fresh: list[View], stop: int) -> None:
    # Fresh tables have one writer, this process: the rows it keeps stay
    # valid from one call to the next, so they are never read back.
    advance(database, fresh, stop=stop, page_size=REBUILD_PAGE_SIZE)


def _drop_leftovers(database: Database, cursor: Cursor, names: list[str]) -> None:
    """Drop fresh tables and tracking a crashed rebuild or check left behind."""
    for name in names:
        view = VIEWS[name]
        for table in view.tables:
            pattern = like_literal(table.name + FRESH_MARK) + "%"
            for leftover in database.tables_named_like(cursor, pattern):
                cursor.execute(f"DROP TABLE IF EXISTS {database.table(leftover)}")
        cursor.execute(
            database.sql(
                f"DELETE FROM {database.table(TRACKING_TABLE)} "  # noqa: S608 - our own table
                "WHERE view_name LIKE ? ESCAPE '\\'"
            ),
            (like_literal(view.name + FRESH_MARK) + "%",),
        )


def _swap(database: Database, live: list[View], fresh: list[View]) -> int:
    """Make the fresh tables the views, in one transaction, once they are no older."""
    for _ in range(ATTEMPTS_MAX):
        with database.transaction(commit=True) as cursor:
            ahead = max(_locked(view, cursor).notification_id for view in live)
            built = [_read(copy, cursor) for copy in fresh]
            if min(position.notification_id for position in built) >= ahead:
                for view, copy, position in zip(live, fresh, built, strict=True):
                    for old, new in zip(view.table_names(), copy.table_names(), strict=True):
                        cursor.execute(f"DROP TABLE {database.table(old)}")
                        database.rename(cursor, new, old)
                    # A new generation: a writer that read the old tables must start again.
                    view.tracking.replace(
                        cursor, Tracked(position.notification_id, new_generation(), copy.version)
                    )
                    copy.tracking.remove(cursor)
                return min(position.notification_id for position in built)
        # The live views moved on while the rebuild ran: follow them first,
        # so swapping never takes a reader back in the log.
        _advance_fresh(database, fresh, ahead)
    raise ViewsKeepMoving(f"the views kept moving ahead of the rebuild {ATTEMPTS_MAX} times")


def _locked(view: View, cursor: Cursor) -> Tracked:
    position = view.tracking.lock(cursor)
    if position is None:
        raise ViewNotTracked(f"view {view.name} has no tables")
    return position


def _read(view: View, cursor: Cursor) -> Tracked:
    position = view.tracking.read(cursor)
    if position is None:
        raise ViewNotTracked(f"view {view.tracking.view_name} has no tables")
    return position


def _compare(database: Database, view: View, copy: View) -> Difference | None:
    """Compare `view` with its rebuilt `copy` once both stand at the same position."""
    for _ in range(ATTEMPTS_MAX):
        with database.snapshot() as cursor:
            live_at, copy_at = view.tracking.read(cursor), copy.tracking.read(cursor)
            if live_at is None or copy_at is None:
                raise ViewNotTracked(f"view {view.name} has no tables")
            if live_at.notification_id == copy_at.notification_id:
                for table, old, new in zip(
                    view.tables, view.table_names(), copy.table_names(), strict=True
                ):
                    difference = _first_difference(database, cursor, view.name, table, old, new)
                    if difference is not None:
                        return difference
                return None
        if live_at.notification_id < copy_at.notification_id:
            advance(database, [view], stop=copy_at.notification_id)
        else:
            _advance_fresh(database, [copy], live_at.notification_id)
    raise ViewsKeepMoving(f"view {view.name} kept moving ahead of its rebuild")


def _first_difference(
    database: Database, cursor: Cursor, view: str, table: Table[Any], old: str, new: str
) -> Difference | None:
    live = {table.key_of(row): table.encode(row) for row in table.select_all(database, cursor, old)}
    rebuilt = {
        table.key_of(row): table.encode(row) for row in table.select_all(database, cursor, new)
    }
    for key in sorted(live.keys() | rebuilt.keys(), key=repr):
        shown = ", ".join(f"{name}={value}" for name, value in zip(table.key, key, strict=True))
        mine, theirs = live.get(key), rebuilt.get(key)
        if mine is None or theirs is None:
            return Difference(
                view=view,
                table=table.name,
                key=shown,
                column=None,
                live=None if mine is None else "row",
                rebuilt=None if theirs is None else "row",
            )
        for column, left, right in zip(table.columns, mine, theirs, strict=True):
            if left != right:
                return Difference(
                    view=view,
                    table=table.name,
                    key=shown,
                    column=column.name,
                    live=None if left is None else str(left),
                    rebuilt=None if right is None else str(right),
                )
    return None
