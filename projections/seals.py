"""Seals: the hash chain's head, stored every SEAL_EVERY events and when a session ends.

The chain (see `projections.chain`) is a projection of the log like any view:
`seal` goes on from the last seal (or the chain's start) to the log's
end, page by page, and stores the head at every SEAL_EVERY-th event and,
when `final`, at the last one. A seal depends only on the rows up to its
sequence, which never change once committed, so two processes sealing at
once compute the same seals; the second insert of one does nothing.

`ledger audit verify` recomputes the chain from the start and compares
every seal: an event changed, removed, added or moved after it was
sealed no longer leads to the stored head.

Beside the seals, each event chained gets a digest of its own (the first
DIGEST_BYTES of SHA-256 of its framed row): where a seal says only that
something in its range changed, the digests say which event. They prove
nothing the seals do not (whoever rewrites the log can rewrite them); they
only point.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from adapters.store import Store
from projections.chain import GENESIS, Link, StoredRow, extend, frame
from projections.database import Database, values
from projections.log import log_end, stored_rows
from projections.rows import Table

R = TypeVar("R", bound=msgspec.Struct)

SEAL_EVERY = 1000
"""Events between two seals."""
SEAL_PAGE_SIZE = 1000
"""Events read per query while extending the chain."""


class Seal(msgspec.Struct, frozen=True, kw_only=True):
    """The chain's head after the event at `sequence`."""

    sequence: int
    head: str
    """SHA-256, in hex."""
    events: int
    """How many events the chain covers up to `sequence`."""
    sealed_at: datetime

    @property
    def link(self) -> Link:
        return Link(sequence=self.sequence, head=bytes.fromhex(self.head), events=self.events)


SEALS = Table("ledger_seals", Seal, ("sequence",))

DIGEST_BYTES = 8


class Digest(msgspec.Struct, frozen=True, kw_only=True):
    """One event's own fingerprint, as it was when chained."""

    sequence: int
    digest: str
    """The first DIGEST_BYTES of the SHA-256 of the framed row, in hex."""


DIGESTS = Table("ledger_digests", Digest, ("sequence",))


def digest_of(row: StoredRow) -> str:
    return hashlib.sha256(frame(row)).digest()[:DIGEST_BYTES].hex()


_known: weakref.WeakKeyDictionary[Store, set[str]] = weakref.WeakKeyDictionary()
"""For each store, the tables of this module known to exist in it."""
_reached: weakref.WeakKeyDictionary[Store, tuple[int, Link]] = weakref.WeakKeyDictionary()
"""How far this process has extended each store's chain, sealing every how many events."""


def seal(store: Store, *, every: int = SEAL_EVERY, final: bool = False) -> Link:
    """Extend the chain from the last seal to the log's end, sealing every `every`-th event
    and, when `final`, the last one; return the head at the log's end.
    """
    database = Database(store)
    _create(database)
    last = last_seal(database)
    link = sealed = GENESIS if last is None else last.link
    # Rows this process hashed after the last seal need not be read again: a
    # running engine seals on every catch-up, twice a second.
    reached_every, reached = _reached.get(store, (every, GENESIS))
    if reached_every == every and reached.sequence > link.sequence:
        link = reached
    for rows, links in _extended(store, link):
        due = [each for each in links if each.events % every == 0]
        _insert(database, due, rows)
        sealed = due[-1] if due else sealed
        link = links[-1]
    if final and link.sequence != sealed.sequence:
        _insert(database, [link], [])
    _reached[store] = (every, link)
    return link


def head(store: Store) -> Link:
    """The chain's head at the log's end, from the last seal on; writes nothing."""
    last = last_seal(Database(store))
    link = GENESIS if last is None else last.link
    for _, links in _extended(store, link):
        link = links[-1]
    return link


def _extended(store: Store, link: Link) -> Iterator[tuple[list[StoredRow], list[Link]]]:
    """The chain after `link`, to the log's end: each page's rows and their links, in order."""
    for page in stored_rows(store, after=link.sequence, stop=log_end(store), size=SEAL_PAGE_SIZE):
        links = []
        for row in page:
            link = extend(link, row)
            links.append(link)
        if links:
            yield page, links


def last_seal(database: Database) -> Seal | None:
    """The seal at the highest sequence, or None (the table may not exist: nothing sealed)."""
    if not _exists(database):
        return None
    with database.transaction(commit=False) as cursor:
        cursor.execute(f"{_select(database)} ORDER BY sequence DESC LIMIT 1")
        row = cursor.fetchone()
    return None if row is None else SEALS.decode(values(row))


def seals(database: Database, *, after: int = 0, size: int = SEAL_PAGE_SIZE) -> Iterator[Seal]:
    """Every seal after sequence `after`, in order, read a page at a time."""
    return _in_order(database, SEALS, after=after, size=size)


def digests(database: Database, *, after: int = 0, size: int = SEAL_PAGE_SIZE) -> Iterator[Digest]:
    """Every event's digest after sequence `after`, in order, read a page at a time."""
    return _in_order(database, DIGESTS, after=after, size=size)


def _in_order(database: Database, table: Table[R], *, after: int, size: int) -> Iterator[R]:
    if not _exists(database, table):
        return
    statement = database.sql(
        f"{_select(database, table)} WHERE sequence > ? ORDER BY sequence LIMIT ?"
    )
    while True:
        with database.transaction(commit=False) as cursor:
            cursor.execute(statement, (after, size))
            page = [table.decode(values(row)) for row in cursor.fetchall()]
        yield from page
        if len(page) < size:
            return
        after = page[-1].sequence  # type: ignore[attr-defined]


def _select(database: Database, table: Table[Any] = SEALS) -> str:
    names = ", ".join(column.name for column in table.columns)
    return f"SELECT {names} FROM {database.table(table.name)}"  # noqa: S608 - our own table


def _exists(database: Database, table: Table[Any] = SEALS) -> bool:
    known = _known.setdefault(database.store, set())
    if table.name in known:
        return True
    with database.transaction(commit=False) as cursor:
        found = database.has_table(cursor, table.name)
    if found:
        known.add(table.name)
    return found


def _create(database: Database) -> None:
    # Both, and each on its own: a store sealed before digests were kept has only the seals.
    if _exists(database, SEALS) and _exists(database, DIGESTS):
        return
    with database.transaction(commit=True) as cursor:
        database.serialise_creation(cursor)
        for table in (SEALS, DIGESTS):
            table.create(database, cursor, table.name)
    _known.setdefault(database.store, set()).update({SEALS.name, DIGESTS.name})


def _insert(database: Database, links: list[Link], rows: list[StoredRow]) -> None:
    """Store the seals of `links` and the digests of `rows`, in one transaction."""
    now = datetime.now(UTC)
    sealed = [
        SEALS.encode(
            Seal(sequence=link.sequence, head=link.head.hex(), events=link.events, sealed_at=now)
        )
        for link in links
    ]
    digested = [
        DIGESTS.encode(Digest(sequence=row.sequence, digest=digest_of(row))) for row in rows
    ]
    if not sealed and not digested:
        return
    with database.transaction(commit=True) as cursor:
        for table, encoded in ((SEALS, sealed), (DIGESTS, digested)):
            if encoded:
                cursor.executemany(_inserting(database, table), encoded)


def _inserting(database: Database, table: Table[Any]) -> str:
    names = [column.name for column in table.columns]
    return database.sql(
        f"INSERT INTO {database.table(table.name)} ({', '.join(names)}) "  # noqa: S608
        f"VALUES ({', '.join('?' for _ in names)}) ON CONFLICT (sequence) DO NOTHING"
    )
