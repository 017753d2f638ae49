"""The engine's peak memory: `ledger run` over a long history, measured from outside.

The engine runs as `ledger run` does in production, in a process of its
own: startup recovery, the views following the log, the periodic
reconciliation and the seals, with the paper demo trading. It starts on
a copy of the history with its views dropped, so it builds them again
from the first event: memory that grew with what it read would show.
Its peak resident set comes from the kernel's accounting of that child
when it exits, so nothing in the engine is instrumented.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from adapters.store import Store
from bench.load import broker_url
from projections.catalogue import live_views
from projections.database import Database

KIB = 1024


def without_views(history: Path, copy: Path) -> str:
    """A copy of the SQLite store at `history` with no views; its URL."""
    for suffix in ("", "-wal"):
        source = history.with_name(history.name + suffix)
        if source.exists():
            shutil.copyfile(source, copy.with_name(copy.name + suffix))
    url = f"sqlite:///{copy}"
    with Store.open(url) as store:
        database = Database(store)
        with database.transaction(commit=True) as cursor:
            for view in live_views(database):
                view.drop(cursor)
    return url


def engine_peak_mib(store_url: str, *, seconds: float) -> float:
    """Peak resident memory, in MiB, of `ledger run --demo` on `store_url` for `seconds`."""
    ledger = Path(sys.executable).with_name("ledger")
    command = [
        str(ledger),
        "run",
        "--demo",
        "--no-http",
        "--duration",
        str(seconds),
        "--store",
        store_url,
        "--broker",
        broker_url(),
    ]
    with subprocess.Popen(  # noqa: S603 - our own command, arguments built here
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as child:
        errors = child.stderr.read() if child.stderr is not None else b""
        # wait4, not wait: it also answers the child's resource usage.
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"ledger run failed: {errors.decode(errors='replace').strip()}")
    # Linux reports ru_maxrss in KiB.
    return usage.ru_maxrss / KIB
