"""Replaying the log: every event in commit order, then the state as of the last one.

The log is read a page at a time from its first event, and each event is
folded into the state (see `state`) whether or not it is shown: `start`
and the filters choose what is shown, never what the state is built from.
So the state as of a point is the same however the replay was filtered,
and memory stays bounded by the accounts, open positions and unfinished
intents, never by the length of the history.

Where the replay ends:

- `until` a sequence number: after the event with that number;
- `until` a time: before the first event recorded after it, so that
  every event replayed was recorded at or before it. Recorded times are
  the ledger's own clock, read once per commit by the single writer:
  every event of one commit has the same time, and the times never go
  back from one commit to the next, so a cut at a time falls between
  commits, never inside one;
- neither: at the last event committed when the replay began.

An account filter shows the account's events, those of its positions and
intents (their first events name it, so one pass finds them), and the
reconciliation reports with a finding about it. A position filter shows
the position's events, the intents that name it (the one that opened it
included), and the account events about it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Protocol
from uuid import UUID

import msgspec

from adapters.store import Store
from audit.problems import LogBroken
from audit.reading import PAGE_SIZE
from audit.records import INTENT_ENDS, KIND_OF, Kind, Record, intent_of, position_of, record_of
from audit.state import Fold, State
from ledger.account import Account, account_id
from ledger.controls import KillSwitchEngaged, KillSwitchReleased, LimitsSet
from ledger.errors import IllegalTransition, InvalidValue, InvariantViolated, NotFound
from ledger.events import Event
from ledger.intent import IntentRecorded, OpenRequest
from ledger.position import Position, PositionClosed, PositionOpened, position_id
from ledger.reconciliation import ReconciliationRecorded
from ledger.refusals import OperationRefused
from projections.balances import BalanceRow
from projections.log import log_end, pages
from projections.positions import PositionRow
from projections.rebuild import Progress


class Filter(Protocol):
    def selects(self, event: Event) -> bool:
        """Whether `event` is shown; called for every event, in log order."""

    def shows_balance(self, row: BalanceRow) -> bool: ...

    def shows_position(self, row: PositionRow) -> bool: ...


class AccountFilter:
    """One account's events, its positions', its intents', reports that name it, its controls
    (and those over every account) and the refusals of its operations."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.account_id = account_id(name)
        # Streams that belong to the account and may still grow.
        self._open_positions: set[UUID] = set()
        self._unfinished_intents: set[UUID] = set()

    def selects(self, event: Event) -> bool:
        stream = event.originator_id
        if isinstance(event, IntentRecorded) and event.account_id == self.account_id:
            self._unfinished_intents.add(stream)
        elif isinstance(event, PositionOpened) and event.account_id == self.account_id:
            self._open_positions.add(stream)
        if isinstance(event, ReconciliationRecorded):
            return any(item.account == self.name for item in event.items)
        if isinstance(event, LimitsSet | KillSwitchEngaged | KillSwitchReleased):
            return event.account_id in {None, self.account_id}
        if isinstance(event, OperationRefused):
            return event.account_id == self.account_id
        selected = (
            stream == self.account_id
            or stream in self._open_positions
            or stream in self._unfinished_intents
        )
        if isinstance(event, PositionClosed):
            self._open_positions.discard(stream)
        elif isinstance(event, INTENT_ENDS):
            self._unfinished_intents.discard(stream)
        return selected

    def shows_balance(self, row: BalanceRow) -> bool:
        return row.account_id == self.account_id

    def shows_position(self, row: PositionRow) -> bool:
        return row.account_id == self.account_id


class PositionFilter:
    """One position's events, the intents that name it, and its account's events about it."""

    def __init__(self, position: UUID) -> None:
        self.position = position
        self.account_id: UUID | None = None
        """The position's account, once its opening is read."""
        self._unfinished_intents: set[UUID] = set()

    def selects(self, event: Event) -> bool:
        stream = event.originator_id
        if isinstance(event, IntentRecorded) and self._names_position(event):
            self._unfinished_intents.add(stream)
        elif isinstance(event, PositionOpened) and stream == self.position:
            self.account_id = event.account_id
        kind = KIND_OF[event.stored_name]
        if kind is Kind.ACCOUNT:
            # The opening intent's reservation names the intent, not the position.
            intent = intent_of(event)
            return position_of(event) == self.position or (
                intent is not None and position_id(intent) == self.position
            )
        selected = stream == self.position or stream in self._unfinished_intents
        if isinstance(event, INTENT_ENDS):
            self._unfinished_intents.discard(stream)
        return selected

    def _names_position(self, event: IntentRecorded) -> bool:
        if isinstance(event.payload, OpenRequest):
            return position_id(event.originator_id) == self.position
        return getattr(event.payload, "position_id", None) == self.position

    def shows_balance(self, row: BalanceRow) -> bool:
        return row.account_id == self.account_id

    def shows_position(self, row: PositionRow) -> bool:
        return row.position_id == self.position


class Replay:
    """One replay of the log: iterate `records()` once, then ask for `state()`."""

    def __init__(
        self,
        store: Store,
        *,
        start: int = 1,
        until: int | datetime | None = None,
        account: str | None = None,
        position: UUID | None = None,
        progress: Progress | None = None,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.store = store
        self.start = start
        self.until = until
        if account is not None and store.get(Account, account_id(account)) is None:
            raise NotFound(f"no account {account!r}")
        if position is not None and store.get(Position, position) is None:
            raise NotFound(f"no position {position}")
        self.filters: Sequence[Filter] = [
            *([AccountFilter(account)] if account is not None else []),
            *([PositionFilter(position)] if position is not None else []),
        ]
        self.progress = progress
        self.page_size = page_size
        self._fold = Fold()
        self._started = False
        self._finished = False

    def records(self) -> Iterator[Record]:
        """The events shown, in commit order, each read, folded and yielded as it comes."""
        if self._started:
            raise RuntimeError("a replay is read once")
        self._started = True
        end = log_end(self.store)
        stop = end if not isinstance(self.until, int) else self._checked_until(self.until, end)
        for page in pages(self.store, after=0, stop=stop, size=self.page_size):
            for sequence, event in page.events:
                if isinstance(self.until, datetime) and event.recorded_at > self.until:
                    self._finished = True
                    return
                try:
                    self._fold.apply(sequence, event)
                except (InvariantViolated, IllegalTransition) as error:
                    raise LogBroken(sequence, str(error)) from error
                # Every filter sees every event: each keeps track of its streams.
                shown = [each.selects(event) for each in self.filters]
                if sequence >= self.start and all(shown):
                    yield record_of(sequence, event)
            if self.progress is not None:
                self.progress(page.end, stop)
        self._finished = True

    def _checked_until(self, until: int, end: int) -> int:
        if 0 < until < self.start:  # 0: the state before any event
            raise InvalidValue("until", f"event {until} comes before --from {self.start}")
        if until > end:
            raise InvalidValue("until", f"event {until} is past the log's last event, {end}")
        return until

    def state(self) -> State:
        """Balances and open positions after the last event replayed (of the filtered ones)."""
        if not self._finished:
            raise RuntimeError("the state is known once every record has been read")
        state = self._fold.state()
        return msgspec.structs.replace(
            state,
            balances=[
                row for row in state.balances if all(f.shows_balance(row) for f in self.filters)
            ],
            positions=[
                row for row in state.positions if all(f.shows_position(row) for f in self.filters)
            ],
        )
