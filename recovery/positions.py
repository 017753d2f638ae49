"""Positions: the ledger's against the broker's, fill by fill.

- a broker fill of a ledger position the ledger has not recorded (a stop
  hit while the engine was down, a manual close, the rest of a partly
  filled order) is recorded as the broker reported it;
- a ledger position the broker no longer holds, with no fill to explain
  it, is flagged orphan;
- a quantity that still differs is flagged; stop-loss and take-profit
  that differ are handled by the protection policy;
- a broker position the ledger does not know is reported, and adopted
  (provenance adopted, flagged external) only when the operator applies.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from uuid import UUID, uuid5

from ledger import settlement
from ledger.account import Account, account_id
from ledger.client_ids import parse_client_id
from ledger.errors import LedgerError
from ledger.intent import CloseRequest, Intent, ProtectionChange
from ledger.ports import BrokerPosition, Fill
from ledger.position import POSITION_NAMESPACE, Position, PositionFlag
from ledger.reconciliation import Finding
from ledger.writer import UnitOfWork
from recovery.context import Apply, Pass, ProtectionPolicy


async def reconcile_positions(run: Pass, intents: list[Intent]) -> None:
    # A position is busy while an intent about it stays unsettled; one this
    # pass settles (or, planning, would settle) is compared like any other.
    busy = {
        intent.payload.position_id
        for intent in intents
        if isinstance(intent.payload, CloseRequest | ProtectionChange)
        and intent.id not in run.settled
    }
    pending = {intent.id for intent in intents} | run.engine.in_flight
    held_refs: set[str] = set()
    for held in await run.open_positions():
        if held.broker_ref is None:
            continue
        held_refs.add(held.broker_ref)
        if held.id not in busy:
            await _compare(run, held, pending)
    for at_broker in run.positions:
        if at_broker.broker_ref not in held_refs and not _is_pending(at_broker.client_id, pending):
            await _external(run, at_broker)
    for order in run.orders:
        # A working order of ours is the rest of a partial fill, recorded when
        # it fills; one that is not ours is someone else's, and reported.
        if parse_client_id(order.client_id or "") is None:
            detail = (
                f"working order {order.action} {order.side} {order.quantity} {order.symbol}, "
                f"{order.filled_quantity} filled, not placed by this ledger"
            )
            run.found(Finding.EXTERNAL, order.account, order.broker_ref, detail)


def _is_pending(client_id: str | None, pending: set[UUID]) -> bool:
    parts = parse_client_id(client_id or "")
    return parts is not None and parts.intent_id in pending


async def _compare(run: Pass, held: Position, pending: set[UUID]) -> None:
    account = await run.account_name(held.account_id)
    quantity = Decimal(held.quantity)
    for fill in run.fills:
        if (
            fill.position_ref != held.broker_ref
            or fill.account != account
            or fill.fill_id in held.fill_ids
            or _is_pending(fill.client_id, pending)
        ):
            continue
        quantity += fill.quantity if fill.opens else -fill.quantity
        await _record_fill(run, account, held.id, fill)
    if quantity <= 0:
        return
    at_broker = next((p for p in run.positions if p.broker_ref == held.broker_ref), None)
    if at_broker is None:
        detail = f"{held.broker_ref} is not open at the broker, and no fill says how it closed"
        await _flag(run, account, held, PositionFlag.ORPHAN, detail)
        return
    if at_broker.quantity != quantity:
        detail = f"ledger holds {quantity}, the broker {at_broker.quantity}"
        await _flag(run, account, held, PositionFlag.QUANTITY_MISMATCH, detail)
    else:
        await _clear(run, held, PositionFlag.QUANTITY_MISMATCH)
    levels = run.planned_levels.get(held.id, (held.stop_loss, held.take_profit))
    if (at_broker.stop_loss, at_broker.take_profit) != levels:
        await _protection(run, account, held, at_broker, levels)
    else:
        await _clear(run, held, PositionFlag.PROTECTION_MISMATCH)


async def _clear(run: Pass, held: Position, flag: PositionFlag) -> None:
    """Lower a flag the broker no longer bears out (no event if it is not raised)."""
    if not run.writes or flag not in held.flags:
        return
    now = run.engine.clock()

    def lower(unit: UnitOfWork) -> None:
        stored = unit.get(Position, held.id)
        if stored is not None and stored.is_open:
            stored.clear_flag(flag, "the broker agrees with the ledger again", recorded_at=now)

    await run.write(lower)


async def _record_fill(run: Pass, account: str, position: UUID, fill: Fill) -> None:
    verb = "opened" if fill.opens else "closed"
    detail = f"{fill.reason} fill {fill.fill_id}: {verb} {fill.quantity} at {fill.price}"
    if fill.pnl is not None:
        detail += f", P&L {fill.pnl}"
    item = run.found(Finding.FILL_RECORDED, account, position, detail)
    if not run.writes:
        run.note_unrecorded(account, [fill])
        return
    now = run.engine.clock()
    parts = parse_client_id(fill.client_id or "")

    def record(unit: UnitOfWork) -> None:
        held = unit.get(Position, position)
        ledger_account = None if held is None else unit.get(Account, held.account_id)
        if held is None or ledger_account is None or not held.is_open:
            return
        intent_id = None if parts is None else parts.intent_id
        settlement.record_fill(ledger_account, held, fill, now, intent_id=intent_id)

    await run.write(record)
    run.mark_applied(item)


async def _flag(run: Pass, account: str, held: Position, flag: PositionFlag, detail: str) -> None:
    finding = {
        PositionFlag.ORPHAN: Finding.ORPHAN,
        PositionFlag.QUANTITY_MISMATCH: Finding.QUANTITY_MISMATCH,
        PositionFlag.PROTECTION_MISMATCH: Finding.PROTECTION_MISMATCH,
        PositionFlag.EXTERNAL: Finding.EXTERNAL_ADOPTED,
    }[flag]
    item = run.found(finding, account, held.id, detail)
    if not run.writes or held.flags.get(flag) == detail:
        return
    now = run.engine.clock()

    def raise_flag(unit: UnitOfWork) -> bool:
        stored = unit.get(Position, held.id)
        if stored is None or not stored.is_open:
            return False  # closed meanwhile: nothing left to flag
        stored.flag(flag, detail, recorded_at=now)
        return True

    if await run.write(raise_flag):
        run.mark_applied(item)


def _stored(unit: UnitOfWork, position: UUID) -> Position:
    return settlement.open_position(unit, position)


async def _protection(
    run: Pass,
    account: str,
    held: Position,
    at_broker: BrokerPosition,
    levels: tuple[Decimal | None, Decimal | None],
) -> None:
    detail = (
        f"ledger stop-loss {levels[0]}, take-profit {levels[1]}; "
        f"broker stop-loss {at_broker.stop_loss}, take-profit {at_broker.take_profit}"
    )
    already = held.flags.get(PositionFlag.PROTECTION_MISMATCH) == detail
    if run.policy is ProtectionPolicy.FLAG or already:
        # A restore the broker refused once is not retried on every pass.
        await _flag(run, account, held, PositionFlag.PROTECTION_MISMATCH, detail)
        return
    adopting = run.policy is ProtectionPolicy.ADOPT
    finding = Finding.PROTECTION_ADOPTED if adopting else Finding.PROTECTION_RESTORED
    item = run.found(finding, account, held.id, detail)
    if not run.writes:
        return
    try:
        if adopting:
            await run.write(lambda unit: _adopt_levels(unit, held.id, at_broker, run.engine.clock))
        else:
            await run.engine.restore_protection(held.id, plan_id=run.report_id)
    except LedgerError:
        run.items.remove(item)
        await _flag(run, account, held, PositionFlag.PROTECTION_MISMATCH, detail)
        return
    run.mark_applied(item)


def _adopt_levels(
    unit: UnitOfWork, position: UUID, at_broker: BrokerPosition, clock: Callable[[], datetime]
) -> None:
    _stored(unit, position).change_protection(
        settlement.as_price(at_broker.stop_loss),
        settlement.as_price(at_broker.take_profit),
        "adopted from the broker",
        recorded_at=clock(),
    )


async def _external(run: Pass, at_broker: BrokerPosition) -> None:
    name = at_broker.account
    description = (
        f"{at_broker.side} {at_broker.quantity} {at_broker.symbol} at {at_broker.entry_price}, "
        f"stop-loss {at_broker.stop_loss}, take-profit {at_broker.take_profit}"
    )
    ledger_account = await run.read(Account, account_id(name))
    if ledger_account is None:
        run.found(Finding.UNKNOWN_ACCOUNT, name, at_broker.broker_ref, f"holds {description}")
        return
    ours = parse_client_id(at_broker.client_id or "")
    if ours is not None:
        # Opened by one of our intents, yet not open in the ledger: adopting
        # it as someone else's would hide a fault of ours. An operator decides.
        detail = f"{description}; opened by intent {ours.intent_id}, which the ledger holds closed"
        run.found(Finding.EXTERNAL, name, at_broker.broker_ref, detail)
        return
    item = run.found(Finding.EXTERNAL, name, at_broker.broker_ref, description)
    if run.apply is not Apply.ALL:
        return
    instrument = await run.engine.instrument(at_broker.symbol)
    opening = [
        fill
        for fill in run.fills
        if fill.position_ref == at_broker.broker_ref and fill.account == name
    ]
    position = uuid5(POSITION_NAMESPACE, f"adopted/{name}/{at_broker.broker_ref}")
    now = run.engine.clock()

    def adopt(unit: UnitOfWork) -> None:
        account = unit.get(Account, ledger_account.id)
        if account is None or unit.get(Position, position) is not None:
            return
        held = settlement.adopt(unit, account, position, at_broker, opening, instrument, now)
        held.flag(PositionFlag.EXTERNAL, f"adopted from the broker: {description}", recorded_at=now)

    await run.write(adopt)
    run.mark_applied(item)
