"""Files that belong to one store, kept next to it: its tokens and its engine's address.

For a SQLite store they sit beside the database file; a PostgreSQL store
has no file, so they go in LEDGER_HOME (default: the working directory),
named after the server and database.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from adapters.store import StoreKind, parse_store_url


def beside_store(store_url: str, suffix: str, home: Path | None = None) -> Path:
    """The file `suffix` of the store at `store_url` (e.g. ".tokens").

    `home` is where a PostgreSQL store's files go (default: LEDGER_HOME).
    """
    location = parse_store_url(store_url)
    if location.kind is StoreKind.SQLITE and location.path is not None:
        return location.path.with_name(location.path.name + suffix)
    env = location.environment
    name = "-".join(
        [env["POSTGRES_HOST"], env["POSTGRES_PORT"], env["POSTGRES_DBNAME"]]
        + ([env["POSTGRES_SCHEMA"]] if env.get("POSTGRES_SCHEMA") else [])
    )
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    folder = home or Path(os.environ.get("LEDGER_HOME") or ".")
    return folder / f"ledger-{safe}{suffix}"


def write_private(path: Path, content: bytes) -> None:
    """Replace `path` with `content` at once, readable by its owner only (mode 0600)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, content)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    temporary.replace(path)
