"""The pending WAL view: every intent not yet completed, failed or rolled back.

These are the intents recovery must resolve (and, in `needs_review`,
an operator). An intent leaves the view with its terminal event.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

import msgspec

from ledger.account import AccountOpened
from ledger.errors import InvariantViolated
from ledger.events import Event
from ledger.intent import (
    IntentCompleted,
    IntentFailed,
    IntentNeedsReview,
    IntentRecorded,
    IntentResolvedByOperator,
    IntentRolledBack,
    IntentStatus,
    IntentSubmitted,
)
from projections.database import Database
from projections.names import name_of, names_table, remember
from projections.rows import Table
from projections.view import View


class PendingIntentRow(msgspec.Struct, frozen=True, kw_only=True):
    intent_id: UUID
    kind: str
    status: str
    account: str
    client_id: str
    recorded_at: datetime
    account_id: UUID
    epoch: int
    attempt: int
    reservation: Decimal | None
    currency: str | None
    """The reservation's currency, when it holds one."""
    reason: str | None
    """Why it awaits review, when it does."""
    updated_at: datetime


PENDING = Table("view_pending_intents", PendingIntentRow, ("intent_id",))
NAMES = names_table(PENDING.name)


class PendingView(View):
    """Intents in flight: pending, in progress, or awaiting an operator's review."""

    name = "pending"
    tables = (PENDING, NAMES)
    handles = frozenset(
        {
            AccountOpened,
            IntentRecorded,
            IntentSubmitted,
            IntentCompleted,
            IntentFailed,
            IntentRolledBack,
            IntentNeedsReview,
            IntentResolvedByOperator,
        }
    )

    def __init__(self, database: Database, *, generation: str = "", complete: bool = False) -> None:
        super().__init__(database, generation=generation, complete=complete)
        self.intents = self.rows(PENDING)
        self.names = self.rows(NAMES)

    def apply(self, event: Event) -> None:
        match event:
            case AccountOpened():
                remember(self.names, event)
            case IntentRecorded():
                reservation = event.reservation
                self.intents.put(
                    PendingIntentRow(
                        intent_id=event.originator_id,
                        kind=event.kind.value,
                        status=IntentStatus.PENDING.value,
                        account=name_of(self.names, event.account_id),
                        client_id=event.client_id,
                        recorded_at=event.recorded_at,
                        account_id=event.account_id,
                        epoch=event.epoch,
                        attempt=event.attempt,
                        reservation=None if reservation is None else reservation.amount,
                        currency=None if reservation is None else reservation.currency,
                        reason=None,
                        updated_at=event.recorded_at,
                    )
                )
            case IntentCompleted() | IntentFailed() | IntentRolledBack():
                self.intents.delete(event.originator_id)
            case IntentSubmitted():
                self._move(event, IntentStatus.IN_PROGRESS, None)
            case IntentNeedsReview():
                self._move(event, IntentStatus.NEEDS_REVIEW, event.reason)
            case IntentResolvedByOperator():
                if event.outcome.is_terminal:
                    self.intents.delete(event.originator_id)
                else:
                    self._move(event, event.outcome, None)

    def _move(self, event: Event, status: IntentStatus, reason: str | None) -> None:
        row = self.intents.get(event.originator_id)
        if row is None:
            raise InvariantViolated(f"{event.stored_name} of an intent not in flight: {event}")
        self.intents.put(
            msgspec.structs.replace(
                row, status=status.value, reason=reason, updated_at=event.recorded_at
            )
        )
