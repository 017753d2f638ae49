"""The Intent aggregate: the write-ahead entry recorded before a broker is called.

Lifecycle::

    pending ──► in_progress ──► completed | failed | rolled_back
       │             │
       └──────┬──────┘
              ▼
        needs_review ──(operator)──► completed | rolled_back

A pending intent may also fail (it was never sent) or be rolled back
(recovery found the broker never saw it). Completed, failed and rolled
back are terminal. Any other transition raises `IllegalTransition`.
"""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import ClassVar, Self
from uuid import UUID

import msgspec

from ledger.aggregate import Aggregate
from ledger.client_ids import client_id as derive_client_id
from ledger.errors import IllegalTransition, InvalidValue
from ledger.events import Event
from ledger.instruments import Side
from ledger.money import Money
from ledger.origin import Origin


class IntentKind(enum.StrEnum):
    BALANCE_DEDUCT = "BALANCE_DEDUCT"
    BALANCE_ADD = "BALANCE_ADD"
    POSITION_OPEN = "POSITION_OPEN"
    POSITION_CLOSE = "POSITION_CLOSE"
    POSITION_UPDATE = "POSITION_UPDATE"
    TRADE_EXECUTE = "TRADE_EXECUTE"


class IntentStatus(enum.StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    NEEDS_REVIEW = "needs_review"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({IntentStatus.COMPLETED, IntentStatus.FAILED, IntentStatus.ROLLED_BACK})

ALLOWED: dict[IntentStatus, frozenset[IntentStatus]] = {
    IntentStatus.PENDING: frozenset(
        {
            IntentStatus.IN_PROGRESS,
            IntentStatus.FAILED,
            IntentStatus.ROLLED_BACK,
            IntentStatus.NEEDS_REVIEW,
        }
    ),
    IntentStatus.IN_PROGRESS: frozenset(
        {
            IntentStatus.COMPLETED,
            IntentStatus.FAILED,
            IntentStatus.ROLLED_BACK,
            IntentStatus.NEEDS_REVIEW,
        }
    ),
    IntentStatus.NEEDS_REVIEW: frozenset({IntentStatus.COMPLETED, IntentStatus.ROLLED_BACK}),
    IntentStatus.COMPLETED: frozenset(),
    IntentStatus.FAILED: frozenset(),
    IntentStatus.ROLLED_BACK: frozenset(),
}


# What each kind of intent asks for. Tagged, so the stored payload says what it is.


class BalanceChange(msgspec.Struct, frozen=True, kw_only=True, tag="balance_change"):
    amount: Money


class OpenRequest(msgspec.Struct, frozen=True, kw_only=True, tag="open"):
    symbol: str
    side: Side
    quantity: Decimal
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None


class CloseRequest(msgspec.Struct, frozen=True, kw_only=True, tag="close"):
    position_id: UUID
    quantity: Decimal | None = None
    """None closes everything that is open."""


class Levels(enum.StrEnum):
    """Which of a position's levels a protection change sets."""

    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    BOTH = "both"


class ProtectionChange(msgspec.Struct, frozen=True, kw_only=True, tag="protection"):
    position_id: UUID
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    sets: Levels = Levels.BOTH
    """The level this change sets; the other is carried as it was when it was asked for."""

    def levels_after(
        self, stop_loss: Decimal | None, take_profit: Decimal | None
    ) -> tuple[Decimal | None, Decimal | None]:
        """The levels once this change is done, from the ones the position has then.

        A take-profit change leaves the stop-loss as it is by then, not as it
        was when the change was asked for: a stop tightened meanwhile stays.
        """
        if self.sets is Levels.STOP_LOSS:
            return self.stop_loss, take_profit
        if self.sets is Levels.TAKE_PROFIT:
            return stop_loss, self.take_profit
        return self.stop_loss, self.take_profit


class TradeRequest(msgspec.Struct, frozen=True, kw_only=True, tag="trade"):
    symbol: str
    side: Side
    quantity: Decimal


Payload = BalanceChange | OpenRequest | CloseRequest | ProtectionChange | TradeRequest

PAYLOAD_OF_KIND: dict[IntentKind, type[Payload]] = {
    IntentKind.BALANCE_DEDUCT: BalanceChange,
    IntentKind.BALANCE_ADD: BalanceChange,
    IntentKind.POSITION_OPEN: OpenRequest,
    IntentKind.POSITION_CLOSE: CloseRequest,
    IntentKind.POSITION_UPDATE: ProtectionChange,
    IntentKind.TRADE_EXECUTE: TradeRequest,
}


class Evidence(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a broker said about an intent, when, and how it was matched."""

    source: str
    """How it was learnt: "submit", "lookup", "candidates" or "operator"."""
    observed_at: datetime
    broker_ref: str | None = None
    detail: str = ""
    heuristic: bool = False
    """True when matched by symbol/side/size/time rather than by client id."""


# Events ------------------------------------------------------------------------


class IntentRecorded(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "intent.recorded"
    kind: IntentKind
    account_id: UUID
    payload: Payload
    client_id: str
    attempt: int
    epoch: int
    reservation: Money | None = None
    broker_time: datetime | None = None
    """The broker's clock read before the write was sent: no order of this intent is older."""
    at_risk: Money | None = None
    """An open's worst-case loss (its stop-loss distance, else its reservation), for limits."""
    origin: Origin | None = None
    """Who asked for it (and the idempotency key they sent), when they said."""


class IntentSubmitted(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "intent.submitted"


class IntentCompleted(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "intent.completed"
    evidence: Evidence


class IntentFailed(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "intent.failed"
    reason: str
    evidence: Evidence | None = None


class IntentRolledBack(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "intent.rolled_back"
    evidence: Evidence


class IntentNeedsReview(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "intent.needs_review"
    reason: str
    evidence: Evidence | None = None


class IntentResolvedByOperator(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "intent.resolved_by_operator"
    actor: str
    reason: str
    outcome: IntentStatus
    broker_ref: str | None = None


INTENT_EVENTS: tuple[type[Event], ...] = (
    IntentRecorded,
    IntentSubmitted,
    IntentCompleted,
    IntentFailed,
    IntentRolledBack,
    IntentNeedsReview,
    IntentResolvedByOperator,
)


class Intent(Aggregate):
    """One operation the ledger means to carry out at a broker."""

    kind: IntentKind
    account_id: UUID
    payload: Payload
    client_id: str
    attempt: int
    epoch: int
    reservation: Money | None
    broker_time: datetime | None
    at_risk: Money | None
    origin: Origin | None
    status: IntentStatus
    evidence: list[Evidence]
    review_reason: str | None
    """Why it awaits an operator, while it does."""
    broker_ref: str | None
    recorded_at: datetime
    resolved_at: datetime | None

    @classmethod
    def record(
        cls,
        intent_id: UUID,
        *,
        kind: IntentKind,
        account_id: UUID,
        payload: Payload,
        epoch: int,
        recorded_at: datetime,
        attempt: int = 1,
        reservation: Money | None = None,
        broker_time: datetime | None = None,
        at_risk: Money | None = None,
        origin: Origin | None = None,
    ) -> Self:
        expected = PAYLOAD_OF_KIND[kind]
        if not isinstance(payload, expected):
            raise InvalidValue("payload", f"a {kind} intent carries {expected.__name__}")
        if reservation is not None and (reservation.is_negative or reservation.is_zero):
            raise InvalidValue("reservation", f"{reservation} must be more than zero")
        intent = cls._blank(intent_id, version=0)
        intent._trigger(
            IntentRecorded,
            recorded_at=recorded_at,
            kind=kind,
            account_id=account_id,
            payload=payload,
            client_id=derive_client_id(intent_id, epoch=epoch, attempt=attempt),
            attempt=attempt,
            epoch=epoch,
            reservation=reservation,
            broker_time=broker_time,
            at_risk=at_risk,
            origin=origin,
        )
        return intent

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    def submit(self, *, recorded_at: datetime) -> None:
        self._check_can_become(IntentStatus.IN_PROGRESS)
        self._trigger(IntentSubmitted, recorded_at=recorded_at)

    def complete(self, evidence: Evidence, *, recorded_at: datetime) -> None:
        self._check_can_become(IntentStatus.COMPLETED)
        self._trigger(IntentCompleted, recorded_at=recorded_at, evidence=evidence)

    def fail(self, reason: str, *, recorded_at: datetime, evidence: Evidence | None = None) -> None:
        self._check_can_become(IntentStatus.FAILED)
        self._trigger(IntentFailed, recorded_at=recorded_at, reason=reason, evidence=evidence)

    def roll_back(self, evidence: Evidence, *, recorded_at: datetime) -> None:
        self._check_can_become(IntentStatus.ROLLED_BACK)
        self._trigger(IntentRolledBack, recorded_at=recorded_at, evidence=evidence)

    def flag_for_review(
        self, reason: str, *, recorded_at: datetime, evidence: Evidence | None = None
    ) -> None:
        self._check_can_become(IntentStatus.NEEDS_REVIEW)
        self._trigger(IntentNeedsReview, recorded_at=recorded_at, reason=reason, evidence=evidence)

    def resolve_by_operator(
        self,
        outcome: IntentStatus,
        *,
        actor: str,
        reason: str,
        recorded_at: datetime,
        broker_ref: str | None = None,
    ) -> None:
        if self.status is not IntentStatus.NEEDS_REVIEW:
            raise IllegalTransition(f"intent {self.id} is {self.status}, not needs_review")
        self._check_can_become(outcome, by_operator=True)
        if not actor.strip() or not reason.strip():
            raise InvalidValue("reason", "an operator resolution names its actor and reason")
        self._trigger(
            IntentResolvedByOperator,
            recorded_at=recorded_at,
            actor=actor,
            reason=reason,
            outcome=outcome,
            broker_ref=broker_ref,
        )

    def _check_can_become(self, status: IntentStatus, *, by_operator: bool = False) -> None:
        # needs_review is left only through an operator's resolution: the
        # evidence was ambiguous once and must not be re-decided automatically.
        reviewing = self.status is IntentStatus.NEEDS_REVIEW and not by_operator
        if reviewing or status not in ALLOWED[self.status]:
            raise IllegalTransition(f"intent {self.id} cannot go from {self.status} to {status}")

    def _apply(self, event: Event) -> None:
        match event:
            case IntentRecorded():
                self.kind = event.kind
                self.account_id = event.account_id
                self.payload = event.payload
                self.client_id = event.client_id
                self.attempt = event.attempt
                self.epoch = event.epoch
                self.reservation = event.reservation
                self.broker_time = event.broker_time
                self.at_risk = event.at_risk
                self.origin = event.origin
                self.status = IntentStatus.PENDING
                self.evidence = []
                self.review_reason = None
                self.broker_ref = None
                self.recorded_at = event.recorded_at
                self.resolved_at = None
            case IntentSubmitted():
                self.status = IntentStatus.IN_PROGRESS
            case IntentCompleted():
                self._resolve(IntentStatus.COMPLETED, event, event.evidence)
            case IntentFailed():
                self._resolve(IntentStatus.FAILED, event, event.evidence)
            case IntentRolledBack():
                self._resolve(IntentStatus.ROLLED_BACK, event, event.evidence)
            case IntentNeedsReview():
                self.status = IntentStatus.NEEDS_REVIEW
                self.review_reason = event.reason
                if event.evidence is not None:
                    self.evidence.append(event.evidence)
            case IntentResolvedByOperator():
                self._resolve(event.outcome, event, None)
                if event.broker_ref is not None:
                    self.broker_ref = event.broker_ref
            case _:
                raise IllegalTransition(f"an intent cannot apply {type(event).__name__}")

    def _resolve(self, status: IntentStatus, event: Event, evidence: Evidence | None) -> None:
        self.status = status
        self.resolved_at = event.recorded_at
        if evidence is not None:
            self.evidence.append(evidence)
            self.broker_ref = evidence.broker_ref or self.broker_ref

    @classmethod
    def _create(cls, event: Event) -> Self:
        if not isinstance(event, IntentRecorded):
            raise IllegalTransition(f"an intent starts with intent.recorded, not {event!r}")
        return super()._create(event)
