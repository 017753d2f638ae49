"""An assertion that survives `python -O`."""

from __future__ import annotations

from ledger.errors import InvariantViolated


def invariant(condition: bool, message: str) -> None:  # noqa: FBT001 - reads like assert
    """Raise `InvariantViolated` with `message` unless `condition` holds.

    Unlike `assert`, this is never compiled away: the ledger's invariants
    guard money, and must hold in production exactly as in tests.
    """
    if not condition:
        raise InvariantViolated(message)
