"""Instruments: prices on the tick, quantities on the step, and what opening costs."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import InvalidValue
from ledger.instruments import Funding, Instrument, Price, Quantity, Side

EURUSD = Instrument(
    symbol="EURUSD",
    quote_currency="USD",
    price_tick=Decimal("0.00001"),
    quantity_step=Decimal("0.01"),
    contract_size=Decimal(100000),
    funding=Funding.MARGIN,
    leverage=Decimal(30),
)
BTCUSDT = Instrument(
    symbol="BTCUSDT",
    quote_currency="USDT",
    price_tick=Decimal("0.1"),
    quantity_step=Decimal("0.00001"),
)
ES = Instrument(
    symbol="ES", quote_currency="USD", price_tick=Decimal("0.25"), quantity_step=Decimal(1)
)
MULTIPLIER = Instrument(
    symbol="R_100",
    quote_currency="USD",
    price_tick=Decimal("0.01"),
    quantity_step=Decimal("0.01"),
    funding=Funding.STAKE,
    leverage=Decimal(100),
)


def test_a_price_off_the_tick_is_refused_not_rounded():
    assert ES.price("4500.25") == Decimal("4500.25")
    with pytest.raises(InvalidValue, match=r"^price: 4500.10 is not a multiple of 0.25"):
        ES.price("4500.1")
    with pytest.raises(InvalidValue, match=r"^stop_loss: .*more than 5 decimal places"):
        EURUSD.price("1.123456", field="stop_loss")


@pytest.mark.parametrize(("text", "problem"), [("-1", "is negative"), ("0", "more than zero")])
def test_quantities_must_be_positive(text, problem):
    with pytest.raises(InvalidValue, match=rf"^quantity: .*{problem}"):
        BTCUSDT.quantity(text)


def test_prices_must_be_positive():
    with pytest.raises(InvalidValue, match=r"^price: .*must be positive"):
        BTCUSDT.price("0")


@given(
    lots=st.integers(min_value=1, max_value=10**6), pips=st.integers(min_value=1, max_value=10**6)
)
def test_margin_is_the_notional_over_leverage_rounded_up(lots, pips):
    quantity = Quantity(Decimal(lots).scaleb(-2))
    price = Price(Decimal(pips).scaleb(-5))
    required = EURUSD.funds_required(quantity, price).amount
    exact = quantity * price * EURUSD.contract_size / EURUSD.leverage
    assert required >= exact
    assert required - exact < Decimal("0.01")


def test_paid_in_full_costs_the_notional_and_a_stake_costs_the_stake():
    assert BTCUSDT.funds_required(
        Quantity(Decimal("0.5")), Price(Decimal("60000.1"))
    ).amount == Decimal("30000.050000")
    assert MULTIPLIER.funds_required(
        Quantity(Decimal("10.00")), Price(Decimal("1234.56"))
    ).amount == Decimal("10.00")


@given(
    entry=st.integers(min_value=1, max_value=10**6),
    exit_=st.integers(min_value=1, max_value=10**6),
    side=st.sampled_from(Side),
)
def test_pnl_of_a_close_is_the_move_times_size_with_the_side_sign(entry, exit_, side):
    quantity = Quantity(Decimal(3))
    pnl = ES.pnl(side, quantity, Price(Decimal(entry) / 4), Price(Decimal(exit_) / 4))
    assert pnl.amount == (Decimal(exit_ - entry) / 4 * 3 * side.sign).quantize(Decimal("0.01"))
    assert pnl.currency == "USD"


@given(exit_=st.integers(min_value=1, max_value=10**6))
def test_a_stake_cannot_lose_more_than_the_stake(exit_):
    pnl = MULTIPLIER.pnl(
        Side.LONG, Quantity(Decimal("10.00")), Price(Decimal("500.00")), Price(Decimal(exit_) / 100)
    )
    assert pnl.amount >= Decimal("-10.00")


def test_an_instrument_paid_in_full_has_no_leverage():
    with pytest.raises(InvalidValue, match=r"^leverage: "):
        Instrument(
            symbol="X",
            quote_currency="USD",
            price_tick=Decimal("0.01"),
            quantity_step=Decimal(1),
            leverage=Decimal(2),
        )


@pytest.mark.parametrize("field", ["price_tick", "quantity_step", "contract_size"])
@pytest.mark.parametrize("value", [Decimal(0), Decimal(-1), Decimal("NaN")])
def test_instrument_steps_must_be_positive_and_finite(field, value):
    fields = {
        "symbol": "X",
        "quote_currency": "USD",
        "price_tick": Decimal("0.01"),
        "quantity_step": Decimal(1),
    }
    fields[field] = value
    with pytest.raises(InvalidValue, match=rf"^{field}: "):
        Instrument(**fields)  # type: ignore[arg-type]


@given(
    ticks=st.integers(min_value=1, max_value=10**8),
    slippage_bp=st.integers(min_value=0, max_value=500),
    side=st.sampled_from(list(Side)),
)
def test_the_worst_fill_is_on_the_tick_and_at_least_the_slippage_past_the_quote(
    ticks, slippage_bp, side
):
    quote = Price(ticks * ES.price_tick)
    slippage = Decimal(slippage_bp) / 10_000
    worst = ES.worst_fill(side, quote, slippage)
    assert worst % ES.price_tick == 0
    # Past the quote by at least the slippage, and by less than one more tick.
    past = (worst - quote) * side.sign
    assert quote * slippage <= past < quote * slippage + ES.price_tick


@given(lots=st.integers(min_value=1, max_value=10**6), rate_bp=st.integers(0, 100))
def test_a_fee_is_the_notional_times_the_rate_rounded_up_to_the_cent(lots, rate_bp):
    venue = msgspec.structs.replace(ES, fee_rate=Decimal(rate_bp) / 10_000)
    price = Price(Decimal("4500.25"))
    fee = venue.fee(Quantity(Decimal(lots)), price)
    exact = ES.notional(Quantity(Decimal(lots)), price) * venue.fee_rate
    assert fee.currency == "USD"
    assert exact <= fee.amount < exact + Decimal("0.01")


@pytest.mark.parametrize("rate", ["-0.001", "1", "NaN", "-0", "1E-40"])
def test_a_fee_rate_outside_0_to_1_or_malformed_is_refused(rate):
    with pytest.raises(InvalidValue, match=r"^fee_rate: "):
        msgspec.structs.replace(ES, fee_rate=Decimal(rate))
