"""The tamper-evident hash chain over the stored log: h(n) = SHA-256(h(n-1) || row n).

Each link hashes one row of the events table exactly as it is stored,
never a decoding of it: its notification id, originator id, version,
topic and state. The frame is unambiguous: integers have a fixed width
and every byte string carries its length, so no two different rows (or
runs of rows) frame to the same bytes. Changing, removing, inserting or
reordering any row therefore changes every head from that row on.

The originator id is hashed in its stored form: 16 bytes on PostgreSQL
(a `uuid` column), the text's bytes on SQLite (a `TEXT` column). Read as
a UUID, two different texts can name the same id ("A" and "a"), and a
chain of parsed ids would not see one changed into the other.
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

CHAIN_DOMAIN = b"trading-ledger audit chain v1"
"""Names the chain's rules: a different framing must change the domain, and so every head."""

GENESIS_HEAD = hashlib.sha256(CHAIN_DOMAIN).digest()

_INTEGER = struct.Struct("!q")
_LENGTH = struct.Struct("!Q")


class StoredRow(NamedTuple):
    """One row of the events table, as stored."""

    sequence: int
    """The notification id: the row's place in the log."""
    originator_id: bytes
    """As stored: a PostgreSQL uuid's 16 bytes, or the bytes of SQLite's text."""
    originator_version: int
    topic: bytes
    state: bytes


class Link(NamedTuple):
    """The chain's head after the row at `sequence`, and how many rows it covers."""

    sequence: int
    head: bytes
    events: int


GENESIS = Link(sequence=0, head=GENESIS_HEAD, events=0)
"""The chain before the first row."""


def frame(row: StoredRow) -> bytes:
    """The bytes of `row` that a link hashes."""
    return b"".join(
        (
            _INTEGER.pack(row.sequence),
            _prefixed(row.originator_id),
            _INTEGER.pack(row.originator_version),
            _prefixed(row.topic),
            _prefixed(row.state),
        )
    )


def extend(link: Link, row: StoredRow) -> Link:
    """The chain after `row`, which follows `link`'s row in the log."""
    head = hashlib.sha256(link.head + frame(row)).digest()
    return Link(sequence=row.sequence, head=head, events=link.events + 1)


def _prefixed(data: bytes) -> bytes:
    return _LENGTH.pack(len(data)) + data
