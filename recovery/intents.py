"""Unfinished intents, resolved from what the broker shows, never from a guess.

For each intent still in flight: ask the broker by client id; complete it
from the order's fills, or roll it back when the broker says with
authority that it never saw it and its visibility lag has passed. A venue
that cannot look up client ids is searched for candidates instead (symbol,
side, quantity, time window, tag): exactly one unclaimed candidate
completes the intent as a heuristic match; none, with the broker's history
covering the window, rolls it back; anything else needs review.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from ledger import settlement
from ledger.intent import (
    CloseRequest,
    Evidence,
    Intent,
    OpenRequest,
    ProtectionChange,
)
from ledger.ports import Accepted, CandidateHint, Found, LookupUnsupported, NotFound, OrderStatus
from ledger.position import Position
from ledger.reconciliation import Finding, Item
from ledger.settlement import describe_fills
from ledger.writer import UnitOfWork
from recovery.context import Pass


@dataclass(frozen=True)
class Complete:
    accepted: Accepted
    evidence: Evidence


@dataclass(frozen=True)
class RollBack:
    evidence: Evidence


@dataclass(frozen=True)
class Review:
    reason: str
    evidence: Evidence | None = None


@dataclass(frozen=True)
class Wait:
    reason: str


Verdict = Complete | RollBack | Review | Wait


async def resolve(run: Pass, intent: Intent, *, last_chance: bool) -> bool:
    """Decide `intent` from evidence and (unless planning) record the decision.

    Returns True when it stays unresolved and is worth asking about again
    later. On the `last_chance` (the end of startup recovery) an intent
    the broker still cannot account for is flagged for review instead.
    """
    account = await run.account_name(intent.account_id)
    verdict = await _decide(run, intent, account)
    if isinstance(verdict, Wait) and last_chance:
        verdict = Review(f"no evidence either way: {verdict.reason}")
    if isinstance(verdict, Wait):
        run.found(Finding.INTENT_WAITING, account, intent.id, verdict.reason)
        return True
    item = _report(run, account, intent, verdict)
    if not run.writes:
        return False
    if isinstance(intent.payload, OpenRequest):
        await run.engine.instrument(intent.payload.symbol)
    now = run.engine.clock()

    def command(unit: UnitOfWork) -> bool:
        # Decided from reads outside the writer: written only if nothing
        # concluded the intent meanwhile (the engine's own answer wins).
        if not _unchanged(unit, run, intent):
            return False
        _settle(unit, run, intent.id, verdict, now)
        return True

    if await run.write(command):
        run.mark_applied(item)
    else:
        run.items.remove(item)
        run.settled.discard(intent.id)
    return False


def _report(run: Pass, account: str, intent: Intent, verdict: Complete | RollBack | Review) -> Item:
    """Note the decision as a finding (and, planning, what its fills would do)."""
    if isinstance(verdict, Review):
        return run.found(Finding.INTENT_NEEDS_REVIEW, account, intent.id, verdict.reason)
    run.settled.add(intent.id)
    if isinstance(verdict, RollBack):
        return run.found(Finding.INTENT_ROLLED_BACK, account, intent.id, verdict.evidence.detail)
    if not run.writes:
        run.note_unrecorded(account, {f.fill_id: f for f in verdict.accepted.fills}.values())
        if isinstance(change := intent.payload, ProtectionChange):
            run.planned_levels[change.position_id] = (change.stop_loss, change.take_profit)
    return run.found(Finding.INTENT_COMPLETED, account, intent.id, verdict.evidence.detail)


def _settle(unit: UnitOfWork, run: Pass, intent_id: UUID, verdict: Verdict, now: datetime) -> None:
    if isinstance(verdict, Complete):
        settlement.complete(
            unit, intent_id, verdict.accepted, verdict.evidence, now, run.engine.known_instrument
        )
    elif isinstance(verdict, RollBack):
        settlement.roll_back(unit, intent_id, verdict.evidence, now)
    elif isinstance(verdict, Review):
        stored, _ = settlement.load_intent(unit, intent_id)
        stored.flag_for_review(verdict.reason, recorded_at=now, evidence=verdict.evidence)


def _unchanged(unit: UnitOfWork, run: Pass, intent: Intent) -> bool:
    stored = unit.get(Intent, intent.id)
    return (
        stored is not None
        and not stored.is_terminal
        and stored.status is intent.status
        and intent.id not in run.engine.in_flight
    )


async def _decide(run: Pass, intent: Intent, account: str) -> Verdict:
    payload = intent.payload
    if isinstance(payload, ProtectionChange):
        return await _protection_evidence(run, intent, payload)
    if not isinstance(payload, OpenRequest | CloseRequest):
        # Balance intents complete in the commit that records them; one left
        # unfinished was written by something else and is not ours to guess.
        return Review(f"a {intent.kind} intent is never left in flight by the engine")
    if run.engine.broker.capabilities.lookup_by_client_id:
        found = await run.engine.broker.lookup(intent.client_id)
        if not isinstance(found, LookupUnsupported):
            return _lookup_verdict(run, intent, found)
    return await _candidate_verdict(run, intent, account)


def _lookup_verdict(run: Pass, intent: Intent, found: Found | NotFound) -> Verdict:
    observed = run.broker_time
    if isinstance(found, Found):
        order = found.order
        detail = (
            f"order {order.broker_ref} found by client id {intent.client_id}: {order.status}, "
            f"{order.filled_quantity} of {order.quantity} filled"
        )
        if found.fills:
            return Complete(
                Accepted(broker_ref=order.broker_ref, fills=found.fills),
                Evidence(
                    source="lookup",
                    observed_at=observed,
                    broker_ref=order.broker_ref,
                    detail=f"{detail}; fills {describe_fills(found.fills)}",
                ),
            )
        if order.status is OrderStatus.CANCELLED:
            return RollBack(
                Evidence(
                    source="lookup",
                    observed_at=observed,
                    broker_ref=order.broker_ref,
                    detail=f"{detail}; cancelled before any fill",
                )
            )
        return Wait(f"{detail}; nothing filled yet")
    if not found.authoritative:
        return Wait(f"client id {intent.client_id} not found, and the broker cannot be sure")
    if not run.lag_passed(intent.id):
        return Wait(f"client id {intent.client_id} not visible yet (visibility lag {run.lag})")
    return RollBack(
        Evidence(
            source="lookup",
            observed_at=observed,
            detail=(
                f"client id {intent.client_id} not found at broker time {observed.isoformat()}, "
                f"after the visibility lag of {run.lag}"
            ),
        )
    )


async def _candidate_verdict(run: Pass, intent: Intent, account: str) -> Verdict:
    hint = await _hint(run, intent, account)
    if hint is None:
        return Review("its position is gone from the ledger, so nothing can be matched")
    candidates = [
        order
        for order in await run.engine.broker.find_candidates(hint)
        if order.broker_ref not in run.claimed
    ]
    window = f"{hint.symbol} {hint.side} {hint.quantity}, tag {hint.tag}, {hint.since.isoformat()}"
    window += f" to {hint.until.isoformat()}"
    if len(candidates) > 1:
        refs = ", ".join(order.broker_ref for order in candidates)
        return Review(f"{len(candidates)} orders match {window}: {refs}")
    if not candidates:
        return _no_candidate(run, intent, hint, window)
    order = candidates[0]
    fills = tuple(fill for fill in run.fills if fill.order_ref == order.broker_ref)
    evidence = Evidence(
        source="candidates",
        observed_at=run.broker_time,
        broker_ref=order.broker_ref,
        detail=f"the one order matching {window}: {order.broker_ref}, {order.status}"
        + (f"; fills {describe_fills(fills)}" if fills else ""),
        heuristic=True,
    )
    run.claimed.add(order.broker_ref)
    if fills:
        return Complete(Accepted(broker_ref=order.broker_ref, fills=fills), evidence)
    if order.status is OrderStatus.CANCELLED:
        return RollBack(evidence)
    return Wait(f"order {order.broker_ref} matches but has not filled")


def _no_candidate(run: Pass, intent: Intent, hint: CandidateHint, window: str) -> Verdict:
    history = run.engine.broker.capabilities.history_lookback
    if hint.since < run.broker_time - history:
        return Review(f"the broker's history does not reach back to {hint.since.isoformat()}")
    if not run.lag_passed(intent.id):
        return Wait(f"no order matches {window} yet (visibility lag {run.lag})")
    return RollBack(
        Evidence(
            source="candidates",
            observed_at=run.broker_time,
            detail=f"no order matches {window}",
            heuristic=True,
        )
    )


async def _hint(run: Pass, intent: Intent, account: str) -> CandidateHint | None:
    payload = intent.payload
    since = intent.broker_time or run.broker_time - run.engine.broker.capabilities.history_lookback
    tag = intent.client_id[:8]
    if isinstance(payload, OpenRequest):
        return CandidateHint(
            account=account,
            symbol=payload.symbol,
            side=payload.side,
            quantity=payload.quantity,
            since=since,
            until=run.broker_time,
            tag=tag,
        )
    if not isinstance(payload, CloseRequest):  # pragma: no cover - only orders are matched
        return None
    held = await run.read(Position, payload.position_id)
    if held is None:
        return None
    return CandidateHint(
        account=account,
        symbol=held.instrument.symbol,
        side=held.side,
        quantity=payload.quantity if payload.quantity is not None else held.quantity,
        since=since,
        until=run.broker_time,
        tag=tag,
    )


async def _protection_evidence(run: Pass, intent: Intent, change: ProtectionChange) -> Verdict:
    """An amendment leaves no order: the broker's position itself is the evidence."""
    held = await run.read(Position, change.position_id)
    observed = run.broker_time
    if held is None or not held.is_open:
        return RollBack(
            Evidence(source="positions", observed_at=observed, detail="the position has closed")
        )
    at_broker = next((p for p in run.positions if p.broker_ref == held.broker_ref), None)
    if at_broker is None:
        return RollBack(
            Evidence(
                source="positions",
                observed_at=observed,
                broker_ref=held.broker_ref,
                detail=f"position {held.broker_ref} is not open at the broker",
            )
        )
    shown = f"stop-loss {at_broker.stop_loss}, take-profit {at_broker.take_profit}"
    evidence = Evidence(
        source="positions",
        observed_at=observed,
        broker_ref=held.broker_ref,
        detail=f"position {held.broker_ref} shows {shown}",
    )
    if (at_broker.stop_loss, at_broker.take_profit) == (change.stop_loss, change.take_profit):
        return Complete(Accepted(broker_ref=at_broker.broker_ref), evidence)
    if not run.lag_passed(intent.id):
        return Wait(f"position {held.broker_ref} does not show the change yet")
    return RollBack(evidence)
