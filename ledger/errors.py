"""Every exception the ledger core raises, each with when it is raised."""

from __future__ import annotations

SHOWN_LENGTH_MAX = 40


def shown(value: object) -> str:
    """`value` as an error message quotes it: its repr, cut short if it is long.

    Values in messages come from outside; a megabyte of account name must
    not become a megabyte of error line.
    """
    text = repr(value)
    return text if len(text) <= SHOWN_LENGTH_MAX else text[: SHOWN_LENGTH_MAX - 3] + "..."


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


class InvariantViolated(AssertionError):  # noqa: N818
    """Raised when an internal invariant does not hold: a bug, never a user error.

    Deliberately not a `LedgerError`: nothing may treat it as a refusal.
    """


class LeaseHeld(LedgerError):  # noqa: N818
    """Raised when another engine holds the store's single-writer lease."""


class NotFound(LedgerError, LookupError):  # noqa: N818
    """Raised when an operation names an account or position the ledger does not have."""


class OperationRejected(LedgerError):  # noqa: N818
    """Raised when the broker refused an operation; its intent failed and nothing was kept."""

    def __init__(self, intent_id: object, reason: str) -> None:
        self.intent_id = intent_id
        self.reason = reason
        super().__init__(f"the broker rejected it: {reason} (intent {intent_id})")


class NotReady(LedgerError):  # noqa: N818
    """Raised when an operation reaches an engine whose startup recovery has not finished."""

    def __init__(self) -> None:
        super().__init__("the engine is not ready: startup recovery has not finished")


class Frozen(LedgerError):  # noqa: N818
    """Raised when an operation touches an account and symbol frozen by an intent under review."""

    def __init__(self, symbol: str, intent_id: object) -> None:
        self.symbol = symbol
        self.intent_id = intent_id
        super().__init__(
            f"writes on {symbol} in this account are frozen: intent {intent_id} needs review "
            f"(resolve it with `ledger wal resolve {intent_id} --outcome ... --reason ...`)"
        )


class Refused(LedgerError):  # noqa: N818
    """Raised when a risk control (a limit, kill switch, circuit breaker) refuses an operation."""

    def __init__(self, control: str, detail: str) -> None:
        self.control = control
        self.detail = detail
        super().__init__(f"refused by {control}: {detail}")


class OutcomeUnknown(LedgerError):  # noqa: N818
    """Raised when the broker's answer was lost: the intent stays in flight for recovery."""

    def __init__(self, intent_id: object, cause: str) -> None:
        self.intent_id = intent_id
        self.cause = cause
        super().__init__(
            f"outcome unknown: {cause}; intent {intent_id} stays in flight until recovery"
        )


class BrokerUnavailable(LedgerError, TimeoutError):  # noqa: N818
    """Raised when the broker does not answer a call in time.

    A timeout too: a write that times out is an outcome unknown (the engine
    catches it as such); a read that times out before commit 1 ends the
    operation with nothing recorded.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"the broker did not answer within {seconds:g} s")


class UnknownEventType(LookupError):  # noqa: N818
    """Raised when a stored event names a type, or a version, this code does not know."""


class KeyReused(LedgerError):  # noqa: N818
    """Raised when an idempotency key comes back with a request other than its first."""

    def __init__(self, key: str, intent_id: object) -> None:
        self.key = key
        self.intent_id = intent_id
        super().__init__(
            f"idempotency key {key!r} was first sent with another request (intent {intent_id}); "
            "a new request needs a new key"
        )


class RequestInFlight(LedgerError):  # noqa: N818
    """Raised when an idempotency key comes back while its first request is still in flight."""

    def __init__(self, intent_id: object) -> None:
        self.intent_id = intent_id
        super().__init__(
            f"the request with this idempotency key is still in flight (intent {intent_id}); "
            "ask again once it is concluded"
        )
