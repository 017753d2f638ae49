"""An assertion that survives `python -O`."""

from __future__ import annotations

from ledger.errors import InvariantViolated


def invariant(condition: bool, message: str, *arguments: object) -> None:  # noqa: FBT001 - reads like assert
    """Raise `InvariantViolated` with `message % arguments` unless `condition` holds.

    Unlike `assert`, this is never compiled away: the ledger's invariants
    guard money, and must hold in production exactly as in tests. The
    message is formatted only when it is raised: invariants are checked on
    every event applied, and formatting an event costs more than checking it.
    """
    if not condition:
        raise InvariantViolated(message % arguments if arguments else message)
