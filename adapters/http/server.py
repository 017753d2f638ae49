"""uvicorn serving the API inside the engine's task group, and the file naming its address.

The socket is bound before the server starts, so a port in use is one
clear error, and port 0 (any free port) gives the real port at once. The
address file beside the store tells one-shot CLI commands where the
running engine listens; it is removed when the engine stops, and one left
by a killed engine is harmless: nobody answers there, and the CLI falls
back to a short-lived engine.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.abc
import msgspec
import uvicorn
from litestar import Litestar

from adapters.http.beside import beside_store, write_private

ADDRESS_SUFFIX = ".engine"
DEFAULT_ADDRESS = "127.0.0.1:8787"


class AddressError(Exception):
    """Raised when the API's address is malformed or cannot be listened on."""


class EngineAddress(msgspec.Struct, frozen=True, kw_only=True):
    """Where a running engine's API listens, written beside its store."""

    url: str
    pid: int


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise AddressError(f"--http takes HOST:PORT, e.g. {DEFAULT_ADDRESS}; not {text!r}")
    return host.strip("[]"), int(port)


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise AddressError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    listener.listen(128)
    return listener


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers (`ledger run` handles SIGINT and SIGTERM)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = anyio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


class HttpServer:
    """The API on one socket, run as a task: `await tasks.start(server.run)`, then `stop()`."""

    def __init__(self, app: Litestar, listener: socket.socket) -> None:
        self.listener = listener
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,  # a request line could carry a secret in its query
            server_header=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self._server = _Server(config)
        self._started = False
        self._stopped = anyio.Event()

    @property
    def url(self) -> str:
        host, port = self.listener.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self._started = True
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._server.serve, [self.listener])
                await self._server.listening.wait()
                task_status.started()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Finish the requests being answered, then stop listening."""
        self._server.should_exit = True
        if self._started:
            await self._stopped.wait()


@contextlib.contextmanager
def announced(store_url: str, url: str) -> Iterator[Path]:
    """The address file of the engine of `store_url`, for as long as the block runs."""
    path = beside_store(store_url, ADDRESS_SUFFIX)
    write_private(path, msgspec.json.encode(EngineAddress(url=url, pid=os.getpid())))
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            if read_address(store_url) == EngineAddress(url=url, pid=os.getpid()):
                path.unlink()


def read_address(store_url: str) -> EngineAddress | None:
    """Where an engine of `store_url` said it listens, if one did."""
    try:
        return msgspec.json.decode(
            beside_store(store_url, ADDRESS_SUFFIX).read_bytes(), type=EngineAddress
        )
    except (FileNotFoundError, msgspec.DecodeError):
        return None
