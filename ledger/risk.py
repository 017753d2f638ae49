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
from ledger.errors import Refused
from ledger.instruments import Instrument, Price, Quantity, Side
from ledger.intent import Intent
from ledger.limits import Control, Exposure, Limits, Trade, check_open
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


def exposure(unit: UnitOfWork, account: Account, day: date) -> Exposure:
    """What `account` uses of its limits on `day`, every intent in flight taken to fill."""
    usage = account.usage_on(day)
    # Only opens hold reservations: each one in flight may still open a position.
    in_flight = [unit.get(Intent, intent_id) for intent_id in account.reservations]
    at_risk = Money.zero(account.currency)
    for intent in in_flight:
        if intent is None:
            continue
        worst = intent.reservation if intent.at_risk is None else intent.at_risk
        if worst is not None:
            at_risk += worst
    return Exposure(
        trades_today=usage.opened + len(in_flight),
        open_positions=len(account.commitments) + len(in_flight),
        loss_today=max(-usage.net_pnl, Money.zero(account.currency)),
        at_risk=at_risk,
        equity=account.total - usage.net_pnl,
    )


def check_new_open(
    unit: UnitOfWork,
    account: Account,
    instrument: Instrument,
    side: Side,
    quantity: Quantity,
    entry: Price,
    stop: Decimal | None,
    reservation: Money,
    day: date,
) -> Money:
    """Refuse an open the kill switch, the limits or the stop-loss rules forbid.

    `entry` is the worst price the open may fill at. Returns what the open
    puts at risk: its stop-loss distance and both fees, or without a stop,
    everything it reserves and the fee on the way in.
    """
    refuse_if_killed(unit, account, "new opens")
    limits = controls(unit, account.id).limits
    stops.check_risk(instrument, side, quantity, entry, stop, limits=limits, total=account.total)
    at_risk = (
        reservation + instrument.fee(quantity, entry)
        if stop is None
        else stops.worst_loss(instrument, side, quantity, entry, Price(stop))
    )
    notional = Money.rounded(
        instrument.notional(quantity, entry), instrument.quote_currency, decimal.ROUND_UP
    )
    check_open(limits, exposure(unit, account, day), Trade(notional=notional, at_risk=at_risk))
    return at_risk


def check_stop_change(
    unit: UnitOfWork, account: Account, held: Position, stop: Decimal | None
) -> None:
    """Refuse moving `held`'s stop-loss to `stop` if that widens it past what is allowed.

    Tightening is always allowed, kill switch or not; widening (or
    removing) is a new risk, so the kill switch and the per-trade cap apply.
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
