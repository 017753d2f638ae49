"""A view's tables: rows as typed structs, and the rows one batch of events reads and changes.

A table is declared by a msgspec Struct: its fields are the columns, in
order, and their types say how each is stored. Money, prices and
quantities are `Decimal` and stored as exact text (never a float); ids
and times as text; counts as integers; lists and maps as JSON text with
sorted keys, so equal rows are equal column by column on either backend.
"""

from __future__ import annotations

import operator
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar
from uuid import UUID

import msgspec

from projections.database import Cursor, Database, values

R = TypeVar("R", bound=msgspec.Struct)

Key = tuple[Any, ...]


@dataclass(frozen=True)
class Column:
    """One column: its SQL type and how a Python value is stored and read back."""

    name: str
    sql_type: str
    nullable: bool
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


def _column(name: str, hint: Any) -> Column:  # noqa: ANN401 - any field annotation
    nullable = False
    if typing.get_origin(hint) in {typing.Union, types.UnionType}:
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(members) != 1:
            raise TypeError(f"column {name}: only `X | None` unions can be stored")
        hint, nullable = members[0], True
    if hint is int:
        return Column(name, "BIGINT", nullable, int, int)
    if hint is str:
        return Column(name, "TEXT", nullable, str, str)
    if hint is Decimal:
        # Plain notation, never an exponent: "0.00000001", not "1E-8".
        return Column(name, "TEXT", nullable, lambda value: format(value, "f"), Decimal)
    if hint is UUID:
        return Column(name, "TEXT", nullable, str, UUID)
    if hint is datetime:
        return Column(name, "TEXT", nullable, datetime.isoformat, datetime.fromisoformat)
    if typing.get_origin(hint) in {list, dict}:
        decoder = msgspec.json.Decoder(hint)
        return Column(
            name,
            "TEXT",
            nullable,
            lambda value: msgspec.json.encode(value, order="sorted").decode(),
            decoder.decode,
        )
    raise TypeError(f"column {name}: {hint!r} has no stored form")


@dataclass(frozen=True)
class Table(Generic[R]):
    """A view's table: its base name, the struct of its rows, and its key columns."""

    name: str
    row: type[R]
    key: tuple[str, ...]
    columns: tuple[Column, ...] = field(init=False)

    def __post_init__(self) -> None:
        columns = tuple(_column(info.name, info.type) for info in msgspec.structs.fields(self.row))
        names = {column.name for column in columns}
        if not set(self.key) <= names:
            raise TypeError(f"table {self.name}: key {self.key} is not among its columns")
        object.__setattr__(self, "columns", columns)

    def key_of(self, row: R) -> Key:
        return tuple(getattr(row, name) for name in self.key)

    def key_getter(self) -> Callable[[R], Any]:
        """A row's key: the value of its one key column, or a tuple of several."""
        return operator.attrgetter(*self.key)

    def encode(self, row: R) -> tuple[Any, ...]:
        return tuple(
            None if (value := getattr(row, column.name)) is None else column.encode(value)
            for column in self.columns
        )

    def decode(self, stored: tuple[Any, ...]) -> R:
        fields = {
            column.name: None if value is None else column.decode(value)
            for column, value in zip(self.columns, stored, strict=True)
        }
        return self.row(**fields)

    def encode_key(self, key: Key) -> tuple[Any, ...]:
        by_name = {column.name: column for column in self.columns}
        return tuple(by_name[name].encode(value) for name, value in zip(self.key, key, strict=True))

    def create(self, database: Database, cursor: Cursor, name: str) -> None:
        """Create this table as `name` if it does not exist."""
        columns = ", ".join(
            f"{column.name} {column.sql_type}{'' if column.nullable else ' NOT NULL'}"
            for column in self.columns
        )
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {database.table(name)} "
            f"({columns}, PRIMARY KEY ({', '.join(self.key)}))"
        )

    def select_all(self, database: Database, cursor: Cursor, name: str) -> Iterator[R]:
        names = ", ".join(column.name for column in self.columns)
        cursor.execute(f"SELECT {names} FROM {database.table(name)}")  # noqa: S608 - our own names
        for stored in cursor.fetchall():
            yield self.decode(values(stored))


_UNREAD: Any = object()


class Rows(Generic[R]):
    """The rows of one table as a batch of events reads and changes them.

    A row read once is kept: later events of the batch (and of later
    batches, until `forget`) change the kept copy, and `flush` writes
    each changed row once. Unbound (no cursor), a missing row is taken to
    be absent: that is how a rebuild works, from empty tables it fills.
    """

    def __init__(self, database: Database, table: Table[R], name: str) -> None:
        self.table = table
        self.name = name
        self._cursor: Cursor | None = None
        # Keys are kept as a scalar for a one-column key, a tuple otherwise:
        # rows are looked up for every event a rebuild applies.
        self._single = len(table.key) == 1
        self._key = table.key_getter()
        self._kept: dict[Any, R | None] = {}
        self._changed: set[Any] = set()
        self._stored: set[Any] = set()
        """Unbound: the keys of the rows the table holds (every row it holds went through here)."""
        qualified = database.table(name)
        names = [column.name for column in table.columns]
        where = " AND ".join(f"{key} = ?" for key in table.key)
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n not in table.key)
        conflict = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        self._select = database.sql(f"SELECT {', '.join(names)} FROM {qualified} WHERE {where}")  # noqa: S608
        self._upsert = database.sql(
            f"INSERT INTO {qualified} ({', '.join(names)}) "  # noqa: S608 - our own names
            f"VALUES ({', '.join('?' for _ in names)}) "
            f"ON CONFLICT ({', '.join(table.key)}) {conflict}"
        )
        self._delete = database.sql(f"DELETE FROM {qualified} WHERE {where}")  # noqa: S608

    def bind(self, cursor: Cursor | None) -> None:
        """Read missing rows through `cursor` (None: a missing row is absent)."""
        self._cursor = cursor

    def get(self, *key: Any) -> R | None:  # noqa: ANN401 - key columns of any type
        kept = key[0] if self._single else key
        row = self._kept.get(kept, _UNREAD)
        if row is _UNREAD:
            row = None
            if self._cursor is not None:
                self._cursor.execute(self._select, self.table.encode_key(key))
                stored = self._cursor.fetchone()
                row = None if stored is None else self.table.decode(values(stored))
            self._kept[kept] = row
        return row

    def put(self, row: R) -> None:
        key = self._key(row)
        self._kept[key] = row
        self._changed.add(key)

    def delete(self, *key: Any) -> None:  # noqa: ANN401 - key columns of any type
        kept = key[0] if self._single else key
        self._kept[kept] = None
        self._changed.add(kept)

    def flush(self, cursor: Cursor) -> int:
        """Write every changed row (and delete every deleted one); return how many."""
        upserts: list[tuple[Any, ...]] = []
        deletes: list[tuple[Any, ...]] = []
        holds_all = self._cursor is None
        for key in self._changed:
            row = self._kept[key]
            if row is None:
                # Deleted: a later read finds it absent (or asks the table). Keeping the gap
                # would keep a key for every intent that ever finished.
                del self._kept[key]
                if holds_all:
                    # A rebuild: a row that came and went between two flushes (an intent
                    # recorded and finished) was never written.
                    if key not in self._stored:
                        continue
                    self._stored.discard(key)
                deletes.append(self.table.encode_key((key,) if self._single else key))
            else:
                if holds_all:
                    self._stored.add(key)
                upserts.append(self.table.encode(row))
        if deletes:
            cursor.executemany(self._delete, deletes)
        if upserts:
            cursor.executemany(self._upsert, upserts)
        self._changed.clear()
        return len(upserts) + len(deletes)

    @property
    def kept(self) -> int:
        """How many rows are kept."""
        return len(self._kept)

    def forget(self) -> None:
        """Drop every kept row: the next batch reads them again."""
        self._kept.clear()
        self._changed.clear()
        self._stored.clear()
