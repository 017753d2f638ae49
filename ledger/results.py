"""What an operation answers its caller, once its outcome is durable."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

import msgspec

from ledger.intent import IntentKind
from ledger.money import Money


class OperationResult(msgspec.Struct, frozen=True, kw_only=True):
    """What an operation did, once its outcome is durable."""

    intent_id: UUID
    kind: IntentKind
    status: str
    client_id: str | None = None
    broker_ref: str | None = None
    position_id: UUID | None = None
    price: Decimal | None = None
    quantity: Decimal | None = None
    pnl: Money | None = None
    reason: str | None = None
    """Why the broker refused, when it did."""


class Closing(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One close a flatten sent: its result, or why it did not complete."""

    position_id: UUID
    result: OperationResult | None = None
    error: str | None = None
