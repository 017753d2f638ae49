"""What the API's handlers share: the engine, a connection for reads, tokens and metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import anyio.to_thread

from adapters.http.metrics import Metrics
from adapters.http.tokens import Tokens
from adapters.store import Store
from ledger.engine import Engine
from ledger.errors import NotReady
from projections import catch_up
from recovery.context import ProtectionPolicy

T = TypeVar("T")


@dataclass
class Service:
    """The running engine as the API sees it.

    `engine` is set once the lease is held, before recovery: the API
    answers `/health` and `/ready` while recovery runs, and refuses
    operations until the engine is ready.
    """

    reader: Store
    """The API's own connection: reads never queue behind the engine's writer."""
    tokens: Tokens
    metrics: Metrics
    policy: ProtectionPolicy = ProtectionPolicy.RESTORE
    engine: Engine | None = None
    _reads: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(1))

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.ready

    def running(self) -> Engine:
        if self.engine is None or not self.engine.ready:
            raise NotReady
        return self.engine

    async def read(self, query: Callable[[Store], T]) -> T:
        """`query` on the views, brought to the log's end first (as every CLI read does)."""

        def caught_up() -> T:
            catch_up(self.reader)
            return query(self.reader)

        return await anyio.to_thread.run_sync(caught_up, limiter=self._reads)
