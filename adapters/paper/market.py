"""The paper broker's market: its instruments and their seeded random walks.

Every random choice is drawn from a generator seeded with the broker's
seed and *what* is being decided (a symbol and a step, a fault and a
key). Nothing depends on call order or on process lifetime, so the same
seed and the same calls give the same prices and faults after a restart.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec

from ledger.instruments import Funding, Instrument

# The broker's clock starts here and moves one STEP per price step.
EPOCH = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
STEP = timedelta(seconds=1)
STALE_QUOTE_AGE = timedelta(minutes=10)
"""How old a stale quote (a fault) is."""


@dataclass(frozen=True)
class Listing:
    """An instrument, where its price starts, and how far it moves per step (in ticks)."""

    instrument: Instrument
    start: Decimal
    ticks_per_step: int


def _listing(
    symbol: str,
    currency: str,
    tick: str,
    step: str,
    start: str,
    moves: int,
    *,
    contract_size: int = 1,
    funding: Funding = Funding.FULL,
    leverage: int = 1,
) -> Listing:
    instrument = Instrument(
        symbol=symbol,
        quote_currency=currency,
        price_tick=Decimal(tick),
        quantity_step=Decimal(step),
        contract_size=Decimal(contract_size),
        funding=funding,
        leverage=Decimal(leverage),
    )
    return Listing(instrument, instrument.price(start), moves)


LISTINGS: dict[str, Listing] = {
    listing.instrument.symbol: listing
    for listing in (
        _listing(
            "EURUSD", "USD", "0.00001", "0.01", "1.08500", 8,
            contract_size=100000, funding=Funding.MARGIN, leverage=30,
        ),
        _listing(
            "GBPUSD", "USD", "0.00001", "0.01", "1.26700", 10,
            contract_size=100000, funding=Funding.MARGIN, leverage=30,
        ),
        _listing(
            "USDJPY", "JPY", "0.001", "0.01", "151.250", 8,
            contract_size=100000, funding=Funding.MARGIN, leverage=30,
        ),
        _listing("BTCUSD", "USD", "0.5", "0.0001", "65000.0", 40),
        _listing("ETHUSD", "USD", "0.05", "0.001", "3200.00", 30),
        _listing(
            "US500", "USD", "0.25", "0.1", "5100.00", 4, funding=Funding.MARGIN, leverage=20
        ),
        _listing(
            "R_100", "USD", "0.01", "0.01", "1000.00", 60, funding=Funding.STAKE, leverage=100
        ),
    )
}  # fmt: skip


def instrument(symbol: str, fee_rate: Decimal = Decimal(0)) -> Instrument | None:
    """The terms `symbol` trades on here, charging `fee_rate` of the notional on each fill."""
    listing = LISTINGS.get(symbol)
    if listing is None:
        return None
    return msgspec.structs.replace(listing.instrument, fee_rate=fee_rate)


def next_price(seed: int, symbol: str, step: int, price: Decimal) -> Decimal:
    """The price of `symbol` at `step`, one random move from `price` at `step - 1`."""
    listing = LISTINGS[symbol]
    tick = listing.instrument.price_tick
    moves = draw(seed, f"walk/{symbol}/{step}").randint(
        -listing.ticks_per_step, listing.ticks_per_step
    )
    moved = price + moves * tick
    # A walk must not reach zero: it stops at one tick.
    return moved if moved > 0 else tick


def clock(step: int) -> datetime:
    return EPOCH + step * STEP


def draw(seed: int, what: str) -> random.Random:
    """A generator for one decision, fixed by the seed and what is decided."""
    # Not for security: this is a reproducible simulation.
    return random.Random(f"{seed}/{what}")  # noqa: S311


def happens(seed: int, probability: Decimal, what: str) -> bool:
    """Whether an event of `probability` happens, for this seed and decision."""
    if probability <= 0:
        return False
    # Compare in millionths: exact, no float meets the probability.
    return draw(seed, what).randrange(1_000_000) < probability * 1_000_000


def step_at(moment: datetime) -> int:
    """The last step at or before `moment` on the broker's clock."""
    return (moment - EPOCH) // STEP
