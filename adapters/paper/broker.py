"""The paper broker as the async `Broker` port.

The books are synchronous SQLite; each call runs in a worker thread, one
at a time (a broker serves its requests in order). A write answered with
`crash_after_accept` kills the calling process with SIGKILL right after
the broker committed: exactly what a crash between a broker's acceptance
and the caller hearing of it looks like.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Self, TypeVar

import anyio
import anyio.to_thread

from adapters.paper import market
from adapters.paper.book import CLIENT_ID_CHARACTERS, CLIENT_ID_LENGTH_MAX, Outcome, PaperBook
from adapters.paper.settings import DEFAULT_BROKER_URL, PaperSettings, parse_broker_url
from ledger.instruments import Instrument
from ledger.money import Money
from ledger.ports import (
    Balance,
    BrokerPosition,
    CandidateHint,
    Capabilities,
    ClientIdScope,
    Fill,
    LookupResult,
    Order,
    OrderRequest,
    ProtectionRequest,
    Quote,
    WriteResult,
)

T = TypeVar("T")

# The paper broker keeps its whole history.
HISTORY_LOOKBACK = timedelta(days=3650)


class PaperBroker:
    """A broker that lives in a local file and behaves, and fails, like a real one."""

    def __init__(self, settings: PaperSettings, *, start_session: bool = True) -> None:
        self.settings = settings
        self._book = PaperBook(settings, start_session=start_session)
        self._limiter = anyio.CapacityLimiter(1)
        self.capabilities = Capabilities(
            venue="paper",
            lookup_by_client_id=settings.scope is not ClientIdScope.NONE,
            client_id_scope=settings.scope,
            client_id_length_max=CLIENT_ID_LENGTH_MAX,
            client_id_characters=CLIENT_ID_CHARACTERS,
            native_protection_amend=True,
            history_lookback=HISTORY_LOOKBACK,
            visibility_lag=timedelta(seconds=settings.lag_seconds),
        )

    @classmethod
    def open(cls, url: str = DEFAULT_BROKER_URL, *, start_session: bool = True) -> Self:
        """Open the broker at `url`; see `PaperBook` for `start_session`."""
        return cls(parse_broker_url(url), start_session=start_session)

    def close(self) -> None:
        self._book.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def _run(self, call: Callable[[], T]) -> T:
        if self.settings.latency_ms:
            # The way there and back, outside the books' lock: calls in flight overlap.
            await anyio.sleep(self.settings.latency_ms / 1000)
        return await anyio.to_thread.run_sync(call, limiter=self._limiter)

    async def _write(self, call: Callable[[], Outcome]) -> WriteResult:
        outcome = await self._run(call)
        if outcome.crash:
            os.kill(os.getpid(), signal.SIGKILL)
        return outcome.result

    # Writes ------------------------------------------------------------------------

    async def submit(self, order: OrderRequest) -> WriteResult:
        return await self._write(lambda: self._book.submit(order))

    async def amend_protection(self, request: ProtectionRequest) -> WriteResult:
        return await self._write(lambda: self._book.amend_protection(request))

    async def cancel(self, client_id: str, account: str) -> WriteResult:
        return await self._write(lambda: self._book.cancel(client_id, account))

    # Reads -------------------------------------------------------------------------

    async def lookup(self, client_id: str) -> LookupResult:
        return await self._run(lambda: self._book.lookup(client_id))

    async def find_candidates(self, hint: CandidateHint) -> list[Order]:
        return await self._run(lambda: self._book.find_candidates(hint))

    async def open_orders(self) -> list[Order]:
        return await self._run(self._book.orders)

    async def all_orders(self) -> list[Order]:
        """Every order the broker ever accepted (paper broker only: real venues page this)."""
        return await self._run(lambda: self._book.orders(include_done=True))

    async def positions(self) -> list[BrokerPosition]:
        return await self._run(self._book.positions)

    async def all_positions(self) -> list[BrokerPosition]:
        """Open and closed positions (paper broker only)."""
        return await self._run(lambda: self._book.positions(include_closed=True))

    async def fills(self, since: datetime | None = None) -> list[Fill]:
        since_step = None if since is None else market.step_at(since)
        return await self._run(lambda: self._book.fills(since_step))

    async def account(self) -> list[Balance]:
        return await self._run(self._book.balances)

    async def quote(self, symbol: str) -> Quote:
        return await self._run(lambda: self._book.quote(symbol))

    async def instrument(self, symbol: str) -> Instrument | None:
        return market.instrument(symbol, self.settings.fee_rate)

    async def server_time(self) -> datetime:
        return await self._run(lambda: market.clock(self._book.step))

    async def wait_until(self, moment: datetime) -> None:
        # The paper clock moves only when something happens; a client that
        # waits is something happening: the clock runs on to `moment`, and
        # prices move and stops trigger as they would meanwhile.
        def run_on() -> None:
            steps = market.step_at(moment) - self._book.step
            if moment > market.clock(market.step_at(moment)):
                steps += 1
            if steps > 0:
                self._book.advance(steps)

        await self._run(run_on)

    # Paper broker only -------------------------------------------------------------

    async def fund(self, account: str, amount: Money) -> None:
        await self._run(lambda: self._book.fund(account, amount))

    async def advance(self, steps: int = 1) -> None:
        await self._run(lambda: self._book.advance(steps))

    def dump(self) -> dict[str, list[dict[str, object]]]:
        return self._book.dump()
