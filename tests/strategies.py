"""Hypothesis strategies for the ledger's value types and events."""

from __future__ import annotations

import types
import typing
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
from hypothesis import strategies as st

from ledger.events import Event
from ledger.instruments import Funding, Instrument
from ledger.money import CURRENCIES, Money
from ledger.origin import Origin

currency_codes = st.sampled_from(sorted(CURRENCIES))


@st.composite
def money(draw: st.DrawFn, currency_code: str | None = None) -> Money:
    code = currency_code or draw(currency_codes)
    units = draw(st.integers(min_value=-(10**13), max_value=10**13))
    return Money(amount=Decimal(units).scaleb(-CURRENCIES[code].places), currency=code)


decimals = st.builds(
    lambda units, places: Decimal(units).scaleb(-places),
    st.integers(min_value=1, max_value=10**12),
    st.integers(min_value=0, max_value=8),
)

# Events are recorded in UTC, to the microsecond.
utc_datetimes = st.datetimes(
    # hypothesis takes naive bounds and adds the timezone itself.
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)

# Any text a broker or an operator might send, but not lone surrogates (not UTF-8).
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


@st.composite
def instruments(draw: st.DrawFn) -> Instrument:
    funding = draw(st.sampled_from(Funding))
    return Instrument(
        symbol=draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", min_size=1, max_size=12)),
        quote_currency=draw(currency_codes),
        price_tick=draw(st.sampled_from([Decimal("0.00001"), Decimal("0.01"), Decimal("0.25")])),
        quantity_step=draw(st.sampled_from([Decimal("0.001"), Decimal(1)])),
        contract_size=draw(st.sampled_from([Decimal(1), Decimal(100000)])),
        funding=funding,
        leverage=Decimal(1) if funding is Funding.FULL else draw(st.sampled_from([Decimal(30)])),
    )


printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)
origins = st.builds(
    lambda actor, key: Origin(actor=actor, key=key, digest=None if key is None else "d" * 64),
    actor=printable,
    key=st.none() | printable,
)


def strategy_for(hint: Any) -> st.SearchStrategy[Any]:  # noqa: PLR0911, C901 - one per kind of type
    """A strategy for a field's type, with the ledger's rules for money, time and text."""
    if hint is Money:
        return money()
    if hint is Instrument:
        return instruments()
    if hint is Origin:
        return origins
    if hint is Decimal:
        return decimals
    if hint is datetime:
        return utc_datetimes
    if hint is str:
        return texts
    if hint is int:
        return st.integers(min_value=0, max_value=2**31)
    origin = typing.get_origin(hint)
    if origin in {typing.Union, types.UnionType}:
        return st.one_of(*(strategy_for(arg) for arg in typing.get_args(hint)))
    if origin is list:
        return st.lists(strategy_for(typing.get_args(hint)[0]), max_size=3)
    if origin is dict:
        key, value = typing.get_args(hint)
        return st.dictionaries(strategy_for(key), strategy_for(value), max_size=3)
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return structs(hint)
    return st.from_type(hint)


def structs(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = {field.name: strategy_for(hints[field.name]) for field in msgspec.structs.fields(cls)}
    if issubclass(cls, Event):
        fields["originator_version"] = st.integers(min_value=1, max_value=2**31)
    return st.builds(cls, **fields)
