"""What an audit can find wrong, and the bounded list it keeps of what it found."""

from __future__ import annotations

import enum

import msgspec

PROBLEMS_MAX = 20
"""Problems kept in full; past these only the count goes on."""


class LogBroken(Exception):  # noqa: N818 - reads as "the log is broken at ..."
    """Raised when a replay meets an event its aggregate refuses: the log was altered."""

    def __init__(self, sequence: int, detail: str) -> None:
        self.sequence = sequence
        super().__init__(
            f"the log does not replay at event {sequence}: {detail}; "
            "`ledger audit verify` names everything wrong with it"
        )


class ProblemKind(enum.StrEnum):
    ROW = "row"
    """A row of the events table cannot be read as a row."""
    CHAIN = "chain"
    """The chain recomputed from the events does not lead to a seal's head."""
    SEAL = "seal"
    """A seal names a sequence that holds no event."""
    ANCHOR = "anchor"
    """The chain does not lead to a head kept outside the database."""
    DECODE = "decode"
    """An event cannot be decoded."""
    STREAM = "stream"
    """An aggregate's versions do not go 1, 2, 3... in log order, or its events are of two kinds."""
    ACCOUNT = "account"
    """An account's events do not add up, or not to what the store loads for it."""
    VIEW = "view"
    """The balances view differs from the accounts' events."""
    RESERVATION = "reservation"
    """What an account holds reserved differs from what its intents in flight reserve."""
    INTENT = "intent"
    """A completed intent lacks the ledger events its outcome implies, or an event names an
    intent that does not back it."""
    POSITION = "position"
    """A position has no opening intent and no adoption record, an event follows its close, or
    its money disagrees with its account's."""
    REQUEST = "request"
    """An idempotency key's record and the intent it names disagree: the intent is missing,
    was sent without that key, or ended otherwise than the answer kept for it."""


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing found wrong: at event `sequence` when it can be named, else None.

    A chain problem lies after `since` (the last good seal before it, 0
    for the log's start) and at or before `sequence`.
    """

    kind: ProblemKind
    sequence: int | None
    message: str
    since: int | None = None

    def describe(self) -> str:
        where = "" if self.sequence is None else f" at event {self.sequence}"
        return f"{self.kind}{where}: {self.message}"


class Problems:
    """The problems found, in the order found: the first PROBLEMS_MAX in full, then a count."""

    def __init__(self, limit: int = PROBLEMS_MAX) -> None:
        self.limit = limit
        self.kept: list[Problem] = []
        self.count = 0

    def add(
        self, kind: ProblemKind, sequence: int | None, message: str, *, since: int | None = None
    ) -> None:
        self.count += 1
        if len(self.kept) < self.limit:
            self.kept.append(Problem(kind=kind, sequence=sequence, message=message, since=since))
