"""Every event type that can be in the store, by stored name."""

from __future__ import annotations

from ledger.account import ACCOUNT_EVENTS
from ledger.breaker import BREAKER_EVENTS
from ledger.controls import CONTROLS_EVENTS
from ledger.events import EventTypes
from ledger.idempotency import REQUEST_EVENTS
from ledger.intent import INTENT_EVENTS
from ledger.position import POSITION_EVENTS
from ledger.reconciliation import RECONCILIATION_EVENTS
from ledger.refusals import REFUSAL_EVENTS

EVENT_TYPES = EventTypes(
    ACCOUNT_EVENTS
    + POSITION_EVENTS
    + INTENT_EVENTS
    + RECONCILIATION_EVENTS
    + CONTROLS_EVENTS
    + REFUSAL_EVENTS
    + BREAKER_EVENTS
    + REQUEST_EVENTS
)
