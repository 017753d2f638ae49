"""One stored event as an auditor reads it: where it stands in the log, and what it says.

The payload is the event's own fields as plain values (Decimals and ids
as text, times in ISO 8601), without the envelope the record shows
beside it. Events hold facts about money and orders, never a credential,
so a record can be handed to anyone entitled to see the ledger.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from ledger.account import ACCOUNT_EVENTS
from ledger.breaker import BREAKER_EVENTS
from ledger.controls import CONTROLS_EVENTS
from ledger.events import Event
from ledger.idempotency import REQUEST_EVENTS
from ledger.intent import (
    INTENT_EVENTS,
    IntentCompleted,
    IntentFailed,
    IntentResolvedByOperator,
    IntentRolledBack,
)
from ledger.position import POSITION_EVENTS
from ledger.reconciliation import RECONCILIATION_EVENTS
from ledger.refusals import REFUSAL_EVENTS


class Kind(enum.StrEnum):
    """The kind of aggregate an event belongs to."""

    ACCOUNT = "account"
    POSITION = "position"
    INTENT = "intent"
    RECONCILIATION = "reconciliation"
    CONTROLS = "controls"
    REFUSAL = "refusal"
    BREAKER = "breaker"
    REQUEST = "request"


KIND_OF: dict[str, Kind] = {
    cls.stored_name: kind
    for kind, classes in (
        (Kind.ACCOUNT, ACCOUNT_EVENTS),
        (Kind.POSITION, POSITION_EVENTS),
        (Kind.INTENT, INTENT_EVENTS),
        (Kind.RECONCILIATION, RECONCILIATION_EVENTS),
        (Kind.CONTROLS, CONTROLS_EVENTS),
        (Kind.REFUSAL, REFUSAL_EVENTS),
        (Kind.BREAKER, BREAKER_EVENTS),
        (Kind.REQUEST, REQUEST_EVENTS),
    )
    for cls in classes
}
"""Stored name -> the kind of aggregate, for every event type the store can hold."""

INTENT_ENDS = (IntentCompleted, IntentFailed, IntentRolledBack, IntentResolvedByOperator)
"""The events after which an intent's stream never grows again."""

ENVELOPE = frozenset({"originator_id", "originator_version", "recorded_at", "venue_time"})


class Record(msgspec.Struct, frozen=True, kw_only=True):
    sequence: int
    """The event's place in the log (its notification id)."""
    recorded_at: datetime
    """When the ledger recorded it, by the ledger's clock."""
    venue_time: datetime | None
    """When it happened at the broker, by the broker's clock, when the broker said."""
    aggregate: Kind
    aggregate_id: UUID
    version: int
    """The event's number in its aggregate's stream."""
    type: str
    """The stored name, e.g. account.deposited."""
    payload: dict[str, Any]


def record_of(sequence: int, event: Event) -> Record:
    fields: dict[str, Any] = msgspec.to_builtins(event)
    return Record(
        sequence=sequence,
        recorded_at=event.recorded_at,
        venue_time=event.venue_time,
        aggregate=KIND_OF[event.stored_name],
        aggregate_id=event.originator_id,
        version=event.originator_version,
        type=event.stored_name,
        payload={name: value for name, value in fields.items() if name not in ENVELOPE},
    )


def intent_of(event: Event) -> UUID | None:
    """The intent an account or position event names, if it names one."""
    named = getattr(event, "intent_id", None)
    return named if isinstance(named, UUID) else None


def position_of(event: Event) -> UUID | None:
    """The position an account event names, if it names one."""
    named = getattr(event, "position_id", None)
    return named if isinstance(named, UUID) else None
