"""A real `ledger run` serving its API on a free loopback port, for the API's tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Self

import httpx

from adapters.http.beside import beside_store
from adapters.http.server import ADDRESS_SUFFIX
from adapters.http.tokens import TOKENS_SUFFIX
from adapters.store import Store
from tests.terminal import LEDGER

START_TIMEOUT_SECONDS = 30.0


class RunningEngine:
    """`ledger run --http 127.0.0.1:0` on a store and a paper broker in `folder`."""

    def __init__(self, folder: Path, *, broker_query: str = "", store_url: str | None = None):
        self.folder = folder
        self.store_url = store_url or f"sqlite:///{folder / 'ledger.db'}"
        self.broker_url = f"paper:///{folder / 'broker.db'}{broker_query}"
        self.address_file = beside_store(self.store_url, ADDRESS_SUFFIX, home=folder)
        self.token_file = beside_store(self.store_url, TOKENS_SUFFIX, home=folder)
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.tokens: dict[str, str] = {}

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()

    def start(self) -> None:
        if self.address_file.exists():
            self.address_file.unlink()
        with (self.folder / "engine.err").open("a") as errors:
            self.process = self._spawn(errors)
        self._announced()

    def _spawn(self, errors: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                str(LEDGER),
                "run",
                "--store",
                self.store_url,
                "--broker",
                self.broker_url,
                "--http",
                "127.0.0.1:0",
                "--reconcile-every",
                "0",
            ],
            cwd=self.folder,
            env={k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
            | {"LEDGER_HOME": str(self.folder)},
            stdout=subprocess.DEVNULL,
            stderr=errors,
            text=True,
        )

    def _announced(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"ledger run exited: {(self.folder / 'engine.err').read_text()}"
                )
            if self.address_file.exists():
                address = json.loads(self.address_file.read_text())
                if address["pid"] == self.process.pid:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("ledger run did not announce its API")
            time.sleep(0.05)
        self.url = address["url"]
        tokens = json.loads(self.token_file.read_text())["tokens"]
        self.tokens = {token["name"]: token["secret"] for token in tokens}

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while self.call("GET", "/ready").status_code != 200:
            if time.monotonic() > deadline:
                raise AssertionError("the engine never became ready")
            time.sleep(0.05)

    def stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=30) == 0

    def kill(self) -> None:
        """`kill -9`: no shutdown at all."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def call(
        self,
        method: str,
        path: str,
        *,
        who: str | None = "operator",
        body: Any = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if who is not None:
            # `who` names a token of the file, or is taken as a secret as it is.
            sent["Authorization"] = f"Bearer {self.tokens.get(who, who)}"
        return httpx.request(
            method,
            self.url + path,
            json=body,
            content=content,
            headers=sent,
            params=params,
            timeout=60,
        )

    def event_count(self) -> int:
        with Store.open(self.store_url) as store:
            return store.info().event_count
