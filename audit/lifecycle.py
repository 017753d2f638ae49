"""One intent's whole lifecycle: what was asked, when it moved, what the broker said, what it wrote.

Read from the few streams involved, never the whole log: the intent's
own, its account's, and the position it names (a close or a change of
protection) or opened (an open: the position's id derives from the
intent's). The ledger events it produced are those of these streams that
name it, each with its place in the log.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from adapters.store import Store
from audit.reading import stream
from audit.records import Record, intent_of, record_of
from audit.state import folded
from ledger.account import AccountOpened
from ledger.errors import NotFound
from ledger.idempotency import request_id
from ledger.intent import (
    CloseRequest,
    Evidence,
    Intent,
    IntentKind,
    IntentRecorded,
    IntentResolvedByOperator,
    IntentStatus,
    IntentSubmitted,
    OpenRequest,
    Payload,
    ProtectionChange,
)
from ledger.money import Money
from ledger.origin import Origin
from ledger.position import position_id


class Resolution(msgspec.Struct, frozen=True, kw_only=True):
    """An operator's decision on an intent that awaited review."""

    actor: str
    reason: str
    outcome: IntentStatus
    broker_ref: str | None
    recorded_at: datetime


class Lifecycle(msgspec.Struct, frozen=True, kw_only=True):
    intent_id: UUID
    kind: IntentKind
    status: IntentStatus
    account: str
    account_id: UUID
    payload: Payload
    client_id: str
    attempt: int
    epoch: int
    reservation: Money | None
    broker_time: datetime | None
    """The broker's clock when the intent was recorded, when it was read."""
    origin: Origin | None
    """Who asked for it (a token's name, an operator) and its idempotency key, if it had one."""
    recorded_at: datetime
    submitted_at: datetime | None
    resolved_at: datetime | None
    recorded_to_submitted_seconds: float | None
    submitted_to_resolved_seconds: float | None
    recorded_to_resolved_seconds: float | None
    broker_ref: str | None
    evidence: list[Evidence]
    """Every piece of broker evidence, in the order it was recorded."""
    review_reason: str | None
    """Why it was sent to an operator, if it was."""
    resolution: Resolution | None
    steps: list[Record]
    """The intent's own events."""
    produced: list[Record]
    """The account and position events that name the intent, and the record of its
    idempotency key if it had one, in log order."""


def lifecycle(store: Store, intent_id: UUID) -> Lifecycle:
    """The lifecycle of intent `intent_id`; `NotFound` if the log holds no such intent."""
    own = list(stream(store, intent_id))
    if not own or not isinstance(own[0][1], IntentRecorded):
        raise NotFound(f"no intent {intent_id}")
    intent: Intent | None = None
    for _, event in own:
        intent = folded(Intent, intent, event)
    if intent is None:  # pragma: no cover - folded from at least one event
        raise NotFound(f"no intent {intent_id}")
    submitted_at = next((e.recorded_at for _, e in own if isinstance(e, IntentSubmitted)), None)
    resolution = next(
        (
            Resolution(
                actor=e.actor,
                reason=e.reason,
                outcome=e.outcome,
                broker_ref=e.broker_ref,
                recorded_at=e.recorded_at,
            )
            for _, e in own
            if isinstance(e, IntentResolvedByOperator)
        ),
        None,
    )
    account = str(intent.account_id)
    produced: list[Record] = []
    for involved in (intent.account_id, *_positions(intent)):
        for sequence, event in stream(store, involved):
            if isinstance(event, AccountOpened):
                account = event.name
            elif intent_of(event) == intent_id:
                produced.append(record_of(sequence, event))
    origin = intent.origin
    if origin is not None and origin.key is not None:
        # The record of its idempotency key, and the answer kept with it.
        produced.extend(
            record_of(sequence, event)
            for sequence, event in stream(store, request_id(origin.actor, origin.key))
        )
    return Lifecycle(
        intent_id=intent.id,
        kind=intent.kind,
        status=intent.status,
        account=account,
        account_id=intent.account_id,
        payload=intent.payload,
        client_id=intent.client_id,
        attempt=intent.attempt,
        epoch=intent.epoch,
        reservation=intent.reservation,
        broker_time=intent.broker_time,
        origin=intent.origin,
        recorded_at=intent.recorded_at,
        submitted_at=submitted_at,
        resolved_at=intent.resolved_at,
        recorded_to_submitted_seconds=_seconds(intent.recorded_at, submitted_at),
        submitted_to_resolved_seconds=_seconds(submitted_at, intent.resolved_at),
        recorded_to_resolved_seconds=_seconds(intent.recorded_at, intent.resolved_at),
        broker_ref=intent.broker_ref,
        evidence=list(intent.evidence),
        review_reason=intent.review_reason,
        resolution=resolution,
        steps=[record_of(sequence, event) for sequence, event in own],
        produced=sorted(produced, key=lambda record: record.sequence),
    )


def _positions(intent: Intent) -> tuple[UUID, ...]:
    """The position an intent opened or names, if any."""
    payload = intent.payload
    if isinstance(payload, OpenRequest):
        return (position_id(intent.id),)
    if isinstance(payload, CloseRequest | ProtectionChange):
        return (payload.position_id,)
    return ()


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds()
