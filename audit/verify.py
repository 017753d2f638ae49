"""Verifying a store: the hash chain against every seal, and the ledger's invariants.

One pass reads the events table in log order, a page at a time, and for
each row:

- extends the chain (see `chain`) and, where a seal stands, compares it:
  a mismatch names the seal and the range since the last good one, and
  the check goes on from the stored seal, so each damaged range is named
  once;
- decodes the event with the store's own mapper, and checks that its
  aggregate's versions go 1, 2, 3... in log order (a removed or moved row
  breaks this exactly where it shows);
- folds it into the ledger (see `invariants`).

Then the invariants that span aggregates are checked, each account is
compared with what the store loads for it (through its snapshots), and
the balances view with the accounts' events at the view's own position.

Memory stays bounded by the number of aggregates, never the log's length.
Verifying only reads: it never catches the views up nor seals, so what
it reports as unsealed is what was unsealed when it started.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple
from uuid import UUID

import msgspec
from eventsourcing.domain import EventSourcingError
from eventsourcing.persistence import StoredEvent

from adapters.store import Store
from audit.invariants import APPLY_ERRORS, Balance, Ledger
from audit.problems import Problem, ProblemKind, Problems
from audit.records import KIND_OF
from ledger.account import Account
from ledger.events import Event
from projections.balances import BALANCES, BalancesView
from projections.chain import GENESIS, StoredRow, extend
from projections.database import Database
from projections.errors import MalformedRow
from projections.log import log_end, stored_rows
from projections.seals import Seal, digest_of, digests, seals

VERIFY_PAGE_SIZE = 1000
"""Events read per query."""

Progress = Callable[[int, int], None]
"""Called after each page, with the sequence reached and the sequence to reach."""


class Anchor(NamedTuple):
    """A head kept outside the database: the chain's head after event `sequence`."""

    sequence: int
    head: bytes


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """What verifying a store found."""

    ok: bool
    head: str
    """The chain's head after the last event, recomputed from the start, in hex."""
    sequence: int
    """The last event's sequence (0 for an empty log)."""
    events: int
    seals_checked: int
    unsealed_events: int
    """Events after the last seal: the chain covers them, no seal does yet."""
    problems: list[Problem]
    """The first problems found, in the order found (see `problem_count`)."""
    problem_count: int


class _BalancesSeen(NamedTuple):
    position: int
    rows: dict[UUID, Balance]


def verify(
    store: Store, *, progress: Progress | None = None, anchor: Anchor | None = None
) -> Verdict:
    """Recompute the chain, compare it with every seal (and `anchor`), check the invariants."""
    return _Audit(store, anchor).run(progress)


class _Audit:
    """The state of one verifying pass."""

    def __init__(self, store: Store, anchor: Anchor | None) -> None:
        self.store = store
        self.database = Database(store)
        self.anchor = anchor
        self.problems = Problems()
        self.ledger = Ledger(self.problems)
        self.chain = GENESIS
        """The chain recomputed from the start."""
        self.checked = GENESIS
        """The chain the seals are compared with: `chain`, until a seal differs; from then on,
        the chain from the last seal met."""
        self.diverged = False
        self.seals = seals(self.database)
        self.next_seal = next(self.seals, None)
        self.digests = digests(self.database)
        self.next_digest = next(self.digests, None)
        self.first_digest = None if self.next_digest is None else self.next_digest.sequence
        """Where the digests begin: a store sealed before they were kept has none before."""
        self.since = 0
        """The sequence of the last seal met (0: the start)."""
        self.events_sealed = 0
        self.seals_checked = 0
        self.streams: dict[UUID, tuple[str, int]] = {}
        """Aggregate -> its kind (the stored names' prefix) and last version seen."""
        self.view = _balances_view(self.database)
        self.view_balances: dict[UUID, Balance] | None = None
        """The accounts' balances as the events stand at the view's position."""

    def run(self, progress: Progress | None) -> Verdict:
        stop = log_end(self.store)
        if self.anchor is not None and self.anchor.sequence == 0:
            self._compare_anchor(self.anchor)
        if progress is not None:
            progress(0, stop)
        try:
            for page in stored_rows(self.store, after=0, stop=stop, size=VERIFY_PAGE_SIZE):
                for row in page:
                    self._row(row)
                if progress is not None:
                    progress(page[-1].sequence, stop)
        except MalformedRow as error:
            # A row that cannot be framed breaks the chain, and the ledger
            # folded up to it is not a ledger: nothing more can be judged.
            self.problems.add(ProblemKind.ROW, error.sequence, str(error))
        else:
            self._seals_after_the_log()
            self._digests_after_the_log(stop)
            self._anchor_not_reached()
            self._balances_at(None)
            self.ledger.finish()
            self._compare_accounts()
            self._compare_view(stop)
        return Verdict(
            ok=self.problems.count == 0,
            head=self.chain.head.hex(),
            sequence=self.chain.sequence,
            events=self.chain.events,
            seals_checked=self.seals_checked,
            unsealed_events=self.chain.events - self.events_sealed,
            problems=self.problems.kept,
            problem_count=self.problems.count,
        )

    # One row ------------------------------------------------------------------------

    def _row(self, row: StoredRow) -> None:
        self._balances_at(row.sequence)
        self._seals_before(row.sequence)
        self._check_digest(row)
        self.chain = extend(self.chain, row)
        self.checked = extend(self.checked, row) if self.diverged else self.chain
        if self.anchor is not None and self.anchor.sequence == row.sequence:
            self._compare_anchor(self.anchor)
        if self.next_seal is not None and self.next_seal.sequence == row.sequence:
            self._compare_seal(self.next_seal)
            self.next_seal = next(self.seals, None)
        event = self._decode(row)
        if event is not None and self._in_order(row.sequence, event):
            self.ledger.apply(row.sequence, event)

    def _decode(self, row: StoredRow) -> Event | None:
        try:
            originator_id = self._originator_id(row.originator_id)
            stored = StoredEvent(
                originator_id=originator_id,
                originator_version=row.originator_version,
                topic=row.topic.decode(),
                state=row.state,
            )
            event = self.store.application.mapper.to_domain_event(stored)
        except ValueError as error:  # the mapper's errors, a bad id, text that is not UTF-8
            self.problems.add(
                ProblemKind.DECODE, row.sequence, f"the event does not decode: {error}"
            )
            return None
        if not isinstance(event, Event):  # pragma: no cover - the mapper decodes ledger events
            raise TypeError(f"event {row.sequence} decoded to {type(event).__name__}")
        return event

    def _originator_id(self, stored: bytes) -> UUID:
        if self.database.postgres:
            return UUID(bytes=stored)
        text = stored.decode()
        originator_id = UUID(text)
        # The store finds a stream by its id's text: another spelling of the
        # same UUID is an event no aggregate would ever load.
        if originator_id.hex != text:
            raise ValueError(f"the id {text!r} is not written as the store writes ids")
        return originator_id

    def _in_order(self, sequence: int, event: Event) -> bool:
        """Whether `event` is the next event of its aggregate; a problem if not."""
        kind = KIND_OF[event.stored_name]
        seen = self.streams.get(event.originator_id)
        if seen is not None and seen[1] < 0:
            return False  # out of order already: named once, where it showed
        expected = 1 if seen is None else seen[1] + 1
        if seen is not None and seen[0] != kind:
            message = f"a {kind} event in the stream of {seen[0]} {event.originator_id}"
        elif event.originator_version != expected:
            message = (
                f"{kind} {event.originator_id} has version {event.originator_version} "
                f"where {expected} comes next"
            )
        else:
            self.streams[event.originator_id] = (kind, expected)
            return True
        self.streams[event.originator_id] = (kind, -1)
        self.ledger.broken.add(event.originator_id)
        self.problems.add(ProblemKind.STREAM, sequence, message)
        return False

    # Seals and anchor -----------------------------------------------------------------

    def _compare_seal(self, seal: Seal) -> None:
        self.seals_checked += 1
        if seal.link != self.checked:
            self.problems.add(
                ProblemKind.CHAIN,
                seal.sequence,
                f"the events after {self.since} up to {seal.sequence} do not lead to the seal "
                f"at {seal.sequence}: an event there, or the seal, was changed, removed, added "
                "or moved",
                since=self.since,
            )
            # Go on from the seal: a later range is judged on its own.
            self.checked = seal.link
            self.diverged = True
        self.since = seal.sequence
        self.events_sealed = self.chain.events

    def _check_digest(self, row: StoredRow) -> None:
        """Name the very event a change touched, where its digest was kept when chained."""
        while self.next_digest is not None and self.next_digest.sequence < row.sequence:
            self._missing(self.next_digest.sequence)
            self.next_digest = next(self.digests, None)
        if self.next_digest is not None and self.next_digest.sequence == row.sequence:
            if self.next_digest.digest != digest_of(row):
                self._exactly(row.sequence, "is not the event chained there: changed, or moved")
            self.next_digest = next(self.digests, None)
        elif (
            self.next_digest is not None
            and self.first_digest is not None
            and row.sequence > self.first_digest
        ):
            self._exactly(row.sequence, "was not in the log when it was chained: added")

    def _digests_after_the_log(self, stop: int) -> None:
        """Digests of events up to the log's end that no row reached: those events are gone."""
        while self.next_digest is not None and self.next_digest.sequence <= stop:
            self._missing(self.next_digest.sequence)
            self.next_digest = next(self.digests, None)

    def _missing(self, sequence: int) -> None:
        self._exactly(sequence, "was chained and is missing from the log: removed, or moved")

    def _exactly(self, sequence: int, what: str) -> None:
        self.problems.add(
            ProblemKind.CHAIN, sequence, f"event {sequence} {what}", since=sequence - 1
        )

    def _seals_before(self, sequence: int) -> None:
        """Seals of sequences before `sequence` that no event holds."""
        while self.next_seal is not None and self.next_seal.sequence < sequence:
            self._no_event_at(self.next_seal)
            self.next_seal = next(self.seals, None)

    def _seals_after_the_log(self) -> None:
        """Seals past the last event: the events they sealed are gone.

        Read before the log's end: a seal stored meanwhile, by a process
        sealing what was appended since the pass began, is not beyond it.
        """
        remaining = [] if self.next_seal is None else [self.next_seal, *self.seals]
        end = log_end(self.store)
        for seal in remaining:
            if seal.sequence > end:
                self._no_event_at(seal)

    def _no_event_at(self, seal: Seal) -> None:
        self.problems.add(
            ProblemKind.SEAL,
            seal.sequence,
            f"the seal at {seal.sequence} names an event the log does not hold",
        )

    def _compare_anchor(self, anchor: Anchor) -> None:
        if self.chain.head != anchor.head:
            self.problems.add(
                ProblemKind.ANCHOR,
                anchor.sequence,
                f"the chain's head after event {anchor.sequence} is {self.chain.head.hex()}, "
                f"not the anchor's {anchor.head.hex()}",
                since=0,
            )

    def _anchor_not_reached(self) -> None:
        if self.anchor is not None and self.anchor.sequence > self.chain.sequence:
            self.problems.add(
                ProblemKind.ANCHOR,
                self.anchor.sequence,
                f"the log ends at {self.chain.sequence}, before the anchor",
            )

    # The store's accounts and the balances view ----------------------------------------

    def _balances_at(self, sequence: int | None) -> None:
        """Keep the accounts' balances once the events up to the view's position are read:
        before the first event after it (`sequence`), or at the log's end (None).
        """
        if self.view is None or self.view_balances is not None:
            return
        if sequence is None or sequence > self.view.position:
            self.view_balances = self.ledger.balances()

    def _compare_accounts(self) -> None:
        """Each account as its events add up against the store's, loaded through its snapshots."""
        repository = self.store.application.repository
        for account_id, folded in self.ledger.accounts.items():
            if account_id in self.ledger.broken:
                continue
            try:
                stored: Account = repository.get(
                    account_id, version=folded.version, projector_func=Account.project
                )
            except (*APPLY_ERRORS, ValueError, EventSourcingError) as error:
                self.problems.add(
                    ProblemKind.ACCOUNT, None, f"account {folded.name} does not load: {error}"
                )
                continue
            for name in ("total", "reservations", "commitments"):
                mine, theirs = getattr(folded, name), getattr(stored, name)
                if mine != theirs:
                    self.problems.add(
                        ProblemKind.ACCOUNT,
                        None,
                        f"account {folded.name}: {name} {mine} summed from its events, "
                        f"{theirs} as the store loads it",
                    )

    def _compare_view(self, stop: int) -> None:
        if self.view is None or self.view_balances is None:
            return
        if self.view.position > stop:
            self.problems.add(
                ProblemKind.VIEW,
                None,
                f"the balances view stands at event {self.view.position}, "
                f"past the log's end at {stop}",
            )
            return
        at = self.view.position
        expected, shown = self.view_balances, self.view.rows
        for account_id in sorted(shown.keys() - expected.keys() - self.ledger.broken, key=str):
            name = shown[account_id].name
            self.problems.add(ProblemKind.VIEW, None, f"account {name} is in the view only")
        for account_id, mine in expected.items():
            theirs = shown.get(account_id)
            if theirs is None:
                message = f"account {mine.name} is missing from the balances view at event {at}"
                self.problems.add(ProblemKind.VIEW, None, message)
                continue
            for field in ("total", "reserved", "committed", "available"):
                viewed, summed = getattr(theirs, field), getattr(mine, field)
                if viewed != summed:
                    self.problems.add(
                        ProblemKind.VIEW,
                        None,
                        f"account {mine.name}: {field} {viewed} in the balances view at event "
                        f"{at}, {summed} from its events",
                    )


def _balances_view(database: Database) -> _BalancesSeen | None:
    """The balances view's rows and position, read together; None if there is no view."""
    view = BalancesView(database)
    with database.snapshot() as cursor:
        if not database.has_table(cursor, BALANCES.name):
            return None
        tracked = view.tracking.read(cursor)
        if tracked is None:
            return None
        rows = {
            row.account_id: Balance(
                name=row.account, total=row.total, reserved=row.reserved, committed=row.committed
            )
            for row in BALANCES.select_all(database, cursor, BALANCES.name)
        }
    return _BalancesSeen(tracked.notification_id, rows)


def parse_anchor(text: str) -> Anchor:
    """`SEQUENCE:HEAD` (as `ledger audit head` prints them) as an anchor."""
    sequence, _, head = text.partition(":")
    try:
        parsed = Anchor(int(sequence), bytes.fromhex(head))
    except ValueError:
        parsed = None
    if parsed is None or parsed.sequence < 0 or len(parsed.head) != len(GENESIS.head):
        raise ValueError(f"{text!r} is not SEQUENCE:HEAD (a sequence and a 64-digit hex head)")
    return parsed
