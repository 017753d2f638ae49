"""The Position aggregate: one open position, from its opening fill to its close.

A state machine with two states, open and closed. Every command checks the
position is open; nothing happens to a closed position.
"""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import ClassVar, Self
from uuid import NAMESPACE_URL, UUID, uuid5

from ledger.aggregate import Aggregate
from ledger.errors import IllegalTransition, InvalidValue
from ledger.events import Event
from ledger.instruments import Instrument, Price, Quantity, Side
from ledger.invariants import invariant
from ledger.money import Money

POSITION_NAMESPACE = uuid5(NAMESPACE_URL, "ledger:position")


def position_id(intent_id: UUID) -> UUID:
    """The id of the position an opening intent creates.

    Derived, not random: recovery that completes the same intent twice
    addresses the same position and cannot open a second one.
    """
    return uuid5(POSITION_NAMESPACE, str(intent_id))


class Provenance(enum.StrEnum):
    """Where a position came from."""

    INTENT = "intent"
    """Opened by the ledger through a recorded intent."""
    ADOPTED = "adopted"
    """Found at the broker with no intent behind it and adopted as external."""


class PositionFlag(enum.StrEnum):
    """Something reconciliation found about a position that an operator should see."""

    EXTERNAL = "external"
    """Opened at the broker by someone else, and adopted."""
    ORPHAN = "orphan"
    """Open in the ledger, gone at the broker, and no closing fill explains it."""
    QUANTITY_MISMATCH = "quantity_mismatch"
    """The broker holds a different quantity than the ledger."""
    PROTECTION_MISMATCH = "protection_mismatch"
    """The broker's stop-loss or take-profit differs from the ledger's."""


class PositionStatus(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class CloseReason(enum.StrEnum):
    REQUESTED = "requested"
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    LIQUIDATED = "liquidated"
    EXTERNAL = "external"
    """Closed at the broker by someone else (a manual close)."""


class PositionOpened(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "position.opened"
    account_id: UUID
    instrument: Instrument
    side: Side
    quantity: Decimal
    entry_price: Decimal
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    broker_ref: str | None = None
    client_id: str | None = None
    provenance: Provenance = Provenance.INTENT
    intent_id: UUID | None = None
    fill_id: str | None = None
    """The broker's fill this position opened with, so it is never recorded twice."""


class PositionIncreased(Event, frozen=True, kw_only=True):
    """A later fill of the opening order added `quantity` at `price` (a partial fill's rest)."""

    stored_name: ClassVar[str] = "position.increased"
    quantity: Decimal
    price: Decimal
    entry_price: Decimal
    """The quantity-weighted average entry after this fill."""
    fill_id: str
    intent_id: UUID | None = None


class ProtectionChanged(Event, frozen=True, kw_only=True):
    """A protective level moved from `old` to `new` (None: no level)."""

    old: Decimal | None
    new: Decimal | None
    reason: str
    intent_id: UUID | None = None


class StopLossChanged(ProtectionChanged, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "position.stop_loss_changed"


class TakeProfitChanged(ProtectionChanged, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "position.take_profit_changed"


class ClosingFill(Event, frozen=True, kw_only=True):
    """`quantity` of the position closed at `price`, realising `pnl`."""

    quantity: Decimal
    price: Decimal
    pnl: Money
    intent_id: UUID | None = None
    broker_ref: str | None = None
    fill_id: str | None = None


class PartiallyClosed(ClosingFill, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "position.partially_closed"


class PositionClosed(ClosingFill, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "position.closed"
    reason: CloseReason


class PositionFlagged(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "position.flagged"
    flag: PositionFlag
    detail: str


class PositionFlagCleared(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "position.flag_cleared"
    flag: PositionFlag
    reason: str


POSITION_EVENTS: tuple[type[Event], ...] = (
    PositionOpened,
    PositionIncreased,
    StopLossChanged,
    TakeProfitChanged,
    PartiallyClosed,
    PositionClosed,
    PositionFlagged,
    PositionFlagCleared,
)


class Position(Aggregate):
    """A position in one instrument, long or short."""

    account_id: UUID
    instrument: Instrument
    side: Side
    status: PositionStatus
    quantity: Quantity
    """What is still open."""
    entry_price: Price
    stop_loss: Price | None
    take_profit: Price | None
    broker_ref: str | None
    client_id: str | None
    provenance: Provenance
    intent_id: UUID | None
    realised_pnl: Money
    flags: dict[PositionFlag, str]
    """What reconciliation found, by flag, with the detail it recorded."""
    fill_ids: set[str]
    """Every broker fill recorded here: a fill is applied once, however often it is reported."""
    opened_at: datetime | None
    """When the broker opened it, by the broker's clock, when known."""

    @classmethod
    def open(  # noqa: PLR0913 - every fact of an opening fill, by keyword
        cls,
        position_id: UUID,
        *,
        account_id: UUID,
        instrument: Instrument,
        side: Side,
        quantity: Quantity,
        entry_price: Price,
        recorded_at: datetime,
        venue_time: datetime | None = None,
        stop_loss: Price | None = None,
        take_profit: Price | None = None,
        broker_ref: str | None = None,
        client_id: str | None = None,
        provenance: Provenance = Provenance.INTENT,
        intent_id: UUID | None = None,
        fill_id: str | None = None,
    ) -> Self:
        instrument.quantity(quantity)
        if provenance is Provenance.INTENT:
            instrument.price(entry_price, field="entry_price")
        elif entry_price <= 0:
            # An adopted position's entry is the broker's average: off the tick, but positive.
            raise InvalidValue("entry_price", f"{entry_price} must be more than zero")
        check_protection(instrument, side, stop_loss, take_profit)
        if provenance is Provenance.INTENT and intent_id is None:
            raise InvalidValue("intent_id", "a position opened by the ledger names its intent")
        position = cls._blank(position_id, version=0)
        position._trigger(
            PositionOpened,
            recorded_at=recorded_at,
            venue_time=venue_time,
            account_id=account_id,
            instrument=instrument,
            side=side,
            quantity=quantity,
            entry_price=entry_price,
            stop_loss=stop_loss,
            take_profit=take_profit,
            broker_ref=broker_ref,
            client_id=client_id,
            provenance=provenance,
            intent_id=intent_id,
            fill_id=fill_id,
        )
        return position

    @property
    def is_open(self) -> bool:
        return self.status is PositionStatus.OPEN

    def increase(
        self,
        quantity: Quantity,
        price: Price,
        fill_id: str,
        *,
        recorded_at: datetime,
        venue_time: datetime | None = None,
        intent_id: UUID | None = None,
    ) -> None:
        """Add a later fill of the opening order; the entry becomes the weighted average."""
        self._check_open("increase")
        self._check_new_fill(fill_id)
        self.instrument.quantity(quantity)
        self.instrument.price(price)
        total = self.quantity + quantity
        # Unrounded, as venues report it: the P&L of a later close depends on it.
        average = (self.quantity * self.entry_price + quantity * price) / total
        self._trigger(
            PositionIncreased,
            recorded_at=recorded_at,
            venue_time=venue_time,
            quantity=quantity,
            price=price,
            entry_price=average,
            fill_id=fill_id,
            intent_id=intent_id,
        )

    def change_stop_loss(
        self,
        new: Price | None,
        reason: str,
        *,
        recorded_at: datetime,
        intent_id: UUID | None = None,
    ) -> None:
        """Move (or remove, with None) the stop-loss. No event if nothing changes."""
        self.change_protection(
            new, self.take_profit, reason, recorded_at=recorded_at, intent_id=intent_id
        )

    def change_take_profit(
        self,
        new: Price | None,
        reason: str,
        *,
        recorded_at: datetime,
        intent_id: UUID | None = None,
    ) -> None:
        """Move (or remove, with None) the take-profit. No event if nothing changes."""
        self.change_protection(
            self.stop_loss, new, reason, recorded_at=recorded_at, intent_id=intent_id
        )

    def change_protection(
        self,
        stop_loss: Price | None,
        take_profit: Price | None,
        reason: str,
        *,
        recorded_at: datetime,
        intent_id: UUID | None = None,
    ) -> None:
        """Set both levels at once; an event for each that changes.

        Checked together: moved one at a time, a valid pair of new levels
        could cross the other's old level on the way.
        """
        self._check_open("change the protection of")
        check_protection(self.instrument, self.side, stop_loss, take_profit)
        for event_class, old, new in (
            (StopLossChanged, self.stop_loss, stop_loss),
            (TakeProfitChanged, self.take_profit, take_profit),
        ):
            if new != old:
                self._trigger(
                    event_class,
                    recorded_at=recorded_at,
                    old=old,
                    new=new,
                    reason=reason,
                    intent_id=intent_id,
                )

    def close(
        self,
        quantity: Quantity,
        price: Price,
        *,
        recorded_at: datetime,
        reason: CloseReason = CloseReason.REQUESTED,
        venue_time: datetime | None = None,
        intent_id: UUID | None = None,
        broker_ref: str | None = None,
        fill_id: str | None = None,
        pnl: Money | None = None,
    ) -> Money:
        """Close `quantity` at `price`: all that is open closes the position.

        `pnl` is what the broker says the close realised, when it says so:
        that is the money that moved, and it is recorded as reported.
        Otherwise the position works it out. Returns the realised P&L.
        """
        self._check_open("close")
        if fill_id is not None:
            self._check_new_fill(fill_id)
        self.instrument.quantity(quantity)
        self.instrument.price(price)
        if quantity > self.quantity:
            raise InvalidValue("quantity", f"{quantity} is more than the {self.quantity} open")
        if pnl is None:
            pnl = self.instrument.pnl(self.side, quantity, self.entry_price, price)
        elif pnl.currency != self.instrument.quote_currency:
            raise InvalidValue("pnl", f"{pnl} is not in {self.instrument.quote_currency}")
        closes_all = quantity == self.quantity
        self._trigger(
            PositionClosed if closes_all else PartiallyClosed,
            recorded_at=recorded_at,
            venue_time=venue_time,
            quantity=quantity,
            price=price,
            pnl=pnl,
            intent_id=intent_id,
            broker_ref=broker_ref,
            fill_id=fill_id,
            **({"reason": reason} if closes_all else {}),
        )
        return pnl

    def flag(self, flag: PositionFlag, detail: str, *, recorded_at: datetime) -> None:
        """Raise `flag` with `detail`. No event if it is already raised with that detail."""
        self._check_open("flag")
        if not detail.strip():
            raise InvalidValue("detail", "a flag says what was found")
        if self.flags.get(flag) != detail:
            self._trigger(PositionFlagged, recorded_at=recorded_at, flag=flag, detail=detail)

    def clear_flag(self, flag: PositionFlag, reason: str, *, recorded_at: datetime) -> None:
        """Lower `flag`, saying why. No event if it is not raised."""
        self._check_open("clear a flag of")
        if flag in self.flags:
            self._trigger(PositionFlagCleared, recorded_at=recorded_at, flag=flag, reason=reason)

    def _check_new_fill(self, fill_id: str) -> None:
        if fill_id in self.fill_ids:
            raise IllegalTransition(f"fill {fill_id} is already recorded on position {self.id}")

    def _check_open(self, action: str) -> None:
        if not self.is_open:
            raise IllegalTransition(f"cannot {action} position {self.id}: it is closed")

    def _apply(self, event: Event) -> None:
        match event:
            case PositionOpened():
                self.account_id = event.account_id
                self.instrument = event.instrument
                self.side = event.side
                self.status = PositionStatus.OPEN
                self.quantity = Quantity(event.quantity)
                self.entry_price = Price(event.entry_price)
                self.stop_loss = _price_or_none(event.stop_loss)
                self.take_profit = _price_or_none(event.take_profit)
                self.broker_ref = event.broker_ref
                self.client_id = event.client_id
                self.provenance = event.provenance
                self.intent_id = event.intent_id
                self.realised_pnl = Money.zero(event.instrument.quote_currency)
                self.flags = {}
                self.fill_ids = {event.fill_id} if event.fill_id else set()
                self.opened_at = event.venue_time
            case PositionIncreased():
                self.quantity = Quantity(self.quantity + event.quantity)
                self.entry_price = Price(event.entry_price)
                self.fill_ids.add(event.fill_id)
            case StopLossChanged():
                self.stop_loss = _price_or_none(event.new)
            case TakeProfitChanged():
                self.take_profit = _price_or_none(event.new)
            case PartiallyClosed() | PositionClosed():
                self.quantity = Quantity(self.quantity - event.quantity)
                self.realised_pnl += event.pnl
                if event.fill_id is not None:
                    self.fill_ids.add(event.fill_id)
                if isinstance(event, PositionClosed):
                    self.status = PositionStatus.CLOSED
            case PositionFlagged():
                self.flags[event.flag] = event.detail
            case PositionFlagCleared():
                self.flags.pop(event.flag, None)
            case _:
                raise IllegalTransition(f"a position cannot apply {type(event).__name__}")

    def _check_invariants(self) -> None:
        if self.is_open:
            invariant(self.quantity > 0, "position %s open with %s", self.id, self.quantity)
        else:
            invariant(self.quantity == 0, "position %s closed with %s left", self.id, self.quantity)

    @classmethod
    def _create(cls, event: Event) -> Self:
        if not isinstance(event, PositionOpened):
            raise IllegalTransition(f"a position starts with position.opened, not {event!r}")
        return super()._create(event)


def _price_or_none(value: Decimal | None) -> Price | None:
    return None if value is None else Price(value)


def check_protection(
    instrument: Instrument, side: Side, stop_loss: Price | None, take_profit: Price | None
) -> None:
    """Stop-loss and take-profit lie on the tick, and on either side of each other."""
    if stop_loss is not None:
        instrument.price(stop_loss, field="stop_loss")
    if take_profit is not None:
        instrument.price(take_profit, field="take_profit")
    # A long is protected below and takes profit above; a short the reverse.
    if (
        stop_loss is not None
        and take_profit is not None
        and (take_profit - stop_loss) * side.sign <= 0
    ):
        raise InvalidValue(
            "stop_loss", f"{stop_loss} must be on the other side of take-profit {take_profit}"
        )
