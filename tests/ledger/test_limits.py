"""Limits and the stop-loss rules as pure functions: parsing, the caps, exact arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import stops
from ledger.errors import InvalidValue, Refused
from ledger.instruments import Funding, Instrument, Price, Quantity, Side
from ledger.limits import Control, Exposure, Limits, Trade, check_open, updated
from ledger.money import Money
from ledger.ports import Quote


def usd(text: str) -> Money:
    return Money.parse(text, "USD")


BTC = Instrument(
    symbol="BTCUSD", quote_currency="USD", price_tick=Decimal("0.5"), quantity_step=Decimal("0.001")
)
QUOTE = Quote(
    symbol="BTCUSD",
    bid=Decimal(60000),
    ask=Decimal(60001),
    time=datetime(2026, 1, 5, tzinfo=UTC),
)
NOTHING_USED = Exposure(
    trades_today=0,
    open_positions=0,
    loss_today=usd("0"),
    at_risk=usd("0"),
    equity=usd("10000"),
)
SMALL = Trade(notional=usd("100"), at_risk=usd("10"))


@pytest.mark.parametrize(
    ("changes", "clear", "message"),
    [
        ({"max_daily_loss": "NaN"}, [], "not a finite number"),
        ({"max_daily_loss": "-0"}, [], "negative zero"),
        ({"max_daily_loss": "1e999"}, [], "out of range"),
        ({"max_daily_loss": "10.001"}, [], "more than 2 decimal places"),
        ({"max_daily_loss": "0"}, [], "more than zero"),
        ({"risk_per_trade_pct": "0.00001"}, [], "more than 4 decimal places"),
        ({"risk_per_trade_pct": "101"}, [], r"outside \(0, 100\]"),
        ({"risk_per_trade_pct": "0"}, [], r"outside \(0, 100\]"),
        ({"max_open_positions": "1.5"}, [], "more than 0 decimal places"),
        ({"max_open_positions": "-1"}, [], "outside 0..1000000"),
        ({"max_trades_per_day": "Infinity"}, [], "not a finite number"),
        ({}, ["max_speed"], "is not a limit"),
        ({"max_open_positions": "2"}, ["max_open_positions"], "both set and cleared"),
        ({}, [], "nothing to set"),
    ],
)
def test_bad_limits_are_refused_naming_the_value(changes, clear, message):
    with pytest.raises(InvalidValue, match=message):
        updated(Limits(), changes, clear, "USD")


def test_limits_change_only_what_is_named_and_clear_what_is_cleared():
    first = updated(Limits(), {"max_open_positions": "3", "max_daily_loss": "250.5"}, [], "USD")
    assert first == Limits(max_open_positions=3, max_daily_loss=usd("250.50"))
    second = updated(first, {"require_stop_loss": True}, ["max_daily_loss"], "USD")
    assert second == Limits(max_open_positions=3, require_stop_loss=True)


@pytest.mark.parametrize(
    ("limits", "exposure", "trade", "control"),
    [
        (Limits(max_trades_per_day=2), {"trades_today": 2}, SMALL, Control.MAX_TRADES_PER_DAY),
        (Limits(max_open_positions=1), {"open_positions": 1}, SMALL, Control.MAX_OPEN_POSITIONS),
        (
            Limits(max_position_notional=usd("99.99")),
            {},
            SMALL,
            Control.MAX_POSITION_NOTIONAL,
        ),
        (
            Limits(max_daily_loss=usd("100")),
            {"loss_today": usd("60"), "at_risk": usd("30.01")},
            SMALL,
            Control.MAX_DAILY_LOSS,
        ),
        (
            Limits(max_daily_loss_pct=Decimal(1)),
            {"loss_today": usd("90.01")},
            SMALL,
            Control.MAX_DAILY_LOSS_PCT,
        ),
    ],
)
def test_each_limit_refuses_at_its_edge_and_names_itself(limits, exposure, trade, control):
    used = _with(exposure)
    with pytest.raises(Refused, match=f"refused by {control}"):
        check_open(limits, used, trade)


def _with(changes: dict[str, object]) -> Exposure:
    fields = {name: getattr(NOTHING_USED, name) for name in NOTHING_USED.__struct_fields__}
    fields.update(changes)
    return Exposure(**fields)


def test_every_limit_allows_what_stays_within_it():
    limits = Limits(
        max_trades_per_day=3,
        max_open_positions=2,
        max_position_notional=usd("100"),
        max_daily_loss=usd("100"),
        max_daily_loss_pct=Decimal(1),
    )
    used = _with({"trades_today": 2, "open_positions": 1, "loss_today": usd("60")})
    check_open(limits, used, Trade(notional=usd("100"), at_risk=usd("40")))


def test_the_risk_cap_is_rounded_down_and_applies_the_margin():
    limits = Limits(risk_per_trade_pct=Decimal("1.5"))
    # 1.5% of 1234.57 = 18.51855, times 95% = 17.5926225: down to the cent.
    assert limits.risk_cap(usd("1234.57")) == usd("17.59")
    assert Limits().risk_cap(usd("1000")) is None


@given(
    stop=st.integers(min_value=1, max_value=119_999).map(lambda n: Decimal(n) / 2),
    quantity=st.integers(min_value=1, max_value=5000).map(lambda n: Decimal(n) / 1000),
    percent=st.integers(min_value=1, max_value=10_000).map(lambda n: Decimal(n) / 100),
)
def test_a_stop_is_accepted_exactly_when_its_loss_is_within_the_cap(stop, quantity, percent):
    limits = Limits(risk_per_trade_pct=percent)
    total = usd("10000")
    entry = Price(QUOTE.ask)
    exact_loss = (entry - stop) * quantity  # contract size 1, a long
    cap = limits.risk_cap(total)
    assert cap is not None

    def check() -> None:
        stops.check_risk(
            BTC, Side.LONG, Quantity(quantity), entry, stop, limits=limits, total=total
        )

    if exact_loss > cap.amount:
        with pytest.raises(Refused, match="refused by risk_per_trade_pct"):
            check()
    else:
        check()


def test_a_stake_risks_at_most_its_stake():
    stake = Instrument(
        symbol="R100",
        quote_currency="USD",
        price_tick=Decimal("0.01"),
        quantity_step=Decimal(1),
        funding=Funding.STAKE,
        leverage=Decimal(100),
    )
    loss = stake.loss_at(Side.LONG, Quantity(Decimal(10)), Price(Decimal(100)), Price(Decimal(1)))
    assert loss == usd("10.00")


def test_a_loss_is_rounded_up_never_down():
    loss = BTC.loss_at(
        Side.LONG, Quantity(Decimal("0.001")), Price(Decimal("100.5")), Price(Decimal(100))
    )
    assert loss == usd("0.01")  # 0.0005 exactly


@pytest.mark.parametrize(
    ("side", "stop", "allowed"),
    [
        (Side.LONG, Decimal(59999), True),
        (Side.LONG, Decimal(60000), False),
        (Side.SHORT, Decimal(60002), True),
        (Side.SHORT, Decimal(60001), False),
    ],
)
def test_a_stop_must_lie_on_the_protective_side_of_the_market(side, stop, allowed):
    if allowed:
        stops.check_side(side, stop, QUOTE)
    else:
        with pytest.raises(Refused, match="stop_loss_side"):
            stops.check_side(side, stop, QUOTE)


@pytest.mark.parametrize(
    ("side", "old", "new", "wider"),
    [
        (Side.LONG, Decimal(100), Decimal(99), True),
        (Side.LONG, Decimal(100), Decimal(101), False),
        (Side.SHORT, Decimal(100), Decimal(101), True),
        (Side.SHORT, Decimal(100), Decimal(99), False),
        (Side.LONG, Decimal(100), None, True),
        (Side.LONG, None, Decimal(50), False),
        (Side.LONG, None, None, False),
    ],
)
def test_widening_is_moving_away_from_the_market_or_removing(side, old, new, wider):
    assert stops.widens(side, old, new) is wider


def test_without_a_stop_where_one_is_required_the_open_is_refused():
    limits = Limits(require_stop_loss=True)
    with pytest.raises(Refused, match="stop_loss_required"):
        stops.check_risk(
            BTC,
            Side.LONG,
            Quantity(Decimal(1)),
            Price(Decimal(100)),
            None,
            limits=limits,
            total=usd("1"),
        )


def test_with_a_per_trade_cap_no_stop_at_all_is_refused():
    limits = Limits(risk_per_trade_pct=Decimal(50))
    with pytest.raises(Refused, match="risk_per_trade_pct: without a stop-loss"):
        stops.check_risk(
            BTC,
            Side.LONG,
            Quantity(Decimal("0.001")),
            Price(Decimal(100)),
            None,
            limits=limits,
            total=usd("1000000"),
        )
