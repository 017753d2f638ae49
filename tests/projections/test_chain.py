"""The link function: deterministic, and changed by every byte of every field of a row."""

from __future__ import annotations

import hashlib

import pytest

from projections.chain import CHAIN_DOMAIN, GENESIS, Link, StoredRow, extend, frame

ROWS = [
    StoredRow(1, b"\x01" * 16, 1, b"account.opened/v1", b"\x81\xa4name\xa4main"),
    StoredRow(2, b"\x01" * 16, 2, b"account.deposited/v1", b"\x82\xa6amount\xa3100"),
    StoredRow(5, b"\x02" * 16, 1, b"intent.recorded/v1", b""),
]


def chain(rows: list[StoredRow]) -> Link:
    link = GENESIS
    for row in rows:
        link = extend(link, row)
    return link


def test_the_chain_starts_from_a_hash_of_its_domain():
    assert Link(sequence=0, head=hashlib.sha256(CHAIN_DOMAIN).digest(), events=0) == GENESIS


def test_a_link_hashes_the_previous_head_and_the_framed_row():
    link = extend(GENESIS, ROWS[0])
    assert link.head == hashlib.sha256(GENESIS.head + frame(ROWS[0])).digest()
    assert (link.sequence, link.events) == (1, 1)


def test_the_same_rows_give_the_same_heads():
    assert chain(ROWS) == chain(list(ROWS))
    assert chain(ROWS).events == len(ROWS)
    assert chain(ROWS).sequence == ROWS[-1].sequence


@pytest.mark.parametrize("field", StoredRow._fields)
def test_every_field_of_every_row_changes_the_head(field):
    heads = {chain(ROWS).head}
    for index, row in enumerate(ROWS):
        value = getattr(row, field)
        changed = value + 1 if isinstance(value, int) else value + b"\x00"
        rows = [*ROWS]
        rows[index] = row._replace(**{field: changed})
        heads.add(chain(rows).head)
    assert len(heads) == len(ROWS) + 1


def test_every_bit_of_the_state_changes_the_head():
    row = ROWS[1]
    heads = {extend(GENESIS, row).head}
    for position in range(len(row.state)):
        for bit in range(8):
            state = bytearray(row.state)
            state[position] ^= 1 << bit
            heads.add(extend(GENESIS, row._replace(state=bytes(state))).head)
    assert len(heads) == 1 + 8 * len(row.state)


def test_bytes_moved_from_one_field_to_the_next_change_the_head():
    row = StoredRow(1, b"ab", 1, b"cd", b"ef")
    moved = [row._replace(originator_id=b"a", topic=b"bcd"), row._replace(topic=b"c", state=b"def")]
    assert len({frame(row), *(frame(other) for other in moved)}) == 3


def test_order_removal_and_insertion_change_the_head():
    whole = chain(ROWS).head
    assert chain([ROWS[1], ROWS[0], ROWS[2]]).head != whole
    assert chain([ROWS[0], ROWS[2]]).head != whole
    assert chain([*ROWS[:2], ROWS[1]._replace(sequence=3), ROWS[2]]).head != whole
