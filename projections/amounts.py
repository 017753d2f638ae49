"""Decimal sums as the ledger's Money does them: exact, and never a negative zero."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from functools import cache

from ledger.money import Money


def plus(amount: Decimal, other: Decimal) -> Decimal:
    """The exact sum; a zero result is unsigned, as `Money` keeps it."""
    total = amount + other
    return total or abs(total)


def minus(amount: Decimal, other: Decimal) -> Decimal:
    """The exact difference; a zero result is unsigned."""
    total = amount - other
    return total or abs(total)


@cache
def zero(currency_code: str) -> Decimal:
    """Zero with the currency's places, as `Money.zero` writes it."""
    return Money.zero(currency_code).amount


def utc_day(moment: datetime) -> str:
    """The UTC calendar day of `moment`, as YYYY-MM-DD."""
    return moment.astimezone(UTC).date().isoformat()
