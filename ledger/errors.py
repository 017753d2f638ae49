"""Every exception the ledger core raises, each with when it is raised."""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger core raises on purpose."""


class InvalidValue(LedgerError, ValueError):  # noqa: N818 - reads as "invalid value: ..."
    """Raised when a value given at the boundary breaks a money or instrument rule."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class UnknownCurrency(InvalidValue):
    """Raised when a currency code is not in the currency catalogue."""


class CurrencyMismatch(LedgerError, ValueError):  # noqa: N818
    """Raised when money in two different currencies meets in one operation."""


class InsufficientFunds(LedgerError):  # noqa: N818
    """Raised when a withdrawal or reservation would take available funds below zero."""


class IllegalTransition(LedgerError):  # noqa: N818
    """Raised when an aggregate is asked for a change its current state forbids."""


class InvariantViolated(LedgerError, AssertionError):  # noqa: N818
    """Raised when an internal invariant does not hold: a bug, never a user error."""


class UnknownEventType(LedgerError, LookupError):  # noqa: N818
    """Raised when a stored event names a type, or a version, this code does not know."""
