"""The single-writer lease: one engine writes a store at a time.

SQLite: an exclusive `flock` on `<database>.lock`, held by an open file
for the life of the process; the kernel drops it when the process dies,
however it dies, so a crashed engine never leaves a stale lease.
PostgreSQL: a session advisory lock on a dedicated connection, dropped by
the server when that connection ends.

Each lease increments an epoch stored in the database; the epoch goes into
every client id, so orders sent by an engine that lost its lease can be
told apart.
"""

from __future__ import annotations

import fcntl
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from adapters.sqlite_store import FILE_MODE
from ledger.errors import LeaseHeld

# The advisory lock key: one per schema, so two ledgers in two schemas of
# one database do not exclude each other.
LOCK_NAMESPACE = 0x1ED6E4


@contextmanager
def sqlite_lease(database: Path, holder: str) -> Iterator[None]:
    """Hold `<database>.lock` exclusively; raise `LeaseHeld` naming the holder if taken."""
    path = database.with_name(database.name + ".lock")
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            current = os.pread(descriptor, 512, 0).decode(errors="replace").strip()
            raise LeaseHeld(
                f"{database} is in use by another engine ({current or 'holder unknown'})"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, holder.encode(), 0)
        yield
    finally:
        os.close(descriptor)


@contextmanager
def postgres_lease(
    connect: Callable[[], psycopg.Connection[Any]], schema: str, holder: str
) -> Iterator[None]:
    """Hold a session advisory lock for `schema`; raise `LeaseHeld` naming the holder if taken."""
    # pg_try_advisory_lock(int4, int4) takes signed keys; pg_locks shows the
    # second one as an unsigned oid.
    key = zlib.crc32(schema.encode())
    signed_key = key - 2**32 if key >= 2**31 else key
    with connect() as connection:
        connection.autocommit = True
        connection.execute("SELECT set_config('application_name', %s, false)", (holder[:63],))
        row = connection.execute(
            "SELECT pg_try_advisory_lock(%s::int4, %s::int4)", (LOCK_NAMESPACE, signed_key)
        ).fetchone()
        if not row or not row[0]:
            current = connection.execute(
                "SELECT activity.application_name, activity.pid FROM pg_locks AS locks"
                " JOIN pg_stat_activity AS activity ON activity.pid = locks.pid"
                " WHERE locks.locktype = 'advisory' AND locks.classid = %s AND locks.objid = %s",
                (LOCK_NAMESPACE, key),
            ).fetchone()
            named = f"{current[0]} (server pid {current[1]})" if current else "holder unknown"
            raise LeaseHeld(f"schema {schema} is in use by another engine: {named}")
        try:
            yield
        finally:
            connection.execute(
                "SELECT pg_advisory_unlock(%s::int4, %s::int4)", (LOCK_NAMESPACE, signed_key)
            )
