"""Instruments: what can be traded, in which steps, and what opening one costs."""

from __future__ import annotations

import decimal
import enum
from decimal import Decimal
from typing import NewType

import msgspec

from ledger.errors import InvalidValue, shown
from ledger.money import DECIMAL_PLACES_MAX, Money, currency, parse_decimal

# Prices and quantities are plain Decimals that went through an instrument's
# check; the distinct types keep a price from being passed as a quantity.
Price = NewType("Price", Decimal)
Quantity = NewType("Quantity", Decimal)


class Side(enum.StrEnum):
    """The direction of a position."""

    LONG = "long"
    SHORT = "short"

    @property
    def sign(self) -> int:
        return 1 if self is Side.LONG else -1


class Funding(enum.StrEnum):
    """How opening a position draws on the account's balance."""

    FULL = "full"
    """Paid in full: the notional leaves the balance (spot)."""
    MARGIN = "margin"
    """Margin: notional / leverage is held while the position is open (CFD, futures)."""
    STAKE = "stake"
    """A stake: the quantity is the amount staked (binary or multiplier contracts)."""


SYMBOL_LENGTH_MAX = 32


def validate_symbol(symbol: str) -> str:
    """`symbol` if it can name an instrument: 1-32 printable characters."""
    if not 1 <= len(symbol) <= SYMBOL_LENGTH_MAX or not symbol.isprintable():
        raise InvalidValue("symbol", f"{shown(symbol)} is not a symbol")
    return symbol


class Instrument(msgspec.Struct, frozen=True, kw_only=True):
    """A tradable symbol with its quote currency, steps and funding rule.

    The whole instrument is stored in a position's opening event, so a
    position can be replayed years later with the terms it was opened on.
    """

    symbol: str
    quote_currency: str
    price_tick: Decimal
    quantity_step: Decimal
    contract_size: Decimal = Decimal(1)
    funding: Funding = Funding.FULL
    leverage: Decimal = Decimal(1)
    """Margin: notional / leverage is held. Stake: the multiplier on the stake."""
    fee_rate: Decimal = Decimal(0)
    """What the venue charges on each fill, as a fraction of its notional."""

    def __post_init__(self) -> None:
        validate_symbol(self.symbol)
        currency(self.quote_currency, field="quote_currency")
        for field in ("price_tick", "quantity_step", "contract_size", "leverage"):
            value = parse_decimal(getattr(self, field), field=field, places=DECIMAL_PLACES_MAX)
            if value <= 0:
                raise InvalidValue(field, f"{value} must be positive")
        if self.funding is Funding.FULL and self.leverage != 1:
            raise InvalidValue("leverage", "an instrument paid in full has no leverage")
        rate = parse_decimal(self.fee_rate, field="fee_rate", places=DECIMAL_PLACES_MAX)
        if not 0 <= rate < 1:
            raise InvalidValue("fee_rate", f"{rate} is outside 0..1")

    def price(self, value: object, *, field: str = "price") -> Price:
        """Validate `value` as a price: positive and on the price tick."""
        number = self._on_step(value, self.price_tick, field)
        if number <= 0:
            raise InvalidValue(field, f"{number} must be positive")
        return Price(number)

    def quantity(self, value: object, *, field: str = "quantity") -> Quantity:
        """Validate `value` as an order quantity: positive and on the quantity step."""
        number = self._on_step(value, self.quantity_step, field)
        if number < 0:
            raise InvalidValue(field, f"{number} is negative")
        if number == 0:
            raise InvalidValue(field, "must be more than zero")
        return Quantity(number)

    @staticmethod
    def _on_step(value: object, step: Decimal, field: str) -> Decimal:
        places = max(0, -_exponent(step))
        number = parse_decimal(value, field=field, places=places)
        if number % step != 0:
            raise InvalidValue(field, f"{number} is not a multiple of {step}")
        return number

    def notional(self, quantity: Quantity, price: Price) -> Decimal:
        """The exact value of `quantity` at `price`, in the quote currency."""
        return quantity * price * self.contract_size

    def fee(self, quantity: Quantity, price: Price) -> Money:
        """The venue's fee on a fill of `quantity` at `price`, rounded up as venues round it."""
        return Money.rounded(
            self.notional(quantity, price) * self.fee_rate, self.quote_currency, decimal.ROUND_UP
        )

    def worst_fill(self, side: Side, quote: Price, slippage: Decimal) -> Price:
        """The worst price an opening market order may fill at: `slippage` past the quote.

        On the price tick, rounded away from the quote: an order sent with it
        as its protection price fills there or better, or is rejected.
        """
        worst = quote * (1 + side.sign * slippage)
        rounding = decimal.ROUND_CEILING if side is Side.LONG else decimal.ROUND_FLOOR
        return Price((worst / self.price_tick).to_integral_value(rounding) * self.price_tick)

    def funds_required(self, quantity: Quantity, price: Price) -> Money:
        """What opening `quantity` at `price` holds from the balance.

        Rounded up to the currency's places: a reservation that is a cent
        short could let an account spend money it does not have.
        """
        if self.funding is Funding.STAKE:
            amount = quantity * self.contract_size
        elif self.funding is Funding.MARGIN:
            amount = self.notional(quantity, price) / self.leverage
        else:
            amount = self.notional(quantity, price)
        return Money.rounded(amount, self.quote_currency, decimal.ROUND_UP)

    def pnl(self, side: Side, quantity: Quantity, entry: Price, exit_price: Price) -> Money:
        """Profit or loss of closing `quantity` opened at `entry` at `exit_price`.

        Rounded half-even to the currency's places; a stake's loss is capped
        at the stake, which is all a multiplier contract can lose.
        """
        amount = self._pnl(side, quantity, entry, exit_price)
        return Money.rounded(amount, self.quote_currency, decimal.ROUND_HALF_EVEN)

    def loss_at(self, side: Side, quantity: Quantity, entry: Price, exit_price: Price) -> Money:
        """What closing at `exit_price` would lose (zero for a gain), rounded up, never down.

        For risk limits: a loss rounded down could let a trade risk a
        fraction of a cent more than its cap.
        """
        amount = max(-self._pnl(side, quantity, entry, exit_price), Decimal(0))
        return Money.rounded(amount, self.quote_currency, decimal.ROUND_UP)

    def _pnl(self, side: Side, quantity: Quantity, entry: Price, exit_price: Price) -> Decimal:
        move = (exit_price - entry) * side.sign
        if self.funding is Funding.STAKE:
            stake = quantity * self.contract_size
            return max(stake * self.leverage * move / entry, -stake)
        return move * quantity * self.contract_size


def _exponent(step: Decimal) -> int:
    exponent = step.normalize().as_tuple().exponent
    if not isinstance(exponent, int):  # pragma: no cover - steps are validated finite
        raise InvalidValue("step", f"{step} is not finite")
    return exponent
