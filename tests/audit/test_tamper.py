"""Tampering with sealed history, on SQLite and PostgreSQL: every change is found, and placed.

A varied history (the views' scenario, three times over) is sealed every
SEALED_EVERY events and at its end. Then, one at a time, a random byte of
a random column of a random event row is changed (any column: the
notification id, the originator id, the version, the topic, the state),
rows are deleted, and pairs of rows swap places; `verify` runs on each
and the row is put back. Every change must be detected, and a problem
must place it: at its exact sequence, or in the range a seal covers.
On SQLite the tampering is done on a copy of the store's file.
"""

from __future__ import annotations

import random
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from adapters.store import Store
from audit.problems import Problem, ProblemKind
from audit.verify import Anchor, Verdict, verify
from ledger.account import Account, account_id
from projections import catch_up
from projections.chain import StoredRow
from projections.database import Database
from projections.log import log_end
from projections.seals import SEALS, head, seal
from tests.conftest import drop_postgres_schema, fresh_postgres_schema
from tests.projections.scenario import Scenario, usd

pytestmark = pytest.mark.tampered  # these tests damage stored events on purpose

SEALED_EVERY = 10
MUTATIONS = 150
DELETIONS = 15
SWAPS = 15
COLUMNS = StoredRow._fields


def write_history(store: Store) -> None:
    scenario = Scenario(store)
    for _ in range(3):
        scenario.write_everything()
        scenario.account.deposit(usd("100000"), recorded_at=scenario.tick())
        store.save(scenario.account)
    catch_up(store)
    seal(store, every=SEALED_EVERY, final=True)


class Rows:
    """The events table, row by row, as bytes: read, replaced, deleted, put back."""

    def __init__(self, connection: Any, table: str, *, postgres: bool) -> None:
        self.connection = connection
        self.postgres = postgres
        self.table = table
        if postgres:
            self.position, self.text = "notification_id", "{}"
        else:
            self.position, self.text = "rowid", "CAST({} AS TEXT)"
        self.columns = f"{self.position}, originator_id, originator_version, topic, state"

    def all(self) -> list[StoredRow]:
        if self.postgres:
            selected = self.columns
        else:
            selected = (
                "rowid, CAST(originator_id AS BLOB), originator_version, CAST(topic AS BLOB), state"
            )
        found = self.connection.execute(
            f"SELECT {selected} FROM {self.table} ORDER BY {self.position}"  # noqa: S608
        ).fetchall()
        return [self._row(values) for values in found]

    def _row(self, values: tuple[Any, ...]) -> StoredRow:
        sequence, originator_id, version, topic, state = values
        if self.postgres:
            originator_id, topic = originator_id.bytes, topic.encode()
        return StoredRow(sequence, bytes(originator_id), version, bytes(topic), bytes(state))

    def _params(self, row: StoredRow) -> tuple[Any, ...]:
        if self.postgres:
            # PostgreSQL keeps only valid UTF-8 text: other bytes cannot be stored there.
            return (
                row.sequence,
                UUID(bytes=row.originator_id),
                row.originator_version,
                row.topic.decode(),
                row.state,
            )
        return tuple(row)

    def replace(self, sequence: int, row: StoredRow) -> None:
        marker = "%s" if self.postgres else "?"
        text = self.text.format(marker)
        self.connection.execute(
            f"UPDATE {self.table} SET {self.position} = {marker}, originator_id = {text}, "  # noqa: S608
            f"originator_version = {marker}, topic = {text}, state = {marker} "
            f"WHERE {self.position} = {marker}",
            (*self._params(row), sequence),
        )

    def delete(self, sequence: int) -> None:
        marker = "%s" if self.postgres else "?"
        self.connection.execute(
            f"DELETE FROM {self.table} WHERE {self.position} = {marker}",  # noqa: S608
            (sequence,),
        )

    def insert(self, row: StoredRow) -> None:
        marker = "%s" if self.postgres else "?"
        text = self.text.format(marker)
        self.connection.execute(
            f"INSERT INTO {self.table} ({self.columns}) "  # noqa: S608
            f"VALUES ({marker}, {text}, {marker}, {text}, {marker})",
            self._params(row),
        )

    def swap(self, first: int, second: int) -> None:
        """Swap two rows' places in the log (their notification ids)."""
        marker = "%s" if self.postgres else "?"
        statement = (
            f"UPDATE {self.table} SET {self.position} = {marker} WHERE {self.position} = {marker}"  # noqa: S608
        )
        for new, old in ((-1, first), (first, second), (second, -1)):
            self.connection.execute(statement, (new, old))


def events_table(store: Store) -> str:
    return str(store.application.recorder.events_table_name)  # type: ignore[attr-defined]


@dataclass
class Tampered:
    store: Store
    rows: Rows


@pytest.fixture(params=["sqlite", "postgresql"])
def tampered(request, tmp_path: Path) -> Iterator[Tampered]:
    """A sealed history, and raw access to its rows: a copy of the file on SQLite."""
    if request.param == "sqlite":
        with Store.open(f"sqlite:///{tmp_path / 'ledger.db'}") as original:
            write_history(original)
        copy = tmp_path / "copy.db"
        with sqlite3.connect(tmp_path / "ledger.db") as source, sqlite3.connect(copy) as target:
            source.backup(target)
        raw = sqlite3.connect(copy, isolation_level=None)
        with Store.open(f"sqlite:///{copy}") as store:
            yield Tampered(store, Rows(raw, events_table(store), postgres=False))
        raw.close()
        return
    server = request.getfixturevalue("postgres_server")
    schema, url = fresh_postgres_schema(server)
    try:
        with Store.open(url) as store, psycopg.connect(server, autocommit=True) as raw:
            write_history(store)
            yield Tampered(store, Rows(raw, f'"{schema}".{events_table(store)}', postgres=True))
    finally:
        drop_postgres_schema(server, schema)


CHAINED = {ProblemKind.CHAIN, ProblemKind.SEAL, ProblemKind.ROW}
"""What the hash chain itself finds (a row it cannot frame is a row it cannot chain): every
change to sealed history must show here, whatever the decoding and invariant checks find."""


def chain_places(verdict: Verdict, moved: set[int]) -> bool:
    """Whether the chain, and not only another check, puts the change at one of `moved`."""
    return any(p.kind in CHAINED and places(p, at) for p in verdict.problems for at in moved)


def places(problem: Problem, sequence: int) -> bool:
    """Whether `problem` puts the change at `sequence`: exactly, or in a sealed range."""
    if problem.kind is ProblemKind.CHAIN:
        assert problem.since is not None
        assert problem.sequence is not None
        return problem.since < sequence <= problem.sequence
    return problem.sequence == sequence


def flipped(value: bytes | int, rng: random.Random) -> bytes | int:
    """`value` with one of its bytes changed (an integer's as 8 bytes, two's complement)."""
    data = bytearray(value.to_bytes(8, "big", signed=True) if isinstance(value, int) else value)
    data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
    return int.from_bytes(data, "big", signed=True) if isinstance(value, int) else bytes(data)


REFUSED = (sqlite3.IntegrityError, psycopg.IntegrityError, psycopg.DataError, UnicodeDecodeError)
"""A changed row the database will not hold: a duplicate key, text PostgreSQL refuses."""


def test_every_single_byte_change_of_a_sealed_row_is_detected_and_placed(tampered):
    store, rows = tampered.store, tampered.rows
    assert verify(store).ok
    original = rows.all()
    seed = secrets.randbits(32)  # new mutations every run; the seed says which, if one is missed
    rng = random.Random(seed)  # noqa: S311 - which byte to change, not a secret
    detected = placed = chained = exact = 0
    tried = 0
    while tried < MUTATIONS:
        row = rng.choice(original)
        column = rng.choice(COLUMNS)
        changed = row._replace(**{column: flipped(getattr(row, column), rng)})
        try:
            rows.replace(row.sequence, changed)
        except REFUSED:
            continue
        tried += 1
        verdict = verify(store)
        rows.replace(changed.sequence, row)
        moved = {row.sequence, changed.sequence}
        detected += not verdict.ok
        placed += any(places(problem, at) for problem in verdict.problems for at in moved)
        chained += chain_places(verdict, moved)
        exact += bool(verdict.problems) and verdict.problems[0].sequence in moved
    # The detection rate, by every check and by the chain alone, and how often the first
    # problem names the very event changed (the digests kept with the chain): all 100%.
    rates = f"seed {seed}: {detected}, {placed} placed, {chained} by the chain, {exact} exact"
    assert (detected, placed, chained, exact) == (MUTATIONS,) * 4, rates
    assert verify(store).ok


def test_deleted_and_swapped_sealed_rows_are_detected_and_placed(tampered):
    store, rows = tampered.store, tampered.rows
    original = rows.all()
    seed = secrets.randbits(32)
    rng = random.Random(seed)  # noqa: S311 - which rows, not a secret
    verdicts: list[tuple[Verdict, set[int]]] = []
    for row in rng.sample(original, DELETIONS):
        rows.delete(row.sequence)
        verdicts.append((verify(store), {row.sequence}))
        rows.insert(row)
    for _ in range(SWAPS):
        first, second = sorted(rng.sample([row.sequence for row in original], 2))
        rows.swap(first, second)
        verdicts.append((verify(store), {first, second}))
        rows.swap(first, second)
    assert [verdict.ok for verdict, _ in verdicts] == [False] * (DELETIONS + SWAPS), seed
    for verdict, moved in verdicts:
        assert chain_places(verdict, moved), (seed, verdict.problems)
        assert verdict.problems[0].sequence in moved, (seed, verdict.problems)
    assert verify(store).ok


def test_a_changed_seal_is_named_and_the_next_range_judged_on_its_own(tampered):
    store = tampered.store
    database = Database(store)
    with database.transaction(commit=True) as cursor:
        cursor.execute(
            database.sql(f"UPDATE {database.table(SEALS.name)} SET head = ? WHERE events = ?"),  # noqa: S608
            ("00" * 32, 3 * SEALED_EVERY),
        )
    verdict = verify(store)
    sealed = [row.sequence for row in tampered.rows.all()][SEALED_EVERY - 1 :: SEALED_EVERY]
    assert [(p.kind, p.since, p.sequence) for p in verdict.problems] == [
        (ProblemKind.CHAIN, sealed[1], sealed[2]),
        (ProblemKind.CHAIN, sealed[2], sealed[3]),
    ]


def test_rows_removed_from_the_log_s_end_leave_their_seal_behind(tampered):
    last = tampered.rows.all()[-1]
    tampered.rows.delete(last.sequence)
    verdict = verify(tampered.store)
    assert verdict.problems[0].kind is ProblemKind.SEAL
    assert verdict.problems[0].sequence == last.sequence


def test_events_after_the_last_seal_are_counted_as_unsealed(tampered):
    account = tampered.store.get(Account, account_id("main"))
    assert account is not None
    account.deposit(usd("1"), recorded_at=account.modified_at)
    tampered.store.save(account)
    verdict = verify(tampered.store)
    assert verdict.ok
    assert verdict.unsealed_events == 1
    assert verdict.seals_checked == verdict.events // SEALED_EVERY + 1


def test_an_anchor_kept_outside_is_checked(tampered):
    store = tampered.store
    anchor = head(store)
    assert verify(store, anchor=Anchor(anchor.sequence, anchor.head)).ok
    wrong = verify(store, anchor=Anchor(anchor.sequence, bytes(32)))
    assert [(p.kind, p.sequence) for p in wrong.problems] == [(ProblemKind.ANCHOR, anchor.sequence)]
    beyond = verify(store, anchor=Anchor(log_end(store) + 1, anchor.head))
    assert [p.kind for p in beyond.problems] == [ProblemKind.ANCHOR]


def test_a_row_of_the_wrong_type_is_named(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url) as store:
        write_history(store)
    with sqlite3.connect(tmp_path / "ledger.db") as raw:
        raw.execute("UPDATE stored_events SET originator_version = 'x' WHERE rowid = 5")
    with Store.open(url) as store:
        verdict = verify(store)
    ((kind, sequence, message),) = [(p.kind, p.sequence, p.message) for p in verdict.problems]
    assert (kind, sequence) == (ProblemKind.ROW, 5)
    assert "originator_version is str, not int" in message
    assert (verdict.sequence, verdict.events) == (4, 4)
