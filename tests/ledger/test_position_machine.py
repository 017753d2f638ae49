"""The Position aggregate against a model: open once, close in parts, then nothing."""

from __future__ import annotations

import decimal
from datetime import UTC, datetime
from decimal import Decimal
from uuid import uuid4

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ledger.errors import IllegalTransition, InvalidValue
from ledger.events import Event
from ledger.instruments import Funding, Instrument, Price, Quantity, Side
from ledger.money import Money
from ledger.position import (
    CloseReason,
    PartiallyClosed,
    Position,
    PositionClosed,
    PositionOpened,
    PositionStatus,
    StopLossChanged,
    TakeProfitChanged,
)

INSTRUMENT = Instrument(
    symbol="TEST",
    quote_currency="USD",
    price_tick=Decimal("0.01"),
    quantity_step=Decimal("0.001"),
    funding=Funding.FULL,
)
CENT = Decimal("0.01")

ticks = st.integers(min_value=1, max_value=1_000_000)
steps = st.integers(min_value=1, max_value=1_000_000)


def price(tick_count: int) -> Price:
    return Price(Decimal(tick_count).scaleb(-2))


def quantity(step_count: int) -> Quantity:
    return Quantity(Decimal(step_count).scaleb(-3))


def now() -> datetime:
    return datetime.now(UTC)


def expected_pnl(side: Side, qty: Decimal, entry: Decimal, exit_price: Decimal) -> Decimal:
    sign = 1 if side is Side.LONG else -1
    rounded = ((exit_price - entry) * qty * sign).quantize(CENT, rounding=decimal.ROUND_HALF_EVEN)
    # A loss that rounds to nothing is 0.00, not -0.00.
    return abs(rounded) if rounded.is_zero() else rounded


def protection_is_valid(side: Side, stop_loss: Decimal | None, take_profit: Decimal | None) -> bool:
    """A long's stop-loss lies below its take-profit; a short's above."""
    if stop_loss is None or take_profit is None:
        return True
    if side is Side.LONG:
        return stop_loss < take_profit
    return stop_loss > take_profit


optional_prices = st.one_of(st.none(), ticks.map(price))


class PositionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.position: Position
        self.events: list[Event] = []
        self.version = 0
        self.side: Side
        self.entry: Decimal
        self.open_quantity: Decimal
        self.stop_loss: Decimal | None = None
        self.take_profit: Decimal | None = None
        self.realised = Decimal("0.00")
        self.closed = False

    def accepted(self, event_class: type[Event]) -> Event:
        emitted = self.position.collect_events()
        assert [type(event) for event in emitted] == [event_class]
        (event,) = emitted
        self.version += 1
        assert event.originator_version == self.version
        self.events.append(event)
        return event

    def nothing_emitted(self) -> None:
        assert self.position.collect_events() == []
        assert self.position.version == self.version

    @initialize(
        side=st.sampled_from(Side),
        qty=steps,
        entry=ticks,
        stop_loss=optional_prices,
        take_profit=optional_prices,
    )
    def open_position(
        self,
        side: Side,
        qty: int,
        entry: int,
        stop_loss: Price | None,
        take_profit: Price | None,
    ) -> None:
        intent_id = uuid4()
        arguments = {
            "account_id": uuid4(),
            "instrument": INSTRUMENT,
            "side": side,
            "quantity": quantity(qty),
            "entry_price": price(entry),
            "recorded_at": now(),
            "intent_id": intent_id,
        }
        if not protection_is_valid(side, stop_loss, take_profit):
            with pytest.raises(InvalidValue):
                Position.open(uuid4(), stop_loss=stop_loss, take_profit=take_profit, **arguments)
            stop_loss = take_profit = None
        self.position = Position.open(
            uuid4(), stop_loss=stop_loss, take_profit=take_profit, **arguments
        )
        event = self.accepted(PositionOpened)
        assert event.intent_id == intent_id
        self.side = side
        self.entry = price(entry)
        self.open_quantity = quantity(qty)
        self.stop_loss = stop_loss
        self.take_profit = take_profit

    # Open position --------------------------------------------------------------

    @precondition(lambda self: not self.closed and self.open_quantity > INSTRUMENT.quantity_step)
    @rule(data=st.data(), exit_tick=ticks)
    def close_part(self, data: st.DataObject, exit_tick: int) -> None:
        remaining_steps = int(self.open_quantity / INSTRUMENT.quantity_step)
        qty = quantity(data.draw(st.integers(min_value=1, max_value=remaining_steps - 1)))
        exit_price = price(exit_tick)
        pnl = self.position.close(qty, exit_price, recorded_at=now())
        expected = expected_pnl(self.side, qty, self.entry, exit_price)
        assert pnl == Money(amount=expected, currency="USD")
        event = self.accepted(PartiallyClosed)
        assert event.quantity == qty
        assert event.price == exit_price
        assert event.pnl == pnl
        self.open_quantity -= qty
        self.realised += expected

    @precondition(lambda self: not self.closed)
    @rule(exit_tick=ticks, reason=st.sampled_from(CloseReason))
    def close_all(self, exit_tick: int, reason: CloseReason) -> None:
        exit_price = price(exit_tick)
        pnl = self.position.close(
            Quantity(self.open_quantity), exit_price, recorded_at=now(), reason=reason
        )
        expected = expected_pnl(self.side, self.open_quantity, self.entry, exit_price)
        assert pnl == Money(amount=expected, currency="USD")
        event = self.accepted(PositionClosed)
        assert event.quantity == self.open_quantity
        assert event.reason is reason
        self.open_quantity = Decimal(0)
        self.realised += expected
        self.closed = True

    @precondition(lambda self: not self.closed)
    @rule(extra=steps, exit_tick=ticks)
    def close_more_than_open(self, extra: int, exit_tick: int) -> None:
        with pytest.raises(InvalidValue):
            self.position.close(
                Quantity(self.open_quantity + quantity(extra)), price(exit_tick), recorded_at=now()
            )
        self.nothing_emitted()

    @precondition(lambda self: not self.closed)
    @rule(exit_tick=ticks)
    def close_off_step(self, exit_tick: int) -> None:
        with pytest.raises(InvalidValue):
            self.position.close(Quantity(Decimal("0.0005")), price(exit_tick), recorded_at=now())
        with pytest.raises(InvalidValue):
            self.position.close(
                Quantity(self.open_quantity), Price(Decimal("1.005")), recorded_at=now()
            )
        self.nothing_emitted()

    @precondition(lambda self: not self.closed)
    @rule(new=optional_prices)
    def change_stop_loss(self, new: Price | None) -> None:
        if not protection_is_valid(self.side, new, self.take_profit):
            with pytest.raises(InvalidValue):
                self.position.change_stop_loss(new, "moved", recorded_at=now())
            self.nothing_emitted()
            return
        self.position.change_stop_loss(new, "moved", recorded_at=now())
        if new == self.stop_loss:
            self.nothing_emitted()
            return
        event = self.accepted(StopLossChanged)
        assert event.old == self.stop_loss
        assert event.new == new
        self.stop_loss = new

    @precondition(lambda self: not self.closed)
    @rule(new=optional_prices)
    def change_take_profit(self, new: Price | None) -> None:
        if not protection_is_valid(self.side, self.stop_loss, new):
            with pytest.raises(InvalidValue):
                self.position.change_take_profit(new, "moved", recorded_at=now())
            self.nothing_emitted()
            return
        self.position.change_take_profit(new, "moved", recorded_at=now())
        if new == self.take_profit:
            self.nothing_emitted()
            return
        event = self.accepted(TakeProfitChanged)
        assert event.old == self.take_profit
        assert event.new == new
        self.take_profit = new

    @precondition(lambda self: not self.closed and self.take_profit is not None)
    @rule(data=st.data())
    def stop_loss_across_take_profit(self, data: st.DataObject) -> None:
        assert self.take_profit is not None
        tp_ticks = int(self.take_profit / CENT)
        # At the take-profit, or on the wrong side of it.
        if self.side is Side.LONG:
            wrong = data.draw(st.integers(min_value=tp_ticks, max_value=tp_ticks + 1000))
        else:
            wrong = data.draw(st.integers(min_value=max(1, tp_ticks - 1000), max_value=tp_ticks))
        with pytest.raises(InvalidValue):
            self.position.change_stop_loss(price(wrong), "across", recorded_at=now())
        self.nothing_emitted()

    @precondition(lambda self: not self.closed and self.stop_loss is not None)
    @rule(data=st.data())
    def take_profit_across_stop_loss(self, data: st.DataObject) -> None:
        assert self.stop_loss is not None
        sl_ticks = int(self.stop_loss / CENT)
        if self.side is Side.LONG:
            wrong = data.draw(st.integers(min_value=max(1, sl_ticks - 1000), max_value=sl_ticks))
        else:
            wrong = data.draw(st.integers(min_value=sl_ticks, max_value=sl_ticks + 1000))
        with pytest.raises(InvalidValue):
            self.position.change_take_profit(price(wrong), "across", recorded_at=now())
        self.nothing_emitted()

    # Closed position --------------------------------------------------------------

    @precondition(lambda self: self.closed)
    @rule(qty=steps, tick=ticks, protection=optional_prices)
    def every_command_is_refused_after_close(
        self, qty: int, tick: int, protection: Price | None
    ) -> None:
        for command in (
            lambda: self.position.close(quantity(qty), price(tick), recorded_at=now()),
            lambda: self.position.change_stop_loss(protection, "late", recorded_at=now()),
            lambda: self.position.change_take_profit(protection, "late", recorded_at=now()),
        ):
            with pytest.raises(IllegalTransition):
                command()
            self.nothing_emitted()

    # Invariants --------------------------------------------------------------------

    @invariant()
    def state_matches_the_model(self) -> None:
        position = self.position
        assert position.version == self.version
        assert position.side is self.side
        assert position.entry_price == self.entry
        assert position.quantity == self.open_quantity
        assert position.stop_loss == self.stop_loss
        assert position.take_profit == self.take_profit
        assert position.realised_pnl == Money(amount=self.realised, currency="USD")
        expected_status = PositionStatus.CLOSED if self.closed else PositionStatus.OPEN
        assert position.status is expected_status
        assert position.is_open is not self.closed

    @invariant()
    def realised_pnl_is_the_sum_of_closes(self) -> None:
        closes = [e for e in self.events if isinstance(e, PartiallyClosed | PositionClosed)]
        total = sum((e.pnl.amount for e in closes), Decimal("0.00"))
        assert self.position.realised_pnl.amount == total
        closed_quantity = sum((e.quantity for e in closes), Decimal(0))
        opened = self.events[0]
        assert isinstance(opened, PositionOpened)
        assert opened.quantity - closed_quantity == self.position.quantity

    @invariant()
    def reload_gives_the_same_position(self) -> None:
        reloaded = Position.project(None, self.events)
        assert reloaded is not None
        position = self.position
        assert reloaded.id == position.id
        assert reloaded.version == position.version
        assert reloaded.status is position.status
        assert reloaded.side is position.side
        assert reloaded.quantity == position.quantity
        assert reloaded.entry_price == position.entry_price
        assert reloaded.stop_loss == position.stop_loss
        assert reloaded.take_profit == position.take_profit
        assert reloaded.realised_pnl == position.realised_pnl
        assert reloaded.instrument == position.instrument
        assert reloaded.intent_id == position.intent_id
        assert reloaded.account_id == position.account_id


PositionMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestPositionMachine = PositionMachine.TestCase
