"""Commit 2: what the broker's answer, or evidence found for it later, does to the ledger.

The engine calls these when a write is answered; recovery calls them when
it finds the answer at the broker after a crash. Both run inside the
writer, on aggregates of one unit of work.

Fills are applied one at a time, each once: a position remembers the ids
of the fills it recorded, so a fill reported twice (a duplicate ack), or
seen again by a later reconciliation, changes nothing the second time.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import msgspec

from ledger import idempotency
from ledger.account import Account
from ledger.errors import IllegalTransition, InvalidValue, NotFound
from ledger.instruments import Instrument, Price, Quantity
from ledger.intent import (
    CloseRequest,
    Evidence,
    Intent,
    IntentStatus,
    OpenRequest,
    ProtectionChange,
)
from ledger.money import Money
from ledger.ports import Accepted, BrokerPosition, Fill, FillReason, Rejected
from ledger.position import CloseReason, Position, Provenance, position_id
from ledger.results import OperationResult
from ledger.writer import UnitOfWork

CLOSE_REASONS = {
    FillReason.ORDER: CloseReason.REQUESTED,
    FillReason.STOP_LOSS: CloseReason.STOP_LOSS,
    FillReason.TAKE_PROFIT: CloseReason.TAKE_PROFIT,
    FillReason.MANUAL: CloseReason.EXTERNAL,
    FillReason.EXTERNAL: CloseReason.EXTERNAL,
}


def load_intent(unit: UnitOfWork, intent_id: UUID) -> tuple[Intent, Account]:
    intent = unit.get(Intent, intent_id)
    if intent is None:
        raise NotFound(f"no intent {intent_id}")
    account = unit.get(Account, intent.account_id)
    if account is None:  # pragma: no cover - commit 1 stored it with its account
        raise NotFound(f"account of intent {intent_id}")
    return intent, account


def fail(unit: UnitOfWork, intent_id: UUID, rejected: Rejected, now: datetime) -> OperationResult:
    """The broker refused: the intent fails and its reservation is released."""
    intent, account = load_intent(unit, intent_id)
    intent.fail(
        rejected.reason,
        recorded_at=now,
        evidence=Evidence(source="submit", observed_at=now, detail=rejected.reason),
    )
    _release(account, intent, now)
    result = OperationResult(
        intent_id=intent.id,
        kind=intent.kind,
        status=intent.status.value,
        client_id=intent.client_id,
        reason=rejected.reason,
    )
    idempotency.answer(unit, intent, result, now)
    return result


def roll_back(unit: UnitOfWork, intent_id: UUID, evidence: Evidence, now: datetime) -> None:
    """The broker never saw the intent: it is rolled back and its reservation released."""
    intent, account = load_intent(unit, intent_id)
    intent.roll_back(evidence, recorded_at=now)
    _release(account, intent, now)


def complete(
    unit: UnitOfWork,
    intent_id: UUID,
    accepted: Accepted,
    evidence: Evidence,
    now: datetime,
    instrument_of: Callable[[str], Instrument],
) -> OperationResult:
    """The broker did it: record its fills, then complete the intent with `evidence`."""
    intent, account = load_intent(unit, intent_id)
    result = _carry_out(unit, intent, account, accepted, now, instrument_of)
    intent.complete(evidence, recorded_at=now)
    idempotency.answer(unit, intent, result, now)
    return result


def resolve_by_operator(
    unit: UnitOfWork,
    intent_id: UUID,
    outcome: IntentStatus,
    *,
    actor: str,
    reason: str,
    accepted: Accepted | None,
    now: datetime,
    instrument_of: Callable[[str], Instrument],
) -> None:
    """An operator decides an intent under review: completed (with the broker's fills) or not."""
    intent, account = load_intent(unit, intent_id)
    broker_ref = None
    if outcome is IntentStatus.COMPLETED:
        if accepted is None:
            raise InvalidValue("outcome", "completing an intent needs the broker's order")
        _carry_out(unit, intent, account, accepted, now, instrument_of)
        broker_ref = accepted.broker_ref
    else:
        _release(account, intent, now)
    intent.resolve_by_operator(
        outcome, actor=actor, reason=reason, recorded_at=now, broker_ref=broker_ref
    )


def _carry_out(
    unit: UnitOfWork,
    intent: Intent,
    account: Account,
    accepted: Accepted,
    now: datetime,
    instrument_of: Callable[[str], Instrument],
) -> OperationResult:
    """What an accepted intent does to positions and the account."""
    fills = list({fill.fill_id: fill for fill in accepted.fills}.values())
    result = OperationResult(
        intent_id=intent.id,
        kind=intent.kind,
        status="completed",
        client_id=intent.client_id,
        broker_ref=accepted.broker_ref,
    )
    payload = intent.payload
    if isinstance(payload, OpenRequest):
        result = _opened(unit, intent, account, payload, fills, now, instrument_of(payload.symbol))
    elif isinstance(payload, CloseRequest):
        result = _closed(unit, intent, account, payload, fills, now, result)
    elif isinstance(payload, ProtectionChange):
        held = open_position(unit, payload.position_id)
        stop_loss, take_profit = payload.levels_after(held.stop_loss, held.take_profit)
        held.change_protection(
            as_price(stop_loss),
            as_price(take_profit),
            "requested",
            recorded_at=now,
            intent_id=intent.id,
        )
        result = msgspec.structs.replace(result, position_id=held.id)
    _release(account, intent, now)
    return msgspec.structs.replace(result, broker_ref=accepted.broker_ref)


def describe_fills(fills: Sequence[Fill]) -> str:
    """The fills as evidence text: id, quantity and price of each."""
    return ", ".join(f"{fill.fill_id}: {fill.quantity} at {fill.price}" for fill in fills)


def record_fill(
    account: Account,
    held: Position,
    fill: Fill,
    now: datetime,
    *,
    intent_id: UUID | None = None,
) -> Money | None:
    """Apply one broker fill of `held` not recorded yet; returns the P&L of a closing fill."""
    if fill.fill_id in held.fill_ids:
        return None
    instrument = held.instrument
    quantity = instrument.quantity(fill.quantity)
    price = instrument.price(fill.price)
    if fill.opens:
        held.increase(
            quantity,
            price,
            fill.fill_id,
            recorded_at=now,
            venue_time=fill.time,
            intent_id=intent_id,
        )
        account.commit(
            held.id,
            instrument.funds_required(quantity, price),
            recorded_at=now,
            venue_time=fill.time,
        )
        _charge(account, fill, held.id, intent_id, now)
        return None
    committed = account.commitments.get(held.id, Money.zero(account.currency))
    # A partial close frees its share of the commitment, rounded down, as brokers do.
    released = (
        committed
        if quantity == held.quantity
        else Money.rounded(
            committed.amount * quantity / held.quantity, account.currency, decimal.ROUND_DOWN
        )
    )
    pnl = held.close(
        quantity,
        price,
        recorded_at=now,
        reason=CLOSE_REASONS[fill.reason],
        venue_time=fill.time,
        intent_id=intent_id,
        broker_ref=fill.order_ref,
        fill_id=fill.fill_id,
        pnl=fill.pnl,
    )
    account.realise_pnl(
        held.id, pnl, released, recorded_at=now, venue_time=fill.time, intent_id=intent_id
    )
    _charge(account, fill, held.id, intent_id, now)
    return pnl


def adopt(
    unit: UnitOfWork,
    account: Account,
    position: UUID,
    at_broker: BrokerPosition,
    opening: Sequence[Fill],
    instrument: Instrument,
    now: datetime,
) -> Position:
    """Record a position the broker holds and the ledger never opened (provenance adopted).

    With the broker's fills of it, the position is rebuilt fill by fill, so
    its later fills are recognised; without them, from the broker's figures.
    """
    first = opening[0] if opening else None
    quantity = instrument.quantity(first.quantity if first else at_broker.quantity)
    price = Price(first.price if first else at_broker.entry_price)
    held = Position.open(
        position,
        account_id=account.id,
        instrument=instrument,
        side=at_broker.side,
        quantity=quantity,
        entry_price=price,
        recorded_at=now,
        venue_time=first.time if first else at_broker.opened_at,
        stop_loss=as_price(at_broker.stop_loss),
        take_profit=as_price(at_broker.take_profit),
        broker_ref=at_broker.broker_ref,
        client_id=at_broker.client_id,
        provenance=Provenance.ADOPTED,
        fill_id=first.fill_id if first else None,
    )
    unit.add(held)
    account.commit(held.id, instrument.funds_required(quantity, price), recorded_at=now)
    if first is not None:
        _charge(account, first, held.id, None, now)
    for fill in opening[1:]:
        record_fill(account, held, fill, now)
    return held


def open_position(unit: UnitOfWork, position: UUID) -> Position:
    held = unit.get(Position, position)
    if held is None:
        raise NotFound(f"no position {position}")
    if not held.is_open:
        raise IllegalTransition(f"position {position} is closed")
    return held


def _opened(
    unit: UnitOfWork,
    intent: Intent,
    account: Account,
    request: OpenRequest,
    fills: list[Fill],
    now: datetime,
    instrument: Instrument,
) -> OperationResult:
    if not fills:
        raise InvalidValue("fills", "an acceptance without a fill cannot open anything")
    first = fills[0]
    quantity = instrument.quantity(first.quantity)
    price = instrument.price(first.price)
    position = Position.open(
        position_id(intent.id),
        account_id=account.id,
        instrument=instrument,
        side=request.side,
        quantity=quantity,
        entry_price=price,
        recorded_at=now,
        venue_time=first.time,
        stop_loss=as_price(request.stop_loss),
        take_profit=as_price(request.take_profit),
        broker_ref=first.position_ref,
        client_id=intent.client_id,
        intent_id=intent.id,
        fill_id=first.fill_id,
    )
    unit.add(position)
    account.settle(
        intent.id,
        position.id,
        instrument.funds_required(quantity, price),
        recorded_at=now,
        venue_time=first.time,
    )
    _charge(account, first, position.id, intent.id, now)
    for fill in fills[1:]:
        record_fill(account, position, fill, now, intent_id=intent.id)
    return OperationResult(
        intent_id=intent.id,
        kind=intent.kind,
        status="completed",
        client_id=intent.client_id,
        position_id=position.id,
        price=position.entry_price,
        quantity=position.quantity,
    )


def _closed(
    unit: UnitOfWork,
    intent: Intent,
    account: Account,
    request: CloseRequest,
    fills: list[Fill],
    now: datetime,
    result: OperationResult,
) -> OperationResult:
    held = unit.get(Position, request.position_id)
    if held is None:
        raise NotFound(f"no position {request.position_id}")
    if not fills:
        raise InvalidValue("fills", "an acceptance without a fill cannot close anything")
    pnl = Money.zero(account.currency)
    quantity = Quantity(Decimal(0))
    total = Decimal(0)
    for fill in fills:
        if not held.is_open:
            break
        realised = record_fill(account, held, fill, now, intent_id=intent.id)
        if realised is not None:
            pnl += realised
            quantity = Quantity(quantity + fill.quantity)
            total += fill.quantity * fill.price
    price = None if not quantity else total / quantity
    return msgspec.structs.replace(
        result, position_id=held.id, price=price, quantity=quantity, pnl=pnl
    )


def _charge(
    account: Account, fill: Fill, position: UUID, intent_id: UUID | None, now: datetime
) -> None:
    if not fill.fee.is_zero:
        account.charge_fee(
            fill.fee,
            "trading fee",
            recorded_at=now,
            venue_time=fill.time,
            intent_id=intent_id,
            position_id=position,
        )


def _release(account: Account, intent: Intent, now: datetime) -> None:
    """Free what the intent still holds (a settled opening holds nothing any more)."""
    if intent.id in account.reservations:
        account.release_reservation(intent.id, recorded_at=now)


def as_price(value: Decimal | None) -> Price | None:
    return None if value is None else Price(value)
