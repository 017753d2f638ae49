"""The Account aggregate against a model of plain Decimals and dicts.

Every command the account accepts is mirrored in the model; every command
it must refuse is checked to leave the account, its version and its queue
of pending events exactly as they were.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from uuid import UUID, uuid4

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ledger.account import (
    Account,
    AccountOpened,
    Deposited,
    FeeCharged,
    FundsReserved,
    FundsSettled,
    PnlRealised,
    ReservationReleased,
    Withdrawn,
)
from ledger.errors import IllegalTransition, InsufficientFunds, InvalidValue, InvariantViolated
from ledger.events import Event
from ledger.money import Money

CURRENCY = "USD"
CENT = Decimal("0.01")
ZERO = Decimal("0.00")

cents = st.integers(min_value=1, max_value=10_000_000)
# Fees and P&L are kept smaller than deposits, so that the account is mostly
# solvent and reservations, settlements and closes actually happen.
deposit_cents = st.integers(min_value=10_000, max_value=10_000_000)
fee_cents = st.integers(min_value=1, max_value=5_000)
pnl_cents = st.integers(min_value=-50_000, max_value=50_000)

REFUSALS = [
    "reserve twice",
    "release unknown",
    "settle unknown",
    "release too much",
    "release negative",
    "other currency",
    "not positive",
]


def usd(amount: Decimal) -> Money:
    return Money(amount=amount, currency=CURRENCY)


def from_cents(count: int) -> Decimal:
    return Decimal(count).scaleb(-2)


def now() -> datetime:
    return datetime.now(UTC)


def fold_total(events: list[Event]) -> Decimal:
    """The account's total computed by hand: deposited + pnl - withdrawn - fees."""
    total = ZERO
    for event in events:
        if isinstance(event, Deposited | PnlRealised):
            total += event.amount.amount
        elif isinstance(event, Withdrawn | FeeCharged):
            total -= event.amount.amount
    return total


class AccountMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.account: Account
        self.events: list[Event] = []
        # The model.
        self.total = ZERO
        self.reservations: dict[UUID, Decimal] = {}
        self.commitments: dict[UUID, Decimal] = {}
        self.version = 0
        # True while available is below zero because a fact (fee, loss,
        # a settlement dearer than its reservation) took it there.
        self.deficit_by_fact = False
        # Deterministic ids: hypothesis must see the same choices when it replays.
        self.position_ids = [UUID(int=1_000 + n) for n in range(2)]
        self.next_intent = 0

    # Helpers ------------------------------------------------------------------

    def new_intent_id(self) -> UUID:
        self.next_intent += 1
        return UUID(int=self.next_intent)

    @property
    def model_available(self) -> Decimal:
        return (
            self.total
            - sum(self.reservations.values(), ZERO)
            - sum(self.commitments.values(), ZERO)
        )

    def accepted(self, event_class: type[Event], *, fact: bool) -> Event:
        """Collect the one event the last command must have emitted."""
        emitted = self.account.collect_events()
        assert [type(event) for event in emitted] == [event_class]
        (event,) = emitted
        self.version += 1
        assert event.originator_version == self.version
        assert event.originator_id == self.account.id
        self.events.append(event)
        available = self.model_available
        if available >= 0:
            self.deficit_by_fact = False
        elif fact:
            self.deficit_by_fact = True
        return event

    def refused(self, before: tuple[object, ...]) -> None:
        assert self.account.collect_events() == []
        assert self.snapshot() == before

    def snapshot(self) -> tuple[object, ...]:
        return (
            self.account.version,
            self.account.total,
            dict(self.account.reservations),
            dict(self.account.commitments),
        )

    def draw_amount(self, data: st.DataObject, around: Decimal) -> Decimal:
        """A positive amount of cents, often right at or just beyond `around`."""
        edge = int(around / CENT)
        choices = [cents]
        if edge >= 1:
            choices += [st.just(edge), st.integers(min_value=1, max_value=edge)]
        choices += [st.just(max(edge, 0) + 1)]
        return from_cents(data.draw(st.one_of(*choices)))

    # Rules --------------------------------------------------------------------

    @initialize(opening=st.one_of(st.just(0), deposit_cents))
    def open_account(self, opening: int) -> None:
        self.account = Account.open("machine", CURRENCY, recorded_at=now())
        self.accepted(AccountOpened, fact=False)
        if opening:
            self.deposit(opening)

    @rule(count=deposit_cents)
    def deposit(self, count: int) -> None:
        amount = from_cents(count)
        self.account.deposit(usd(amount), recorded_at=now())
        self.total += amount
        event = self.accepted(Deposited, fact=False)
        assert event.amount == usd(amount)

    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        amount = self.draw_amount(data, self.model_available)
        if amount > self.model_available:
            before = self.snapshot()
            with pytest.raises(InsufficientFunds):
                self.account.withdraw(usd(amount), recorded_at=now())
            self.refused(before)
            return
        self.account.withdraw(usd(amount), recorded_at=now())
        self.total -= amount
        self.accepted(Withdrawn, fact=False)
        assert self.model_available >= 0

    @rule(data=st.data())
    def reserve(self, data: st.DataObject) -> None:
        amount = self.draw_amount(data, self.model_available)
        intent_id = self.new_intent_id()
        if amount > self.model_available:
            before = self.snapshot()
            with pytest.raises(InsufficientFunds):
                self.account.reserve(intent_id, usd(amount), recorded_at=now())
            self.refused(before)
            return
        self.account.reserve(intent_id, usd(amount), recorded_at=now())
        self.reservations[intent_id] = amount
        event = self.accepted(FundsReserved, fact=False)
        assert event.amount == usd(amount)
        assert self.model_available >= 0

    @precondition(lambda self: self.reservations)
    @rule(data=st.data())
    def release_reservation(self, data: st.DataObject) -> None:
        intent_id = data.draw(st.sampled_from(list(self.reservations)))
        self.account.release_reservation(intent_id, recorded_at=now())
        amount = self.reservations.pop(intent_id)
        event = self.accepted(ReservationReleased, fact=False)
        assert event.amount == usd(amount)

    @precondition(lambda self: self.reservations)
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        intent_id = data.draw(st.sampled_from(list(self.reservations)))
        position_id = data.draw(st.sampled_from(self.position_ids))
        # What the fill cost: the reservation, or less, or more (slippage).
        amount = self.draw_amount(data, self.reservations[intent_id])
        self.account.settle(intent_id, position_id, usd(amount), recorded_at=now())
        reservation = self.reservations.pop(intent_id)
        self.commitments[position_id] = self.commitments.get(position_id, ZERO) + amount
        event = self.accepted(FundsSettled, fact=True)
        assert event.reservation == usd(reservation)
        assert event.amount == usd(amount)

    @rule(count=fee_cents)
    def charge_fee(self, count: int) -> None:
        amount = from_cents(count)
        self.account.charge_fee(usd(amount), "commission", recorded_at=now())
        self.total -= amount
        self.accepted(FeeCharged, fact=True)

    @rule(data=st.data(), pnl=pnl_cents)
    def realise_pnl(self, data: st.DataObject, pnl: int) -> None:
        # Mostly a position that holds a commitment; sometimes one that holds none.
        committed_positions = list(self.commitments)
        if committed_positions and data.draw(st.integers(0, 3)):
            position_id = data.draw(st.sampled_from(committed_positions))
        else:
            position_id = data.draw(st.sampled_from(self.position_ids))
        committed = self.commitments.get(position_id, ZERO)
        committed_cents = int(committed / CENT)
        released = from_cents(
            data.draw(
                st.one_of(
                    st.just(committed_cents),
                    st.integers(min_value=0, max_value=committed_cents),
                )
            )
        )
        amount = from_cents(pnl)
        self.account.realise_pnl(position_id, usd(amount), usd(released), recorded_at=now())
        self.total += amount
        remaining = committed - released
        if remaining == 0:
            self.commitments.pop(position_id, None)
        else:
            self.commitments[position_id] = remaining
        event = self.accepted(PnlRealised, fact=True)
        assert event.amount == usd(amount)
        assert event.released == usd(released)

    @rule(data=st.data(), refusal=st.sampled_from(REFUSALS))
    def refused_command(self, data: st.DataObject, refusal: str) -> None:
        """A command the account must refuse, leaving no trace."""
        before = self.snapshot()
        expected: type[Exception] = InvalidValue
        if refusal == "reserve twice":
            if not self.reservations:
                return
            intent_id = data.draw(st.sampled_from(list(self.reservations)))
            expected = IllegalTransition
            run = partial(self.account.reserve, intent_id, usd(CENT), recorded_at=now())
        elif refusal == "release unknown":
            expected = IllegalTransition
            run = partial(self.account.release_reservation, uuid4(), recorded_at=now())
        elif refusal == "settle unknown":
            expected = IllegalTransition
            run = partial(
                self.account.settle, uuid4(), self.position_ids[0], usd(CENT), recorded_at=now()
            )
        elif refusal == "release too much":
            position_id = data.draw(st.sampled_from(self.position_ids))
            released = self.commitments.get(position_id, ZERO) + from_cents(data.draw(cents))
            run = partial(
                self.account.realise_pnl, position_id, usd(ZERO), usd(released), recorded_at=now()
            )
        elif refusal == "release negative":
            run = partial(
                self.account.realise_pnl,
                self.position_ids[0],
                usd(ZERO),
                usd(-from_cents(data.draw(cents))),
                recorded_at=now(),
            )
        elif refusal == "other currency":
            eur = Money(amount=from_cents(data.draw(cents)), currency="EUR")
            command = data.draw(st.sampled_from(["deposit", "withdraw", "charge_fee"]))
            arguments = ("fee",) if command == "charge_fee" else ()
            run = partial(getattr(self.account, command), eur, *arguments, recorded_at=now())
        else:
            amount = usd(from_cents(data.draw(st.integers(min_value=-10_000, max_value=0))))
            run = data.draw(
                st.sampled_from(
                    [
                        partial(self.account.deposit, amount, recorded_at=now()),
                        partial(self.account.withdraw, amount, recorded_at=now()),
                        partial(self.account.reserve, uuid4(), amount, recorded_at=now()),
                        partial(self.account.charge_fee, amount, "fee", recorded_at=now()),
                    ]
                )
            )
        with pytest.raises(expected):
            run()
        self.refused(before)

    # Invariants ---------------------------------------------------------------

    @invariant()
    def balances_match_the_model(self) -> None:
        account = self.account
        assert account.total == usd(self.total)
        assert account.reservations == {key: usd(v) for key, v in self.reservations.items()}
        assert account.commitments == {key: usd(v) for key, v in self.commitments.items()}
        assert account.reserved == usd(sum(self.reservations.values(), ZERO))
        assert account.committed == usd(sum(self.commitments.values(), ZERO))
        assert account.available == usd(self.model_available)
        assert account.available == account.total - account.reserved - account.committed
        assert account.version == self.version

    @invariant()
    def available_is_negative_only_by_fact(self) -> None:
        assert self.account.available.amount >= 0 or self.deficit_by_fact

    @invariant()
    def total_is_the_sum_of_events(self) -> None:
        assert self.account.total == usd(fold_total(self.events))

    @invariant()
    def reload_gives_the_same_account(self) -> None:
        reloaded = Account.project(None, self.events)
        assert reloaded is not None
        assert reloaded.id == self.account.id
        assert reloaded.version == self.account.version
        assert reloaded.total == self.account.total
        assert reloaded.reservations == self.account.reservations
        assert reloaded.commitments == self.account.commitments
        assert reloaded.name == "machine"
        assert reloaded.currency == CURRENCY


# A little more than the other machines: funds must be reserved, settled and
# then released for the commitment rules to be exercised, and runs are cheap.
AccountMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestAccountMachine = AccountMachine.TestCase


@pytest.mark.parametrize(
    ("held", "problem"),
    [
        (Money.parse("5", "EUR"), r"^reservation .* in EUR$"),
        (Money.parse("0", "USD"), r"^reservation .*: 0.00 USD$"),
    ],
)
def test_a_stored_history_that_breaks_the_books_is_refused_on_load(held, problem):
    account_id, moment = uuid4(), datetime(2026, 1, 5, tzinfo=UTC)
    opened = AccountOpened(
        originator_id=account_id, originator_version=1, recorded_at=moment, name="m", currency="USD"
    )
    reserved = FundsReserved(
        originator_id=account_id,
        originator_version=2,
        recorded_at=moment,
        intent_id=uuid4(),
        amount=held,
    )
    with pytest.raises(InvariantViolated, match=problem):
        Account.project(None, [opened, reserved])


def test_an_event_of_another_aggregate_or_out_of_order_is_refused_on_load():
    account_id, moment = uuid4(), datetime(2026, 1, 5, tzinfo=UTC)
    opened = AccountOpened(
        originator_id=account_id, originator_version=1, recorded_at=moment, name="m", currency="USD"
    )
    account = Account.project(None, [opened])
    assert account is not None
    foreign = Deposited(
        originator_id=uuid4(), originator_version=2, recorded_at=moment, amount=usd(Decimal(1))
    )
    with pytest.raises(InvariantViolated, match="belongs to another aggregate"):
        Account.project(account, [foreign])
    skipped = Deposited(
        originator_id=account_id, originator_version=3, recorded_at=moment, amount=usd(Decimal(1))
    )
    with pytest.raises(InvariantViolated, match=r"^Deposited v3 after v1$"):
        Account.project(account, [skipped])
