"""A reconciliation pass from start to end, and startup recovery built on it.

Order matters: the unfinished intents are listed first; then the broker
is read (positions, then working orders, then fills, so a position that
closes meanwhile still has its closing fill in what was read); intents are
resolved next, since their fills belong to them; then positions and
balances are compared; the report is recorded last, so it describes
everything the pass did.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

import anyio
import msgspec

from ledger.engine import Engine
from ledger.intent import Intent, IntentStatus
from ledger.reconciliation import ATTENTION, Finding, Item, ReconciliationLog, Trigger
from ledger.reconciliation import RECONCILIATION_LOG_ID as LOG_ID
from ledger.writer import UnitOfWork
from recovery.balances import reconcile_balances
from recovery.context import Apply, Pass, ProtectionPolicy, refresh_frozen
from recovery.intents import resolve
from recovery.positions import reconcile_positions

# Startup waits this much longer than the venue's visibility lag, at most,
# for its clock to pass the lag; an intent still unknown then needs review.
LAG_WAIT_MARGIN_SECONDS = 10.0


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """What a pass found and did."""

    report_id: UUID
    trigger: Trigger
    apply: Apply
    broker_time: datetime
    items: list[Item]
    recorded: bool
    """Whether the report was recorded in the reconciliation log."""

    @property
    def needs_review(self) -> bool:
        return any(item.finding in ATTENTION for item in self.items)


async def reconcile(
    engine: Engine,
    *,
    trigger: Trigger,
    apply: Apply,
    policy: ProtectionPolicy = ProtectionPolicy.RESTORE,
    first_seen: dict[UUID, datetime] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Report:
    """One pass over intents, positions and balances; see the module docstring.

    `progress` hears which stage the pass is in (for a terminal to show).
    """
    progress("reading the broker")
    run = Pass(
        engine=engine,
        trigger=trigger,
        apply=apply,
        policy=policy,
        broker_time=await engine.broker.server_time(),
        first_seen={} if first_seen is None else first_seen,
    )
    intents = await _unfinished(run)
    await _read_broker(run, intents)
    if apply is not Apply.NOTHING:
        # The broker answered every read: writes to it may go again.
        await engine.broker_answered("reconciliation")
    progress("resolving unfinished intents")
    startup = trigger is not Trigger.PERIODIC
    waiting = await _resolve_intents(run, intents, last_chance=startup and not run.lag)
    if waiting and startup:
        # The venue may not show these yet: let its clock pass the lag, then
        # ask once more; whatever it still cannot tell needs an operator.
        progress(f"waiting {run.lag} for the broker's visibility lag")
        with anyio.fail_after(run.lag.total_seconds() + LAG_WAIT_MARGIN_SECONDS):
            await engine.broker.wait_until(run.broker_time + run.lag)
        run.broker_time = await engine.broker.server_time()
        run.items = [item for item in run.items if item.finding is not Finding.INTENT_WAITING]
        await _read_broker(run, intents)
        await _resolve_intents(run, waiting, last_chance=True)
    intents = await _unfinished(run)
    await refresh_frozen(run, intents)
    progress("comparing positions")
    await reconcile_positions(run, intents)
    progress("comparing balances")
    await reconcile_balances(run)
    recorded = await _record(run) if run.writes else False
    return Report(
        report_id=run.report_id,
        trigger=trigger,
        apply=apply,
        broker_time=run.broker_time,
        items=run.items,
        recorded=recorded,
    )


async def recover_at_startup(
    engine: Engine,
    policy: ProtectionPolicy = ProtectionPolicy.RESTORE,
    progress: Callable[[str], None] = lambda _: None,
) -> Report:
    """Startup recovery: settle what evidence backs, flag the rest, then let the engine serve."""
    return await reconcile(
        engine, trigger=Trigger.STARTUP, apply=Apply.EVIDENCE, policy=policy, progress=progress
    )


async def _read_broker(run: Pass, intents: list[Intent]) -> None:
    broker = run.engine.broker
    run.positions = await broker.positions()
    run.orders = await broker.open_orders()
    run.fills = await broker.fills(since=await _fills_since(run, intents))


async def _fills_since(run: Pass, intents: list[Intent]) -> datetime | None:
    """From just before the oldest open position (ours or the broker's) or unfinished intent."""
    # The broker's own positions count too: one to adopt is rebuilt from its fills.
    moments: list[datetime] = [position.opened_at for position in run.positions]
    for held in await run.open_positions():
        if held.opened_at is None:
            return None
        moments.append(held.opened_at)
    for intent in intents:
        if intent.broker_time is None:
            return None
        moments.append(intent.broker_time)
    return min(moments) - timedelta(seconds=1) if moments else run.broker_time


async def _unfinished(run: Pass) -> list[Intent]:
    intents = await run.read_all(Intent, run.engine.store.unfinished_intents)
    # Listed from the database, read through the writer's cache, which may
    # be ahead of it within a batch: one may have finished meanwhile.
    return [intent for intent in intents if not intent.is_terminal]


async def _resolve_intents(run: Pass, intents: list[Intent], *, last_chance: bool) -> list[Intent]:
    """Decide each unfinished intent; return those still waiting for evidence."""
    waiting: list[Intent] = []
    for intent in intents:
        if intent.status is IntentStatus.NEEDS_REVIEW:
            account = await run.account_name(intent.account_id)
            reason = intent.review_reason or "under review"
            run.found(Finding.INTENT_NEEDS_REVIEW, account, intent.id, reason)
            continue
        if intent.id in run.engine.in_flight:
            continue  # this engine is sending it now: its answer decides it
        if await resolve(run, intent, last_chance=last_chance):
            waiting.append(intent)
    return waiting


async def _record(run: Pass) -> bool:
    now = run.engine.clock()

    def record(unit: UnitOfWork) -> bool:
        log = unit.get(ReconciliationLog, LOG_ID)
        if log is None:
            log = ReconciliationLog.start()
            unit.add(log)
        return log.record(
            run.report_id, run.trigger, run.items, broker_time=run.broker_time, recorded_at=now
        )

    return await run.write(record)
