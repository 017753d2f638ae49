"""The risk checks the engine runs inside the writer, before commit 1.

Inside the writer, so that what they count (the account's day, its
positions, every intent in flight) is exactly what the commit they guard
builds on: two opens checked in one batch see each other. The controls
themselves (limits, kill switches) are read afresh for every batch,
because operators change them from other processes.
"""

from __future__ import annotations

import decimal
from datetime import date
from decimal import Decimal
from uuid import UUID

from ledger import stops
from ledger.account import Account
from ledger.controls import KillSwitch, RiskControls, controls_id
from ledger.errors import InvariantViolated, Refused
from ledger.instruments import Instrument, Price, Quantity, Side
from ledger.intent import Intent
from ledger.limits import Control, Exposure, Limits, Trade, check_daily_loss, check_open
from ledger.money import Money
from ledger.position import Position
from ledger.writer import UnitOfWork


def controls(unit: UnitOfWork, account_id: UUID | None) -> RiskControls:
    """The controls of `account_id` (None: of every account), as this batch read them."""
    stored = unit.current(RiskControls, controls_id(account_id))
    return stored if stored is not None else RiskControls.start(account_id)


def kill_switch(unit: UnitOfWork, account_id: UUID) -> KillSwitch | None:
    """The kill switch that stops `account_id` opening, if one is engaged (its own first)."""
    return controls(unit, account_id).kill_switch or controls(unit, None).kill_switch


def refuse_if_killed(unit: UnitOfWork, account: Account, what: str) -> None:
    engaged = kill_switch(unit, account.id)
    if engaged is not None:
        raise Refused(
            Control.KILL_SWITCH,
            f"no {what} in account {account.name}: engaged by {engaged.actor} "
            f"at {engaged.engaged_at:%Y-%m-%d %H:%M:%S}Z ({engaged.reason})",
        )


def exposure(
    unit: UnitOfWork, account: Account, day: date, *, without: UUID | None = None
) -> Exposure:
    """What `account` uses of its limits on `day`, at worst case (`without` one position).

    Every intent in flight is taken to fill, and every open position and
    open in flight to lose down to its stop-loss, fees included.
    """
    usage = account.usage_on(day)
    at_risk = Money.zero(account.currency)
    unbounded: list[str] = []
    # Only opens hold reservations: each one in flight may still open a position.
    for intent_id in account.reservations:
        intent = unit.get(Intent, intent_id)
        if intent is None:
            raise InvariantViolated(f"account {account.name} reserves for a missing intent")
        if intent.at_risk is None:
            unbounded.append(f"an open in flight (intent {intent_id})")
        else:
            at_risk += intent.at_risk
    for position_id in account.commitments:
        if position_id == without:
            continue
        held = unit.get(Position, position_id)
        if held is None or not held.is_open:
            raise InvariantViolated(f"account {account.name} commits funds to no open position")
        risk = position_risk(held, held.stop_loss)
        if risk is None:
            unbounded.append(f"position {position_id} ({held.side} {held.instrument.symbol})")
        else:
            at_risk += risk
    return Exposure(
        trades_today=usage.opened + len(account.reservations),
        open_positions=len(account.commitments) + len(account.reservations),
        loss_today=max(-usage.net_pnl, Money.zero(account.currency)),
        at_risk=at_risk,
        equity=account.total - usage.net_pnl,
        unbounded=tuple(unbounded),
    )


def position_risk(held: Position, stop: Decimal | None) -> Money | None:
    """What `held` can still lose with its stop-loss at `stop`; None when nothing bounds it."""
    return stops.risk_at(held.instrument, held.side, held.quantity, held.entry_price, stop)


def check_new_open(
    unit: UnitOfWork,
    account: Account,
    instrument: Instrument,
    side: Side,
    quantity: Quantity,
    entry: Price,
    stop: Decimal | None,
    day: date,
) -> Money | None:
    """Refuse an open the kill switch, the limits or the stop-loss rules forbid.

    `entry` is the worst price the open may fill at. Returns what the open
    puts at risk: its stop-loss distance and both fees, or without a stop
    what it could lose in all and the fee on the way in; None when nothing
    bounds that (a short without a stop).
    """
    refuse_if_killed(unit, account, "new opens")
    limits = controls(unit, account.id).limits
    stops.check_risk(instrument, side, quantity, entry, stop, limits=limits, total=account.total)
    held = stops.risk_at(instrument, side, quantity, entry, stop)
    at_risk = None if held is None else held + instrument.fee(quantity, entry)
    notional = Money.rounded(
        instrument.notional(quantity, entry), instrument.quote_currency, decimal.ROUND_UP
    )
    check_open(limits, exposure(unit, account, day), Trade(notional=notional, at_risk=at_risk))
    return at_risk


def check_stop_change(
    unit: UnitOfWork, account: Account, held: Position, stop: Decimal | None, day: date
) -> None:
    """Refuse moving `held`'s stop-loss to `stop` if that widens it past what is allowed.

    Tightening is always allowed, kill switch or not; widening (or
    removing) is a new risk, so the kill switch, the per-trade cap and the
    daily loss limits apply.
    """
    if not stops.widens(held.side, held.stop_loss, stop):
        return
    refuse_if_killed(unit, account, "widened stop-loss")
    limits: Limits = controls(unit, account.id).limits
    stops.check_risk(
        held.instrument,
        held.side,
        held.quantity,
        held.entry_price,
        stop,
        limits=limits,
        total=account.total,
    )
    check_daily_loss(
        limits,
        exposure(unit, account, day, without=held.id),
        position_risk(held, stop),
        f"position {held.id}",
    )
