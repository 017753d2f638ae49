"""The stop-loss fail-safe: where a stop may lie, and how much it may put at stake.

- A stop lies on the protective side of the market: below the bid for a
  long (which sells at the bid), above the ask for a short. A stop on the
  other side would fire at once, or never protect.
- What the stop would lose, from the entry price, exactly, with the
  instrument's contract size, rounded up to the currency, plus the
  venue's fees on the way in and out, must stay within the account's
  per-trade risk (times its safety margin). For an open, the entry is the
  worst price its order may fill at (its protection price), not the
  quote: the fill can be worse than the quote, never worse than that.
- Moving a stop closer to the market (tightening) is always allowed;
  moving it away (widening), or removing it, is checked again against
  the cap, and removing it is refused where stops are required.
"""

from __future__ import annotations

from decimal import Decimal

from ledger.errors import Refused
from ledger.instruments import Funding, Instrument, Price, Quantity, Side
from ledger.limits import Control, Limits
from ledger.money import Money
from ledger.ports import Quote


def check_side(side: Side, stop: Decimal, quote: Quote) -> None:
    """Refuse a stop that is not on the protective side of the market."""
    if side is Side.LONG and stop >= quote.bid:
        raise Refused(
            Control.STOP_LOSS_SIDE, f"a long's stop-loss {stop} must be below the bid {quote.bid}"
        )
    if side is Side.SHORT and stop <= quote.ask:
        raise Refused(
            Control.STOP_LOSS_SIDE, f"a short's stop-loss {stop} must be above the ask {quote.ask}"
        )


def widens(side: Side, old: Decimal | None, new: Decimal | None) -> bool:
    """Whether moving the stop from `old` to `new` puts more at stake."""
    if new is None:
        return old is not None
    if old is None:
        return False  # from no stop at all, any stop protects more
    return new < old if side is Side.LONG else new > old


def worst_loss(
    instrument: Instrument, side: Side, quantity: Quantity, entry: Price, stop: Price
) -> Money:
    """What a position entered at `entry` loses when its stop fills: the move and both fees."""
    return instrument.fee(quantity, entry) + holding_risk(instrument, side, quantity, entry, stop)


def holding_risk(
    instrument: Instrument, side: Side, quantity: Quantity, entry: Price, stop: Price
) -> Money:
    """What a position held from `entry` can still lose to its stop: the move and the fee out."""
    return instrument.loss_at(side, quantity, entry, stop) + instrument.fee(quantity, stop)


def risk_at(
    instrument: Instrument, side: Side, quantity: Quantity, entry: Price, stop: Decimal | None
) -> Money | None:
    """What a position held from `entry` can still lose with its stop-loss at `stop`.

    With a stop: the move to it and the fee out. Without one: a stake at
    most its stake, a long at most its whole value (the price falling to
    zero, where no fee is left to pay); a short, nothing bounds (None).
    """
    if stop is not None:
        return holding_risk(instrument, side, quantity, entry, Price(stop))
    if instrument.funding is Funding.STAKE:
        return instrument.funds_required(quantity, entry)
    if side is Side.LONG:
        return instrument.loss_at(side, quantity, entry, Price(Decimal(0)))
    return None


def check_risk(
    instrument: Instrument,
    side: Side,
    quantity: Quantity,
    entry: Price,
    stop: Decimal | None,
    *,
    limits: Limits,
    total: Money,
) -> None:
    """Refuse a stop (or its absence) that puts more at stake than the per-trade cap."""
    if stop is None and limits.require_stop_loss:
        raise Refused(Control.STOP_LOSS_REQUIRED, "this account requires a stop-loss")
    cap = limits.risk_cap(total)
    if cap is None:
        return
    if stop is None:
        raise Refused(
            Control.RISK_PER_TRADE, f"without a stop-loss the loss is not bounded by {cap}"
        )
    loss = worst_loss(instrument, side, quantity, entry, Price(stop))
    if loss > cap:
        raise Refused(
            Control.RISK_PER_TRADE,
            f"the stop-loss {stop} would lose {loss}, more than {cap} "
            f"({limits.stop_loss_margin_pct}% of {limits.risk_per_trade_pct}% of {total})",
        )
