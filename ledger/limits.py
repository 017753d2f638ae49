"""Per-account risk limits, and the check an open must pass against them.

Limits are values an operator sets (`ledger limits set`); `Exposure` is
what the account already uses today, counted at its worst case: every
intent still in flight is taken to fill, and every open position and open
in flight at risk of its whole stop-loss distance and the fees still to
pay. An open (or a stop moved away from the market) is allowed only if,
with it, every limit still holds; so no sequence of accepted operations
can end with a limit exceeded, whatever the broker answers later, except
by a stop that fills past its level (a gap).

The daily loss is the day's net realised P&L (fees included) when it is a
loss, plus everything at risk. Without a stop-loss, a short's loss has no
bound: under a daily loss limit, such a position or open refuses every
new open until it has a stop.
"""

from __future__ import annotations

import decimal
import enum
from decimal import Decimal

import msgspec

from ledger.errors import InvalidValue, Refused
from ledger.money import Money, parse_decimal

COUNT_MAX = 1_000_000
PERCENT_PLACES = 4
STOP_LOSS_MARGIN_DEFAULT = Decimal(95)
"""Percent of the per-trade risk a stop-loss may put at stake: a safety margin for slippage."""


class Control(enum.StrEnum):
    """Every control that can refuse an operation, by the name it is reported under."""

    KILL_SWITCH = "kill_switch"
    MAX_TRADES_PER_DAY = "max_trades_per_day"
    MAX_DAILY_LOSS = "max_daily_loss"
    MAX_DAILY_LOSS_PCT = "max_daily_loss_pct"
    MAX_OPEN_POSITIONS = "max_open_positions"
    MAX_POSITION_NOTIONAL = "max_position_notional"
    RISK_PER_TRADE = "risk_per_trade_pct"
    STOP_LOSS_REQUIRED = "stop_loss_required"
    STOP_LOSS_SIDE = "stop_loss_side"
    CIRCUIT_BREAKER = "circuit_breaker"
    STALE_QUOTE = "stale_quote"
    MARKET_CLOSED = "market_closed"


class Limits(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An account's limits; None: no limit of that kind."""

    max_trades_per_day: int | None = None
    max_daily_loss: Money | None = None
    max_daily_loss_pct: Decimal | None = None
    """Percent of the account's total, less what it realised today (deposits count at once)."""
    max_open_positions: int | None = None
    max_position_notional: Money | None = None
    risk_per_trade_pct: Decimal | None = None
    """Percent of the account's total one stop-loss may put at stake."""
    require_stop_loss: bool = False
    stop_loss_margin_pct: Decimal = STOP_LOSS_MARGIN_DEFAULT

    def risk_cap(self, total: Money) -> Money | None:
        """The most one open's stop-loss may lose, or None without a per-trade limit."""
        if self.risk_per_trade_pct is None:
            return None
        share = self.risk_per_trade_pct * self.stop_loss_margin_pct / Decimal(10_000)
        # Rounded down: a cap a cent too high would let a trade risk more than allowed.
        return Money.rounded(total.amount * share, total.currency, decimal.ROUND_DOWN)


def count(value: object, field: str) -> int:
    """A limit that counts: a whole number in 0..COUNT_MAX."""
    number = parse_decimal(value, field=field, places=0)
    if not 0 <= number <= COUNT_MAX:
        raise InvalidValue(field, f"{number} is outside 0..{COUNT_MAX}")
    return int(number)


def percent(value: object, field: str) -> Decimal:
    """A limit in percent: more than 0, at most 100, at most PERCENT_PLACES places."""
    number = parse_decimal(value, field=field, places=PERCENT_PLACES).normalize()
    if not 0 < number <= 100:
        raise InvalidValue(field, f"{number} is outside (0, 100]")
    # normalize() writes 90 as 9E+1: a whole percent is kept as the integer it is.
    return number.quantize(Decimal(1)) if number == number.to_integral_value() else number


class Exposure(msgspec.Struct, frozen=True, kw_only=True):
    """What an account uses of its limits now, intents in flight counted at their worst case."""

    trades_today: int
    open_positions: int
    loss_today: Money
    """Realised losses and fees today, net of realised gains; never below zero."""
    at_risk: Money
    """What the open positions and the opens in flight could still lose, at their stops."""
    equity: Money
    """The account's total without today's realised P&L: what daily loss percentages are of."""
    unbounded: tuple[str, ...] = ()
    """Positions and opens in flight whose loss nothing bounds (a short without a stop)."""


class Trade(msgspec.Struct, frozen=True, kw_only=True):
    """What a new open would add."""

    notional: Money
    at_risk: Money | None
    """None: nothing bounds its loss."""


def check_open(limits: Limits, exposure: Exposure, trade: Trade) -> None:
    """Refuse (`Refused`, naming the control) an open that would break a limit."""
    if limits.max_trades_per_day is not None and exposure.trades_today >= limits.max_trades_per_day:
        raise Refused(
            Control.MAX_TRADES_PER_DAY,
            f"{exposure.trades_today} trades today or in flight, limit {limits.max_trades_per_day}",
        )
    if limits.max_open_positions is not None and (
        exposure.open_positions >= limits.max_open_positions
    ):
        raise Refused(
            Control.MAX_OPEN_POSITIONS,
            f"{exposure.open_positions} positions open or in flight, "
            f"limit {limits.max_open_positions}",
        )
    if limits.max_position_notional is not None and trade.notional > limits.max_position_notional:
        raise Refused(
            Control.MAX_POSITION_NOTIONAL,
            f"notional {trade.notional} is above the limit {limits.max_position_notional}",
        )
    check_daily_loss(limits, exposure, trade.at_risk, "this open")


def check_daily_loss(limits: Limits, exposure: Exposure, at_risk: Money | None, what: str) -> None:
    """Refuse adding `at_risk` (what `what` could lose; None: unbounded) past a daily loss limit."""
    caps: list[tuple[Control, Money, str]] = []
    if limits.max_daily_loss is not None:
        caps.append((Control.MAX_DAILY_LOSS, limits.max_daily_loss, ""))
    if limits.max_daily_loss_pct is not None:
        cap = Money.rounded(
            exposure.equity.amount * limits.max_daily_loss_pct / 100,
            exposure.equity.currency,
            decimal.ROUND_DOWN,
        )
        caps.append(
            (
                Control.MAX_DAILY_LOSS_PCT,
                cap,
                f" ({limits.max_daily_loss_pct}% of {exposure.equity})",
            )
        )
    for control, cap, basis in caps:
        if at_risk is None:
            raise Refused(control, f"{what} has no stop-loss: nothing bounds its loss by {cap}")
        if exposure.unbounded:
            raise Refused(
                control, f"{exposure.unbounded[0]}: nothing bounds its loss; give it a stop-loss"
            )
        worst = exposure.loss_today + exposure.at_risk + at_risk
        if worst > cap:
            raise Refused(
                control,
                f"lost {exposure.loss_today} today, {exposure.at_risk} at risk in open "
                f"positions and in flight, {at_risk} at risk in {what}: "
                f"more than the limit {cap}{basis}",
            )


LIMIT_NAMES = tuple(field for field in Limits.__struct_fields__)


def updated(limits: Limits, changes: dict[str, object], clear: list[str], currency: str) -> Limits:
    """`limits` with `changes` (text from the operator, validated here) and `clear`ed ones unset.

    Raises `InvalidValue` naming the first bad value; nothing to change is an error too.
    """
    if not changes and not clear:
        raise InvalidValue("limits", "nothing to set: give at least one limit or --clear")
    for name in clear:
        if name not in LIMIT_NAMES:
            raise InvalidValue(
                "clear", f"{name!r} is not a limit (known: {', '.join(LIMIT_NAMES)})"
            )
        if name in changes:
            raise InvalidValue(name, "is both set and cleared")
    values: dict[str, object] = {name: getattr(limits, name) for name in LIMIT_NAMES}
    for name in clear:
        values[name] = getattr(Limits(), name)
    for name, value in changes.items():
        values[name] = _parsed(name, value, currency)
    return Limits(**values)  # type: ignore[arg-type]


def _parsed(name: str, value: object, currency: str) -> object:
    if name in {"max_trades_per_day", "max_open_positions"}:
        return count(value, name)
    if name in {"max_daily_loss", "max_position_notional"}:
        return Money.parse(value, currency, field=name, positive=True)
    if name in {"max_daily_loss_pct", "risk_per_trade_pct", "stop_loss_margin_pct"}:
        return percent(value, name)
    if name == "require_stop_loss" and isinstance(value, bool):
        return value
    raise InvalidValue(name, f"{value!r} is not a value for {name}")
