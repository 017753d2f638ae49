"""A throwaway PostgreSQL server for the test session, from the system's binaries.

It lives in a temporary folder, listens on a free loopback port, needs a
password (so the URL handling is exercised for real), and is stopped and
deleted when the session ends. PostgreSQL refuses to run as root, so when
the tests run as root the server runs as the `postgres` system user.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

SUPERUSER = "ledger_test"
DATABASE = "ledger_test"


class PostgresUnavailableError(RuntimeError):
    """The server binaries are missing or the server would not start."""


def find_binaries() -> Path:
    """The folder with initdb and pg_ctl: on PATH, else Debian's newest version."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    # Debian installs each major version side by side; take the newest.
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda path: int(path.parts[-3])
    )
    if not candidates:
        msg = "PostgreSQL server binaries not found; run `make test` (it installs them)"
        raise PostgresUnavailableError(msg)
    return candidates[-1].parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start a server, create an empty database, yield its URL, then stop it."""
    binaries = find_binaries()
    root = Path(tempfile.mkdtemp(prefix="ledger-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    password = secrets.token_hex(16)
    password_file = root / "password"
    password_file.write_text(password)
    if run_as:
        os.chown(password_file, pwd.getpwnam("postgres").pw_uid, -1)
    data = root / "data"
    port = free_port()

    def run(*command: str | Path) -> None:
        result = subprocess.run(
            [*run_as, *map(str, command)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            msg = f"{command[0]} failed: {result.stderr.strip()} {log[-2000:]}"
            raise PostgresUnavailableError(msg)

    run(
        binaries / "initdb",
        "-D",
        data,
        "-U",
        SUPERUSER,
        f"--pwfile={password_file}",
        "--auth=scram-sha-256",
        "--encoding=UTF8",
        "--no-instructions",
    )
    run(
        binaries / "pg_ctl",
        "-D",
        data,
        "-l",
        root / "server.log",
        "-w",
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200",
        "start",
    )
    try:
        url = f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{port}/{DATABASE}"
        with psycopg.connect(
            host="127.0.0.1",
            port=port,
            user=SUPERUSER,
            password=password,
            dbname="postgres",
            autocommit=True,
        ) as connection:
            connection.execute(f"CREATE DATABASE {DATABASE}")
        yield url
    finally:
        run(binaries / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
