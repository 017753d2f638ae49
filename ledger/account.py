"""The Account aggregate: a balance in one currency, its reservations and commitments.

Three numbers describe an account:

- `total`: deposits - withdrawals + realised P&L - fees (the sum of its events);
- `reserved`: held for intents whose broker outcome is not known yet;
- `committed`: cost, margin or stake of open positions.

`available = total - reserved - committed`. The ledger's own decisions (a
withdrawal, a reservation) never take `available` below zero. Facts the
broker reports (a loss beyond the margin, a fee) are recorded as they
happened even when they do; the account then shows a deficit rather than
a history that was edited to look solvent.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import ClassVar, Self
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec

from ledger.aggregate import Aggregate
from ledger.errors import IllegalTransition, InsufficientFunds, InvalidValue, shown
from ledger.events import Event
from ledger.invariants import invariant
from ledger.money import Money, currency

# Accounts are named by people; their ids are derived from the name so the
# same name always addresses the same stream, on every machine.
ACCOUNT_NAMESPACE = uuid5(NAMESPACE_URL, "ledger:account")
ACCOUNT_NAME_LENGTH_MAX = 64


def account_id(name: str) -> UUID:
    """The stream id of the account called `name`."""
    return uuid5(ACCOUNT_NAMESPACE, validate_account_name(name))


def validate_account_name(name: str) -> str:
    if not 1 <= len(name) <= ACCOUNT_NAME_LENGTH_MAX or not all(
        character.isalnum() or character in "-_." for character in name
    ):
        raise InvalidValue(
            "account",
            f"{shown(name)} must be 1-{ACCOUNT_NAME_LENGTH_MAX} letters, digits, '-', '_', '.'",
        )
    return name


class AccountOpened(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "account.opened"
    name: str
    currency: str


class Deposited(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "account.deposited"
    amount: Money
    intent_id: UUID | None = None


class Withdrawn(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "account.withdrawn"
    amount: Money
    intent_id: UUID | None = None


class FundsReserved(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "account.funds_reserved"
    intent_id: UUID
    amount: Money


class ReservationReleased(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "account.reservation_released"
    intent_id: UUID
    amount: Money


class FundsSettled(Event, frozen=True, kw_only=True):
    """The reservation of `intent_id` turned into the position's cost, margin or stake."""

    stored_name: ClassVar[str] = "account.funds_settled"
    intent_id: UUID
    position_id: UUID
    reservation: Money
    amount: Money


class FundsCommitted(Event, frozen=True, kw_only=True):
    """`amount` more committed to a position, with no reservation before it.

    For a position adopted from the broker, and for a later fill of an
    opening order (the rest of a partial fill), which the broker holds
    funds for whether or not the ledger reserved them.
    """

    stored_name: ClassVar[str] = "account.funds_committed"
    position_id: UUID
    amount: Money


class FeeCharged(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "account.fee_charged"
    amount: Money
    reason: str
    intent_id: UUID | None = None
    position_id: UUID | None = None


class PnlRealised(Event, frozen=True, kw_only=True):
    """A close realised `amount` and freed `released` of the position's commitment."""

    stored_name: ClassVar[str] = "account.pnl_realised"
    position_id: UUID
    amount: Money
    released: Money
    intent_id: UUID | None = None


class Held(msgspec.Struct, frozen=True, kw_only=True):
    """Money held against one intent (a reservation) or one position (a commitment)."""

    key: UUID
    amount: Money


class DayUsage(msgspec.Struct, frozen=True, kw_only=True):
    """What an account did on one UTC day, as its risk limits count it (see `ledger.limits`).

    The same counts as the daily risk view's, kept on the account itself
    so that the engine checks limits against state exact at its commit,
    not a view that may lag behind.
    """

    day: date
    opened: int
    """Positions opened (or adopted) that day."""
    net_pnl: Money
    """P&L realised that day, less that day's fees."""


class AccountSnapshot(Event, frozen=True, kw_only=True):
    """The whole state of an account at a version, so loading skips older events."""

    stored_name: ClassVar[str] = "account.snapshot"
    name: str
    currency: str
    total: Money
    reservations: list[Held]
    commitments: list[Held]
    today: DayUsage | None = None

    @classmethod
    def take(cls, account: Account) -> AccountSnapshot:
        """Called by eventsourcing's application when a snapshot is due."""
        return cls(
            originator_id=account.id,
            originator_version=account.version,
            recorded_at=account.modified_at,
            name=account.name,
            currency=account.currency,
            total=account.total,
            reservations=[Held(key=k, amount=v) for k, v in account.reservations.items()],
            commitments=[Held(key=k, amount=v) for k, v in account.commitments.items()],
            today=account.today,
        )


ACCOUNT_EVENTS: tuple[type[Event], ...] = (
    AccountOpened,
    Deposited,
    Withdrawn,
    FundsReserved,
    ReservationReleased,
    FundsSettled,
    FundsCommitted,
    FeeCharged,
    PnlRealised,
    AccountSnapshot,
)


class Account(Aggregate):
    """A trading account's cash, in one currency."""

    Snapshot: ClassVar[type[AccountSnapshot]] = AccountSnapshot

    name: str
    currency: str
    total: Money
    reservations: dict[UUID, Money]
    commitments: dict[UUID, Money]
    modified_at: datetime
    today: DayUsage | None
    """The day of the account's last event that counts for risk limits, None before any."""

    @classmethod
    def open(cls, name: str, currency_code: str, *, recorded_at: datetime) -> Self:
        currency(currency_code)
        account = cls._blank(account_id(name), version=0)
        account._trigger(AccountOpened, recorded_at=recorded_at, name=name, currency=currency_code)
        return account

    @property
    def reserved(self) -> Money:
        return sum(self.reservations.values(), Money.zero(self.currency))

    @property
    def committed(self) -> Money:
        return sum(self.commitments.values(), Money.zero(self.currency))

    @property
    def available(self) -> Money:
        return self.total - self.reserved - self.committed

    def usage_on(self, day: date) -> DayUsage:
        """What counts against the daily limits on `day` (nothing yet, for a new day)."""
        if self.today is not None and self.today.day == day:
            return self.today
        return DayUsage(day=day, opened=0, net_pnl=Money.zero(self.currency))

    # Commands -----------------------------------------------------------------

    def deposit(
        self, amount: Money, *, recorded_at: datetime, intent_id: UUID | None = None
    ) -> None:
        self._check_positive(amount, "amount")
        self._check_total_after(amount)
        self._trigger(Deposited, recorded_at=recorded_at, amount=amount, intent_id=intent_id)

    def withdraw(
        self, amount: Money, *, recorded_at: datetime, intent_id: UUID | None = None
    ) -> None:
        self._check_positive(amount, "amount")
        self._check_available(amount, "withdraw")
        self._trigger(Withdrawn, recorded_at=recorded_at, amount=amount, intent_id=intent_id)

    def reserve(self, intent_id: UUID, amount: Money, *, recorded_at: datetime) -> None:
        self._check_positive(amount, "reservation")
        if intent_id in self.reservations:
            raise IllegalTransition(f"intent {intent_id} already holds a reservation")
        self._check_available(amount, "reserve")
        self._trigger(FundsReserved, recorded_at=recorded_at, intent_id=intent_id, amount=amount)

    def release_reservation(self, intent_id: UUID, *, recorded_at: datetime) -> None:
        amount = self._reservation(intent_id)
        self._trigger(
            ReservationReleased, recorded_at=recorded_at, intent_id=intent_id, amount=amount
        )

    def settle(
        self,
        intent_id: UUID,
        position_id: UUID,
        amount: Money,
        *,
        recorded_at: datetime,
        venue_time: datetime | None = None,
    ) -> None:
        """Turn an intent's reservation into `amount` committed to `position_id`.

        `amount` is what the fill actually cost; it may differ from the
        reservation (slippage). It is recorded as the broker reported it.
        """
        reservation = self._reservation(intent_id)
        self._check_positive(amount, "amount")
        self._trigger(
            FundsSettled,
            recorded_at=recorded_at,
            venue_time=venue_time,
            intent_id=intent_id,
            position_id=position_id,
            reservation=reservation,
            amount=amount,
        )

    def commit(
        self,
        position_id: UUID,
        amount: Money,
        *,
        recorded_at: datetime,
        venue_time: datetime | None = None,
    ) -> None:
        """Hold `amount` more for `position_id`, which no reservation preceded.

        Recorded as the broker holds it, even beyond what is available: the
        position exists whether or not the ledger would have allowed it.
        """
        self._check_positive(amount, "amount")
        self._trigger(
            FundsCommitted,
            recorded_at=recorded_at,
            venue_time=venue_time,
            position_id=position_id,
            amount=amount,
        )

    def charge_fee(
        self,
        amount: Money,
        reason: str,
        *,
        recorded_at: datetime,
        venue_time: datetime | None = None,
        intent_id: UUID | None = None,
        position_id: UUID | None = None,
    ) -> None:
        self._check_positive(amount, "fee")
        self._trigger(
            FeeCharged,
            recorded_at=recorded_at,
            venue_time=venue_time,
            amount=amount,
            reason=reason,
            intent_id=intent_id,
            position_id=position_id,
        )

    def realise_pnl(
        self,
        position_id: UUID,
        amount: Money,
        released: Money,
        *,
        recorded_at: datetime,
        venue_time: datetime | None = None,
        intent_id: UUID | None = None,
    ) -> None:
        """Record a close's P&L and free `released` of the position's commitment."""
        self._check_currency(amount, "pnl")
        self._check_currency(released, "released")
        committed = self.commitments.get(position_id, Money.zero(self.currency))
        if released.is_negative or released > committed:
            raise InvalidValue("released", f"{released} is outside 0..{committed} committed")
        self._trigger(
            PnlRealised,
            recorded_at=recorded_at,
            venue_time=venue_time,
            position_id=position_id,
            amount=amount,
            released=released,
            intent_id=intent_id,
        )

    # Guards -------------------------------------------------------------------

    def _check_currency(self, amount: Money, field: str) -> None:
        if amount.currency != self.currency:
            raise InvalidValue(field, f"{amount} is not in the account's {self.currency}")

    def _check_positive(self, amount: Money, field: str) -> None:
        self._check_currency(amount, field)
        if amount.is_negative or amount.is_zero:
            raise InvalidValue(field, f"{amount} must be more than zero")

    def _check_total_after(self, amount: Money) -> None:
        try:
            self.total + amount
        except InvalidValue:
            raise InvalidValue(
                "amount",
                f"{amount} would take account {self.name} to more than the ledger can hold",
            ) from None

    def _check_available(self, amount: Money, action: str) -> None:
        if amount > self.available:
            raise InsufficientFunds(
                f"cannot {action} {amount}: {self.available} available in account {self.name}"
            )

    def _reservation(self, intent_id: UUID) -> Money:
        try:
            return self.reservations[intent_id]
        except KeyError:
            raise IllegalTransition(f"intent {intent_id} holds no reservation") from None

    # Evolution ----------------------------------------------------------------

    def _apply(self, event: Event) -> None:
        self.modified_at = event.recorded_at
        self._count_today(event)
        match event:
            case AccountOpened():
                self.name = event.name
                self.currency = event.currency
                self.total = Money.zero(event.currency)
                self.reservations = {}
                self.commitments = {}
                self.today = None
            case AccountSnapshot():
                self._restore(event)
            case Deposited():
                self.total += event.amount
            case Withdrawn() | FeeCharged():
                self.total -= event.amount
            case FundsReserved():
                self._hold("reservation", self.reservations, event.intent_id, event.amount)
            case ReservationReleased():
                del self.reservations[event.intent_id]
            case FundsSettled() | FundsCommitted():
                if isinstance(event, FundsSettled):
                    del self.reservations[event.intent_id]
                self._add_commitment(event.position_id, event.amount)
            case PnlRealised():
                self.total += event.amount
                self._add_commitment(event.position_id, -event.released)
            case _:
                raise IllegalTransition(f"an account cannot apply {type(event).__name__}")

    def _restore(self, snapshot: AccountSnapshot) -> None:
        self.name = snapshot.name
        self.currency = snapshot.currency
        self.total = snapshot.total
        self.reservations = {}
        self.commitments = {}
        for held in snapshot.reservations:
            self._hold("reservation", self.reservations, held.key, held.amount)
        for held in snapshot.commitments:
            self._hold("commitment", self.commitments, held.key, held.amount)
        self.today = snapshot.today

    def _count_today(self, event: Event) -> None:
        """Count `event` (before it is applied) in the usage of its day."""
        if isinstance(event, AccountOpened | AccountSnapshot):
            return  # they set the day's usage, if any, themselves
        usage = self.usage_on(event.recorded_at.astimezone(UTC).date())
        match event:
            case FundsSettled() | FundsCommitted() if event.position_id not in self.commitments:
                usage = msgspec.structs.replace(usage, opened=usage.opened + 1)
            case PnlRealised():
                usage = msgspec.structs.replace(usage, net_pnl=usage.net_pnl + event.amount)
            case FeeCharged():
                usage = msgspec.structs.replace(usage, net_pnl=usage.net_pnl - event.amount)
            case _:
                pass
        self.today = usage

    def _add_commitment(self, position_id: UUID, amount: Money) -> None:
        remaining = self.commitments.get(position_id, Money.zero(self.currency)) + amount
        if remaining.is_zero:
            self.commitments.pop(position_id, None)
        else:
            self._hold("commitment", self.commitments, position_id, remaining)

    def _hold(self, label: str, book: dict[UUID, Money], key: UUID, amount: Money) -> None:
        """Put `amount` in `book`: money held is in the account's currency and more than zero.

        Checked here, where an amount enters a book, rather than over every
        book after every event: an account may hold thousands of reservations.
        """
        invariant(amount.currency == self.currency, "%s %s in %s", label, key, amount.currency)
        invariant(not amount.is_negative and not amount.is_zero, "%s %s: %s", label, key, amount)
        book[key] = amount

    @classmethod
    def _create(cls, event: Event) -> Self:
        if isinstance(event, AccountSnapshot):
            account = cls._blank(event.originator_id, version=event.originator_version - 1)
            account._apply_checked(event)
            return account
        if not isinstance(event, AccountOpened):
            raise IllegalTransition(f"an account starts with account.opened, not {event!r}")
        return super()._create(event)
