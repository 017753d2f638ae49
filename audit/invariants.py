"""The ledger's invariants, over its events folded by the aggregates' own rules.

`Ledger` applies each event to its account, intent or position exactly as
the store's repository does when it loads one (`Aggregate.project`), so an
event that cannot happen to its aggregate (a reservation released that was
never made, a close of more than is open) is named at its sequence, and so
is any event after a position's close or an intent's end. `finish` then
checks what holds across aggregates once every transaction read is whole:

- the reservations an account holds are those its intents in flight
  record, amount for amount, and no other;
- a completed intent has the ledger events its kind implies: a deposit or
  withdrawal of its amount, its position opened and its funds settled, a
  closing fill of its position, or level changes matching its request;
- a position was opened by a completed opening intent (whose id it is
  derived from), or adopted from the broker: provenance adopted, no
  intent, flagged external;
- a closed position holds no funds, an open one holds its cost, and the
  P&L its fills realised is the P&L its account realised for it.

Events of other kinds (reconciliation reports, risk controls) are checked
only as streams (see `verify`).
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import NamedTuple, TypeVar
from uuid import UUID

from audit.problems import ProblemKind, Problems
from audit.records import KIND_OF, Kind
from ledger.account import Account, Deposited, FundsSettled, PnlRealised, Withdrawn
from ledger.aggregate import Aggregate
from ledger.errors import InvariantViolated, LedgerError
from ledger.events import Event
from ledger.idempotency import KeyedRequest, request_id
from ledger.intent import (
    BalanceChange,
    CloseRequest,
    Intent,
    IntentKind,
    IntentStatus,
    ProtectionChange,
)
from ledger.money import Money
from ledger.position import (
    ClosingFill,
    Position,
    PositionFlag,
    PositionFlagged,
    Provenance,
    StopLossChanged,
    TakeProfitChanged,
    position_id,
)

A = TypeVar("A", bound=Aggregate)

APPLY_ERRORS = (LedgerError, InvariantViolated, LookupError, ArithmeticError)
"""What an aggregate raises for an event its rules do not allow (a missing key included)."""


class Balance(NamedTuple):
    """An account's money, as its events add it up."""

    name: str
    total: Decimal
    reserved: Decimal
    committed: Decimal

    @property
    def available(self) -> Decimal:
        return self.total - self.reserved - self.committed


class Ledger:
    """The accounts, intents and positions the events describe, and facts linking them."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.accounts: dict[UUID, Account] = {}
        self.intents: dict[UUID, Intent] = {}
        self.positions: dict[UUID, Position] = {}
        self.broken: set[UUID] = set()
        """Aggregates an event could not be applied to: left out of every later check."""
        self.completed_at: dict[UUID, int] = {}
        """Completed intents, and the sequence of the event that completed each."""
        self.moved: dict[UUID, Deposited | Withdrawn] = {}
        """The deposit or withdrawal each balance intent made."""
        self.settled: set[UUID] = set()
        """Intents whose reservation became a position's cost."""
        self.closed_by: defaultdict[UUID, set[UUID]] = defaultdict(set)
        """Intent -> the positions a closing fill carrying its id closed part of."""
        self.level_changes: list[tuple[int, StopLossChanged | TakeProfitChanged]] = []
        """Changes of a stop-loss or take-profit made by an intent, with their sequences."""
        self.realised: defaultdict[UUID, Decimal] = defaultdict(Decimal)
        """Position -> the P&L its account realised for it."""
        self.external: set[UUID] = set()
        """Positions ever flagged external: adopted from the broker."""
        self.requests: dict[UUID, KeyedRequest] = {}
        """Idempotency keys, each with the intent it names and the answer kept for it."""

    def apply(self, sequence: int, event: Event) -> None:
        kind = KIND_OF[event.stored_name]
        if kind is Kind.ACCOUNT:
            self._account(sequence, event)
        elif kind is Kind.INTENT:
            self._intent(sequence, event)
        elif kind is Kind.POSITION:
            self._position(sequence, event)
        elif kind is Kind.REQUEST:
            self._fold(self.requests, KeyedRequest, ProblemKind.REQUEST, sequence, event)

    def balances(self) -> dict[UUID, Balance]:
        """Every account's money as its events so far add it up."""
        return {
            account_id: Balance(
                name=account.name,
                total=account.total.amount,
                reserved=account.reserved.amount,
                committed=account.committed.amount,
            )
            for account_id, account in self.accounts.items()
            if account_id not in self.broken
        }

    # Folding ----------------------------------------------------------------------

    def _fold(
        self,
        aggregates: dict[UUID, A],
        aggregate_class: type[A],
        kind: ProblemKind,
        sequence: int,
        event: Event,
    ) -> bool:
        """Apply `event` to its aggregate; False (and a problem) if it does not apply."""
        if event.originator_id in self.broken:
            return False
        try:
            folded = aggregate_class.project(aggregates.get(event.originator_id), [event])
        except APPLY_ERRORS as error:
            self.broken.add(event.originator_id)
            name = aggregate_class.__name__.lower()
            self.problems.add(
                kind,
                sequence,
                f"{event.stored_name} does not apply to {name} {event.originator_id}: {error}",
            )
            return False
        if folded is not None:
            aggregates[event.originator_id] = folded
        return True

    def _account(self, sequence: int, event: Event) -> None:
        if not self._fold(self.accounts, Account, ProblemKind.ACCOUNT, sequence, event):
            return
        match event:
            case Deposited() | Withdrawn() if event.intent_id is not None:
                self.moved[event.intent_id] = event
            case FundsSettled():
                self.settled.add(event.intent_id)
            case PnlRealised():
                self.realised[event.position_id] += event.amount.amount
            case _:
                pass

    def _intent(self, sequence: int, event: Event) -> None:
        held = self.intents.get(event.originator_id)
        if held is not None and held.is_terminal and event.originator_id not in self.broken:
            self.broken.add(event.originator_id)
            self.problems.add(
                ProblemKind.INTENT,
                sequence,
                f"{event.stored_name} follows the end ({held.status}) "
                f"of intent {event.originator_id}",
            )
            return
        if not self._fold(self.intents, Intent, ProblemKind.INTENT, sequence, event):
            return
        intent = self.intents[event.originator_id]
        if intent.status is IntentStatus.COMPLETED:
            self.completed_at.setdefault(intent.id, sequence)

    def _position(self, sequence: int, event: Event) -> None:
        held = self.positions.get(event.originator_id)
        if held is not None and not held.is_open and event.originator_id not in self.broken:
            self.broken.add(event.originator_id)
            self.problems.add(
                ProblemKind.POSITION,
                sequence,
                f"{event.stored_name} follows the close of position {event.originator_id}",
            )
            return
        if not self._fold(self.positions, Position, ProblemKind.POSITION, sequence, event):
            return
        match event:
            case ClosingFill() if event.intent_id is not None:
                self.closed_by[event.intent_id].add(event.originator_id)
            case StopLossChanged() | TakeProfitChanged() if event.intent_id is not None:
                self.level_changes.append((sequence, event))
            case PositionFlagged() if event.flag is PositionFlag.EXTERNAL:
                self.external.add(event.originator_id)
            case _:
                pass

    # Across aggregates, once the log is read ------------------------------------------

    def finish(self) -> None:
        reserving: defaultdict[UUID, dict[UUID, Money]] = defaultdict(dict)
        for intent in self._sound(self.intents):
            if intent.account_id not in self.accounts:
                self._problem(ProblemKind.INTENT, f"intent {intent.id} names no account in the log")
            if intent.reservation is not None and not intent.is_terminal:
                reserving[intent.account_id][intent.id] = intent.reservation
            if intent.id in self.completed_at:
                self._check_completed(intent)
        for account in self._sound(self.accounts):
            self._check_reservations(account, reserving[account.id])
            self._check_commitments(account)
        for intent_id, moved in self.moved.items():
            self._check_moved(intent_id, moved)
        for sequence, change in self.level_changes:
            self._check_level_change(sequence, change)
        for held in self._sound(self.positions):
            self._check_position(held)
        self._check_requests()

    def _sound(self, aggregates: dict[UUID, A]) -> list[A]:
        return [held for key, held in aggregates.items() if key not in self.broken]

    def _check_reservations(self, account: Account, expected: dict[UUID, Money]) -> None:
        """`expected`: what the account's intents in flight reserve."""
        for intent_id, amount in account.reservations.items():
            intent = self.intents.get(intent_id)
            if intent_id in self.broken:
                continue
            if intent is None or intent.account_id != account.id:
                found = "not in the log" if intent is None else "of another account"
                self._problem(
                    ProblemKind.RESERVATION,
                    f"account {account.name} holds {amount} for intent {intent_id}, {found}",
                )
            elif intent.is_terminal:
                self._problem(
                    ProblemKind.RESERVATION,
                    f"account {account.name} holds {amount} for intent {intent_id}, "
                    f"which is {intent.status}",
                )
            elif expected.get(intent_id) != amount:
                self._problem(
                    ProblemKind.RESERVATION,
                    f"account {account.name} holds {amount} for intent {intent_id}, "
                    f"which reserves {intent.reservation}",
                )
        for intent_id, amount in expected.items():
            if intent_id not in account.reservations:
                self._problem(
                    ProblemKind.RESERVATION,
                    f"intent {intent_id} in flight reserves {amount}; "
                    f"account {account.name} holds nothing for it",
                )

    def _check_commitments(self, account: Account) -> None:
        for position, amount in account.commitments.items():
            held = self.positions.get(position)
            if position in self.broken:
                continue
            if held is None or held.account_id != account.id:
                found = "not in the log" if held is None else "of another account"
                self._problem(
                    ProblemKind.POSITION,
                    f"account {account.name} holds {amount} for position {position}, {found}",
                )
            elif not held.is_open:
                self._problem(
                    ProblemKind.POSITION,
                    f"account {account.name} still holds {amount} for closed position {position}",
                )

    def _check_completed(self, intent: Intent) -> None:
        payload = intent.payload
        missing = None
        if intent.kind in {IntentKind.BALANCE_ADD, IntentKind.BALANCE_DEDUCT}:
            if intent.id not in self.moved:
                verb = "deposit" if intent.kind is IntentKind.BALANCE_ADD else "withdrawal"
                missing = f"no {verb}"
        elif intent.kind is IntentKind.POSITION_OPEN:
            opened = self.positions.get(position_id(intent.id))
            if opened is None or opened.intent_id != intent.id:
                missing = f"no position {position_id(intent.id)} opened by it"
            elif intent.id not in self.settled:
                missing = "no funds settled for it"
        elif isinstance(payload, CloseRequest):
            if payload.position_id not in self.closed_by.get(intent.id, set()):
                missing = f"no closing fill of position {payload.position_id}"
        elif isinstance(payload, ProtectionChange) and payload.position_id not in self.positions:
            missing = f"no position {payload.position_id}"
        if missing is not None:
            self._problem(
                ProblemKind.INTENT,
                f"completed {intent.kind} intent {intent.id} has {missing}",
                self.completed_at[intent.id],
            )

    def _check_moved(self, intent_id: UUID, moved: Deposited | Withdrawn) -> None:
        """A deposit or withdrawal names the completed balance intent of its account and amount."""
        if moved.originator_id in self.broken or intent_id in self.broken:
            return
        intent = self.intents.get(intent_id)
        kind = IntentKind.BALANCE_ADD if isinstance(moved, Deposited) else IntentKind.BALANCE_DEDUCT
        if (
            intent is None
            or intent.kind is not kind
            or intent.status is not IntentStatus.COMPLETED
            or intent.account_id != moved.originator_id
            or not isinstance(intent.payload, BalanceChange)
            or intent.payload.amount != moved.amount
        ):
            self._problem(
                ProblemKind.INTENT,
                f"{moved.stored_name} {moved.amount} of account {moved.originator_id} v"
                f"{moved.originator_version} is not what completed {kind} intent {intent_id} asked",
            )

    def _check_level_change(
        self, sequence: int, change: StopLossChanged | TakeProfitChanged
    ) -> None:
        """A stop-loss or take-profit an intent changed is the level its request asked for."""
        if change.originator_id in self.broken or change.intent_id in self.broken:
            return
        intent = self.intents.get(change.intent_id) if change.intent_id else None
        payload = None if intent is None else intent.payload
        asked = None
        if isinstance(payload, ProtectionChange):
            stop_loss = isinstance(change, StopLossChanged)
            asked = payload.stop_loss if stop_loss else payload.take_profit
        if (
            not isinstance(payload, ProtectionChange)
            or payload.position_id != change.originator_id
            or change.intent_id not in self.completed_at
            or asked != change.new
        ):
            self._problem(
                ProblemKind.INTENT,
                f"{change.stored_name} to {change.new} of position {change.originator_id} is not "
                f"what completed update intent {change.intent_id} asked",
                sequence,
            )

    def _check_position(self, held: Position) -> None:
        origin = self._origin_missing(held)
        if origin is not None:
            self._problem(ProblemKind.POSITION, f"position {held.id} {origin}")
        account = self.accounts.get(held.account_id)
        if account is None:
            if held.account_id not in self.broken:
                self._problem(
                    ProblemKind.POSITION, f"position {held.id} names no account in the log"
                )
            return
        if held.account_id in self.broken:
            return
        if held.is_open and held.id not in account.commitments:
            self._problem(
                ProblemKind.POSITION,
                f"open position {held.id}: account {account.name} holds no funds for it",
            )
        realised = self.realised.get(held.id, Decimal(0))
        if held.realised_pnl.amount != realised:
            self._problem(
                ProblemKind.POSITION,
                f"position {held.id} realised {held.realised_pnl}; "
                f"account {account.name} realised {realised} for it",
            )

    def _origin_missing(self, held: Position) -> str | None:
        """What is wrong with where `held` came from, or None."""
        if held.provenance is Provenance.ADOPTED:
            return self._adoption_missing(held)
        intent = self.intents.get(held.intent_id) if held.intent_id else None
        if intent is None or intent.kind is not IntentKind.POSITION_OPEN:
            return f"names no opening intent in the log ({held.intent_id})"
        if intent.id not in self.completed_at:
            return f"was opened by intent {intent.id}, which is {intent.status}"
        if position_id(intent.id) != held.id or intent.account_id != held.account_id:
            return f"is not the position intent {intent.id} opens ({position_id(intent.id)})"
        return None

    def _adoption_missing(self, held: Position) -> str | None:
        if held.intent_id is not None:
            return f"is adopted, yet names intent {held.intent_id}"
        if held.id not in self.external:
            return "is adopted, yet was never flagged external"
        return None

    def _check_requests(self) -> None:
        for request in self._sound(self.requests):
            self._check_request(request)
        for intent in self._sound(self.intents):
            self._check_keyed(intent)

    def _check_request(self, request: KeyedRequest) -> None:
        intent = self.intents.get(request.intent_id)
        named = f"idempotency key {request.key!r} of {request.actor}"
        if intent is None:
            self._problem(
                ProblemKind.REQUEST, f"{named} names intent {request.intent_id}, not in the log"
            )
            return
        origin = intent.origin
        if origin is None or (origin.actor, origin.key) != (request.actor, request.key):
            self._problem(ProblemKind.REQUEST, f"{named} names intent {intent.id}, sent without it")
        elif request.result is not None and request.result.status != intent.status:
            self._problem(
                ProblemKind.REQUEST,
                f"{named} kept the answer {request.result.status}; intent {intent.id} is "
                f"{intent.status}",
            )

    def _check_keyed(self, intent: Intent) -> None:
        origin = intent.origin
        if origin is None or origin.key is None:
            return
        if request_id(origin.actor, origin.key) not in self.requests:
            self._problem(
                ProblemKind.REQUEST,
                f"intent {intent.id} was sent with idempotency key {origin.key!r}, "
                "which has no record",
            )

    def _problem(self, kind: ProblemKind, message: str, sequence: int | None = None) -> None:
        self.problems.add(kind, sequence, message)
