"""Money, and the parsing of every decimal that enters the ledger.

All money is `Decimal`. A value from outside (the CLI, an API, a broker)
passes through `parse_decimal` once, which either returns an exact value
with the allowed number of places or raises `InvalidValue` naming the
field. Nothing is ever rounded to make it fit.
"""

from __future__ import annotations

import decimal
import re
from decimal import Decimal
from typing import Self

import msgspec

from ledger.errors import CurrencyMismatch, InvalidValue, UnknownCurrency, shown

# Precision of every Decimal operation in the ledger: 34 digits, as in IEEE
# decimal128, far above any amount or product of amounts the limits admit.
PRECISION = 34

# The largest magnitude any amount, price or quantity may have: below 10**15
# (a quadrillion) leaves the product of two of them exact at PRECISION.
INTEGER_DIGITS_MAX = 15

# No quantity, price or currency has more places than this.
DECIMAL_PLACES_MAX = 18

# Exponents outside this range are refused before any arithmetic, so that
# input like "1e999999999" cannot make the quantisation itself expensive.
EXPONENT_ABSOLUTE_MAX = 40

# Longer text is not a number a person or a broker meant to send.
TEXT_LENGTH_MAX = 64

NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
NOT_FINITE = re.compile(r"[+-]?(?:s?nan|inf|infinity)", re.IGNORECASE | re.ASCII)


def install_decimal_traps() -> None:
    """Make mixing floats into Decimal arithmetic an error, in every thread.

    The default context is what each new thread starts from; the current
    context is this thread's. Both get the ledger's precision and traps, so
    a comparison or arithmetic with a float raises `FloatOperation` instead
    of quietly using a binary approximation of a price.
    """
    for context in (decimal.DefaultContext, decimal.getcontext()):
        context.prec = PRECISION
        context.traps[decimal.FloatOperation] = True
        context.traps[decimal.InvalidOperation] = True
        context.traps[decimal.DivisionByZero] = True
        context.traps[decimal.Overflow] = True


def parse_decimal(value: object, *, field: str, places: int) -> Decimal:
    """Return `value` as an exact Decimal with exactly `places` places.

    Accepts `Decimal`, `int` and numeric text. Refuses floats, booleans,
    NaN, infinities, negative zero, absurd exponents, magnitudes of
    10**INTEGER_DIGITS_MAX or more, and values with more significant places
    than `places`. Trailing zeros beyond `places` ("1.500" for two places)
    are not a loss of information and are accepted.
    """
    if not 0 <= places <= DECIMAL_PLACES_MAX:
        raise InvalidValue(field, f"{places} decimal places is outside 0..{DECIMAL_PLACES_MAX}")
    number = _to_decimal(value, field)
    if not number.is_finite():
        raise InvalidValue(field, f"{value!r} is not a finite number")
    if number.is_zero() and number.is_signed():
        raise InvalidValue(field, "negative zero is not a value")
    exponent = number.as_tuple().exponent
    if not isinstance(exponent, int) or abs(exponent) > EXPONENT_ABSOLUTE_MAX:
        raise InvalidValue(field, f"{value!r} has an exponent out of range")
    if not number.is_zero() and number.adjusted() >= INTEGER_DIGITS_MAX:
        raise InvalidValue(
            field, f"{value!r} is out of range (at most {INTEGER_DIGITS_MAX} digits)"
        )
    quantum = Decimal(1).scaleb(-places)
    exact = number.quantize(quantum, rounding=decimal.ROUND_DOWN)
    if exact != number:
        raise InvalidValue(field, f"{value!r} has more than {places} decimal places")
    return exact


def _to_decimal(value: object, field: str) -> Decimal:
    # bool is an int subclass; True is never meant as an amount.
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        kind = type(value).__name__
        hint = " (give money as text, never as a float)" if isinstance(value, float) else ""
        raise InvalidValue(field, f"a {kind} is not accepted{hint}")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    text = value.strip()
    if len(text) <= TEXT_LENGTH_MAX and NOT_FINITE.fullmatch(text):
        raise InvalidValue(field, f"{value!r} is not a finite number")
    # Decimal() alone would also take "1_000", Arabic-Indic or full-width
    # digits: text from outside must be plain ASCII decimal notation.
    if len(text) > TEXT_LENGTH_MAX or not NUMBER.fullmatch(text):
        raise InvalidValue(field, f"{shown(value)} is not a number")
    return Decimal(text)


class Currency(msgspec.Struct, frozen=True, kw_only=True):
    """A currency and the number of places its amounts may have."""

    code: str
    places: int


# The currencies the ledger knows. Places are those of the smallest unit a
# venue settles in (USDT is carried to six places on most exchanges).
CURRENCIES: dict[str, Currency] = {
    currency.code: currency
    for currency in (
        Currency(code="USD", places=2),
        Currency(code="EUR", places=2),
        Currency(code="GBP", places=2),
        Currency(code="CHF", places=2),
        Currency(code="AUD", places=2),
        Currency(code="CAD", places=2),
        Currency(code="JPY", places=0),
        Currency(code="USDT", places=6),
        Currency(code="USDC", places=6),
        Currency(code="BTC", places=8),
        Currency(code="ETH", places=8),
    )
}


def currency(code: str, *, field: str = "currency") -> Currency:
    """Return the catalogued currency for `code`, or raise `UnknownCurrency`."""
    try:
        return CURRENCIES[code]
    except KeyError:
        raise UnknownCurrency(field, f"{shown(code)} is not a known currency") from None


class Money(msgspec.Struct, frozen=True, kw_only=True):
    """An exact amount in one currency, never with more places than the currency has.

    The amount may be negative (a loss, a debit); it is never NaN, infinite
    or negative zero. Construction checks all of this, on the way in and
    when decoded from the store.
    """

    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Decimal):
            # msgspec does not type-check keyword arguments, so a float
            # passed by mistake would otherwise live on inside a Money.
            raise InvalidValue("amount", f"a {type(self.amount).__name__} is not accepted")
        places = currency(self.currency).places
        exact = parse_decimal(self.amount, field="amount", places=places)
        # Canonical form: always exactly the currency's places (10 -> 10.00).
        # This is exact, never a rounding: parse_decimal refuses lost digits.
        msgspec.structs.force_setattr(self, "amount", exact)

    @classmethod
    def parse(
        cls, value: object, currency_code: str, *, field: str = "amount", positive: bool = False
    ) -> Self:
        """Validate `value` as an amount of `currency_code` (see `parse_decimal`).

        With `positive`, zero and negative amounts are refused too (a deposit,
        a withdrawal, a fee is always more than zero).
        """
        places = currency(currency_code).places
        money = cls(amount=parse_decimal(value, field=field, places=places), currency=currency_code)
        if positive and money.amount <= 0:
            raise InvalidValue(field, f"{money} must be more than zero")
        return money

    @classmethod
    def zero(cls, currency_code: str) -> Self:
        places = currency(currency_code).places
        return cls(amount=Decimal(0).scaleb(-places), currency=currency_code)

    @classmethod
    def rounded(cls, amount: Decimal, currency_code: str, rounding: str) -> Self:
        """Money from the result of a computation, rounded *deliberately*.

        Only for amounts the ledger computes (margin = notional / leverage,
        P&L of a fractional quantity). Input is never rounded: see `parse`.
        The caller names the rounding so every such place is visible.
        """
        places = currency(currency_code).places
        quantum = Decimal(1).scaleb(-places)
        value = amount.quantize(quantum, rounding=rounding)
        if value.is_zero():
            value = abs(value)
        return cls(amount=value, currency=currency_code)

    def _same_currency(self, other: Money) -> None:
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency} and {other.currency} do not mix")

    def __add__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(amount=_no_negative_zero(self.amount + other.amount), currency=self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(amount=_no_negative_zero(self.amount - other.amount), currency=self.currency)

    def __neg__(self) -> Money:
        return Money(amount=_no_negative_zero(-self.amount), currency=self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same_currency(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same_currency(other)
        return self.amount <= other.amount

    def __gt__(self, other: Money) -> bool:
        self._same_currency(other)
        return self.amount > other.amount

    def __ge__(self, other: Money) -> bool:
        self._same_currency(other)
        return self.amount >= other.amount

    @property
    def is_zero(self) -> bool:
        return self.amount.is_zero()

    @property
    def is_negative(self) -> bool:
        return self.amount < 0

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"


def _no_negative_zero(amount: Decimal) -> Decimal:
    # 1.00 - 1.00 is 0.00, but -(0.00) is -0.00: keep zero unsigned.
    return abs(amount) if amount.is_zero() else amount
