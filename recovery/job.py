"""Reconciliation on a timer while the engine runs.

So a stop hit at the broker, a manual close, or an answer that was lost
shows up in the ledger without a restart. Each pass settles what evidence
backs, like startup recovery, and leaves alone what the engine is sending.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from uuid import UUID

import anyio
import anyio.abc

from ledger.engine import Engine
from ledger.errors import LedgerError
from ledger.reconciliation import Trigger
from recovery.context import Apply, ProtectionPolicy
from recovery.flatten import flatten_latched
from recovery.recover import Report, reconcile


async def reconcile_every(
    engine: Engine,
    seconds: float,
    *,
    policy: ProtectionPolicy = ProtectionPolicy.RESTORE,
    on_report: Callable[[Report], None] = lambda _: None,
    on_error: Callable[[Exception], None] = lambda _: None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run a pass every `seconds` until cancelled; started with `task_group.start`."""
    # Remembered across passes: when each unfinished intent was first seen,
    # so a venue's visibility lag is counted from then (see Pass.lag_passed).
    first_seen: dict[UUID, datetime] = {}
    task_status.started()
    while True:
        await anyio.sleep(seconds)
        try:
            with anyio.fail_after(engine.broker_timeout * 10):
                report = await reconcile(
                    engine,
                    trigger=Trigger.PERIODIC,
                    apply=Apply.EVIDENCE,
                    policy=policy,
                    first_seen=first_seen,
                )
                await flatten_latched(engine)
        except (LedgerError, TimeoutError) as error:
            # A pass that fails (a broker that does not answer) is retried on
            # the next tick; the engine keeps serving meanwhile.
            on_error(error)
            continue
        on_report(report)
