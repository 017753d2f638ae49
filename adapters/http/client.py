"""How a one-shot CLI command reaches the running engine of its store.

An engine holds the store's lease, so a second process cannot write; the
command posts its operation to the engine's API instead, found through
the address file beside the store, with the store's write token. When no
engine answers there (none runs, or one was killed and left its file),
the caller starts a short-lived engine as before: a refused connection
means the request was never sent, so nothing can happen twice.
"""

from __future__ import annotations

import http.client
import os
from urllib.parse import urlsplit

import msgspec

from adapters.http.errors import ApiError
from adapters.http.operations import Operation
from adapters.http.server import EngineAddress, read_address
from adapters.http.tokens import Tokens
from ledger.origin import OPERATOR_PATTERN
from ledger.results import OperationResult

# Longer than an operation can take: the broker's timeout, then its evidence reads.
ANSWER_TIMEOUT_SECONDS = 60.0
UNAVAILABLE_CODES = frozenset(
    {
        "outcome_unknown",
        "request_in_flight",
        "not_ready",
        "store_unavailable",
        "broker_unavailable",
        "tokens_unreadable",
        "unreachable",
    }
)
"""Answers the CLI exits 3 for (the outcome is open or the engine cannot serve); others exit 1."""


class ApiFailure(Exception):  # noqa: N818 - reads as "the API answered a failure"
    """Raised when the running engine answered an error (or its answer was lost)."""

    def __init__(self, error: ApiError) -> None:
        self.error = error
        super().__init__(error.message)

    @property
    def unavailable(self) -> bool:
        return self.error.code in UNAVAILABLE_CODES


class NoEngine(Exception):  # noqa: N818
    """Raised when no engine listens for the store: the caller runs one itself."""


def running_engine(store_url: str) -> EngineAddress | None:
    """The address of the store's running engine, if its file names a live process."""
    address = read_address(store_url)
    if address is None:
        return None
    try:
        os.kill(address.pid, 0)
    except ProcessLookupError:
        return None  # the engine that wrote it is gone: its port may be anyone's now
    except PermissionError:
        pass  # alive, under another user
    return address


def send(
    store_url: str, address: EngineAddress, operation: Operation, *, operator: str
) -> OperationResult:
    """Post `operation` to the engine at `address` for `operator`; its result, or `ApiFailure`."""
    token = Tokens.of_store(store_url).writer()
    if token is None:
        raise NoEngine("no write token beside the store")
    parts = urlsplit(address.url)
    connection = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port, timeout=ANSWER_TIMEOUT_SECONDS
    )
    try:
        try:
            connection.connect()
        except OSError as error:
            raise NoEngine(str(error)) from None
        try:
            connection.request(
                "POST",
                operation.path,
                body=msgspec.json.encode(operation),
                headers=_headers(token.secret, operator),
            )
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as error:
            # Sent, and no answer: the engine may have done it. Never send it again blindly.
            raise ApiFailure(
                ApiError(
                    code="outcome_unknown",
                    message=f"outcome unknown: the running engine at {address.url} did not "
                    f"answer ({error}); `ledger wal pending` shows whether it is in flight",
                )
            ) from None
    finally:
        connection.close()
    if response.status == http.client.OK:
        return msgspec.json.decode(body, type=OperationResult)
    try:
        failure = msgspec.json.decode(body, type=ApiError)
    except msgspec.DecodeError:
        failure = ApiError(
            code="unreachable", message=f"the engine answered HTTP {response.status}"
        )
    raise ApiFailure(failure)


def _headers(secret: str, operator: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    # A name a header cannot carry (not ASCII, too long) is left out, not mangled.
    if OPERATOR_PATTERN.fullmatch(operator):
        headers["Ledger-Operator"] = operator
    return headers
