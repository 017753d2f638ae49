"""Operations a risk control refused: recorded for the audit trail, one small stream each.

A refusal writes nothing else (no intent, no reservation); this record
says who asked for what, and which control said no. Each refusal is its
own stream so that recording one never loads, or contends with, another.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Self
from uuid import UUID, uuid4

from ledger.aggregate import Aggregate
from ledger.errors import IllegalTransition
from ledger.events import Event


class OperationRefused(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "refusal.recorded"
    account_id: UUID | None
    operation: str
    """What was asked: open, close, set-sl, set-tp."""
    subject: str
    """The symbol or position the operation named."""
    control: str
    detail: str


REFUSAL_EVENTS: tuple[type[Event], ...] = (OperationRefused,)


class Refusal(Aggregate):
    """One refused operation."""

    control: str

    @classmethod
    def record(
        cls,
        *,
        account_id: UUID | None,
        operation: str,
        subject: str,
        control: str,
        detail: str,
        recorded_at: datetime,
    ) -> Self:
        refusal = cls._blank(uuid4(), version=0)
        refusal._trigger(
            OperationRefused,
            recorded_at=recorded_at,
            account_id=account_id,
            operation=operation,
            subject=subject,
            control=control,
            detail=detail,
        )
        return refusal

    def _apply(self, event: Event) -> None:
        if not isinstance(event, OperationRefused):
            raise IllegalTransition(f"a refusal cannot apply {type(event).__name__}")
        self.control = event.control
