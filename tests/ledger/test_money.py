"""Money validation: every bad value is refused with the field named, never rounded."""

from __future__ import annotations

import decimal
import threading
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import CurrencyMismatch, InvalidValue, UnknownCurrency
from ledger.money import (
    EXPONENT_ABSOLUTE_MAX,
    INTEGER_DIGITS_MAX,
    Money,
    currency,
    parse_decimal,
)

places = st.integers(min_value=0, max_value=8)
magnitudes = st.integers(min_value=-(10**13), max_value=10**13)


@given(units=magnitudes, places=places)
def test_a_value_with_the_allowed_places_is_returned_exactly(units, places):
    value = Decimal(units).scaleb(-places)
    parsed = parse_decimal(str(value), field="amount", places=places)
    assert parsed == value
    assert parsed.as_tuple().exponent == -places


@given(units=magnitudes, places=places, extra=st.integers(min_value=1, max_value=6))
def test_trailing_zeros_beyond_the_places_are_not_a_loss(units, places, extra):
    text = str(Decimal(units).scaleb(-places).quantize(Decimal(1).scaleb(-(places + extra))))
    assert parse_decimal(text, field="amount", places=places) == Decimal(units).scaleb(-places)


@given(units=magnitudes.filter(lambda n: n % 10 != 0), places=places)
def test_one_place_too_many_is_refused_never_rounded(units, places):
    value = Decimal(units).scaleb(-(places + 1))
    with pytest.raises(InvalidValue, match=r"^price: .* more than \d+ decimal places"):
        parse_decimal(str(value), field="price", places=places)


@given(number=st.floats(allow_nan=True, allow_infinity=True))
def test_floats_are_refused_whatever_their_value(number):
    with pytest.raises(InvalidValue, match=r"^amount: a float is not accepted"):
        parse_decimal(number, field="amount", places=2)


@pytest.mark.parametrize(
    "text",
    ["NaN", "nan", "-NaN", "sNaN", "Infinity", "-Infinity", "inf", "-inf", "+Inf"],
)
def test_non_finite_values_are_refused(text):
    with pytest.raises(InvalidValue, match=r"^amount: .* not a finite number"):
        parse_decimal(text, field="amount", places=2)


@pytest.mark.parametrize("text", ["-0", "-0.00", "-0e5", "-0.0000"])
def test_negative_zero_is_refused(text):
    with pytest.raises(InvalidValue, match=r"^amount: negative zero"):
        parse_decimal(text, field="amount", places=2)


@given(
    exponent=st.integers(min_value=EXPONENT_ABSOLUTE_MAX + 1, max_value=10**9),
    sign=st.sampled_from([1, -1]),
)
def test_absurd_exponents_are_refused(exponent, sign):
    with pytest.raises(InvalidValue, match=r"^amount: .*exponent out of range"):
        parse_decimal(f"1e{sign * exponent}", field="amount", places=2)


@given(digits=st.integers(min_value=INTEGER_DIGITS_MAX, max_value=EXPONENT_ABSOLUTE_MAX))
def test_magnitudes_beyond_the_limit_are_refused(digits):
    with pytest.raises(InvalidValue, match=r"^amount: .*out of range"):
        parse_decimal(f"1e{digits}", field="amount", places=2)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "  ",
        "12abc",
        "1,000.00",
        "0x10",
        "1/2",
        "1_000",
        "\u0661\u0660\u0660",
        "\uff11\uff10\uff10",
        "1e",
        ".",
        True,
        None,
        [1],
    ],
)
def test_things_that_are_not_numbers_are_refused(value):
    with pytest.raises(InvalidValue, match=r"^amount: "):
        parse_decimal(value, field="amount", places=2)


def test_integers_and_decimals_are_accepted_as_well_as_text():
    assert parse_decimal(12, field="amount", places=2) == Decimal("12.00")
    assert parse_decimal(Decimal("0.5"), field="amount", places=1) == Decimal("0.5")
    assert parse_decimal(" 7.25 ", field="amount", places=2) == Decimal("7.25")


@given(cents=magnitudes)
def test_money_keeps_exactly_the_currency_places(cents):
    money = Money.parse(str(Decimal(cents).scaleb(-2)), "USD")
    assert money.amount.as_tuple().exponent == -2
    assert Money(amount=money.amount, currency="USD") == money


def test_money_refuses_more_places_than_its_currency():
    with pytest.raises(InvalidValue, match=r"^amount: .*more than 0 decimal places"):
        Money.parse("100.5", "JPY")
    with pytest.raises(InvalidValue, match=r"^amount: .*more than 8 decimal places"):
        Money.parse("0.000000001", "BTC")


def test_money_refuses_a_float_even_when_constructed_directly():
    with pytest.raises(InvalidValue, match=r"^amount: a float"):
        Money(amount=0.1, currency="USD")  # type: ignore[arg-type]


def test_unknown_currencies_are_refused():
    with pytest.raises(UnknownCurrency, match=r"^currency: 'XYZ' is not a known currency"):
        currency("XYZ")
    with pytest.raises(UnknownCurrency):
        Money.parse("1", "usd")


@given(a=magnitudes, b=magnitudes, c=magnitudes)
def test_money_arithmetic_is_exact(a, b, c):
    x, y, z = (Money(amount=Decimal(n).scaleb(-2), currency="EUR") for n in (a, b, c))
    assert (x + y) + z == x + (y + z)
    assert (x + y) - y == x
    negated = -x
    assert -negated == x
    assert (x - x).is_zero
    assert not (x - x).amount.is_signed()


def test_money_in_different_currencies_does_not_mix():
    usd, eur = Money.parse("1", "USD"), Money.parse("1", "EUR")
    with pytest.raises(CurrencyMismatch):
        _ = usd + eur
    with pytest.raises(CurrencyMismatch):
        _ = usd < eur


def test_rounding_a_computed_amount_is_explicit_and_never_negative_zero():
    assert Money.rounded(Decimal("1.005"), "USD", decimal.ROUND_UP).amount == Decimal("1.01")
    assert (
        Money.rounded(Decimal("-0.001"), "USD", decimal.ROUND_HALF_EVEN).amount.is_signed() is False
    )


def test_floats_cannot_meet_money_in_any_thread():
    def compare() -> None:
        _ = Decimal("1.10") < 1.1  # type: ignore[operator]

    with pytest.raises(decimal.FloatOperation):
        compare()
    failures: list[BaseException] = []

    def in_thread() -> None:
        try:
            compare()
        except decimal.FloatOperation as error:
            failures.append(error)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert len(failures) == 1
