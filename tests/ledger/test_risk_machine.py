"""Risk controls under a state machine: limits, kill switches and stop-losses, across restarts.

One real engine on a SQLite store and a paper broker that loses answers
(before and after acceptance) and now and then serves a stale quote or a
closed market, so intents stay in flight and count at their worst case.
The rules deposit, open (with or without a stop at random distances),
close, move stop-losses, set limits and engage or release kill switches
the way `ledger limits` and `ledger kill-switch` do (straight to the store,
from outside the engine), run the flattening pass of a running engine,
let the broker's clock run, and crash and restart the engine.

The invariants are read back from the store's event log, never from the
engine's memory: the log is folded in commit order, and each intent is
judged against the controls, the account and the position as they stood
when it was recorded (which is when the engine checked it).
"""

from __future__ import annotations

import decimal
import random
import shutil
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import anyio
import anyio.from_thread
import hypothesis
import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import ledger.engine as engine_module
from adapters.bootstrap import open_engine
from adapters.paper import market
from adapters.paper.broker import PaperBroker
from adapters.store import Store
from ledger.account import ACCOUNT_EVENTS, Account, FeeCharged, PnlRealised, account_id
from ledger.aggregate import Aggregate
from ledger.breaker import BreakerClosed, BreakerOpened
from ledger.controls import CONTROLS_EVENTS, RiskControls, controls_id
from ledger.engine import Engine
from ledger.errors import (
    IllegalTransition,
    InsufficientFunds,
    InvalidValue,
    NotFound,
    OperationRejected,
    OutcomeUnknown,
    Refused,
)
from ledger.events import Event
from ledger.instruments import Funding, Instrument, Price, Quantity, Side
from ledger.intent import (
    CloseRequest,
    Intent,
    IntentCompleted,
    IntentFailed,
    IntentRecorded,
    IntentResolvedByOperator,
    IntentRolledBack,
    OpenRequest,
    ProtectionChange,
)
from ledger.limits import Control, Exposure, Limits, updated
from ledger.money import Money
from ledger.ports import ProtectionRequest, Quote, WriteResult
from ledger.position import POSITION_EVENTS, Position, PositionOpened, StopLossChanged
from ledger.refusals import OperationRefused
from ledger.risk import exposure
from ledger.stops import worst_loss
from ledger.writer import UnitOfWork
from recovery.flatten import flatten_latched
from tests.ledger.test_engine import Setup
from tests.ledger.test_engine_machine import CURRENCY, from_cents, usd
from tests.ledger.test_risk_controls import engage, funded, refusals, set_limits

ACCOUNTS = ("main", "desk")
SCOPES: tuple[str | None, ...] = (None, *ACCOUNTS)
"""A kill switch's scope: None is every account."""
FAULTS = (
    "timeout_before_accept:0.25,timeout_after_accept:0.1,stale_quote:0.03,market_closed:0.03,"
    "partial_fill:0.05,duplicate_ack:0.05"
)
# Paid in full (BTCUSD, ETHUSD) and on margin (EURUSD, 30:1), in quantity steps.
STEPS_OF: dict[str, tuple[int, int]] = {
    "BTCUSD": (10, 500),
    "ETHUSD": (10, 1000),
    "EURUSD": (1, 50),
}
BROKER_FUNDS = "10000000"
OPERATOR = "risk-desk"

# Limits as an operator types them: text, validated by `ledger.limits.updated`.
LIMIT_VALUES: dict[str, st.SearchStrategy[object]] = {
    "max_trades_per_day": st.integers(min_value=0, max_value=5).map(str),
    "max_open_positions": st.integers(min_value=0, max_value=3).map(str),
    "max_daily_loss": st.integers(min_value=100, max_value=80_000).map(
        lambda cents: str(from_cents(cents))
    ),
    "max_daily_loss_pct": st.sampled_from(["0.5", "1", "2.5", "5", "12.5", "40"]),
    "max_position_notional": st.integers(min_value=50, max_value=5_000).map(str),
    "risk_per_trade_pct": st.sampled_from(["0.01", "0.1", "0.25", "1", "2", "10"]),
    "stop_loss_margin_pct": st.sampled_from(["50", "80", "95", "100"]),
    "require_stop_loss": st.booleans(),
}
FIRST_LIMITS: dict[str, st.SearchStrategy[object]] = {
    "max_open_positions": st.integers(min_value=1, max_value=3).map(str),
    "max_trades_per_day": st.integers(min_value=1, max_value=5).map(str),
    "risk_per_trade_pct": LIMIT_VALUES["risk_per_trade_pct"],
}
# How far from the market a stop lies, in thousandths of the price; below
# zero it lies on the wrong side of the market and must be refused.
STOP_PERMILLE = st.integers(min_value=-2, max_value=250)
RESTARTS_MAX = 3


def stop_at(tick: Decimal, side: Side, quote: Quote, permille: int) -> Decimal:
    """A stop `permille` thousandths of the price away from the market, on the tick."""
    distance = (quote.bid * permille / 1000 / tick).to_integral_value() * tick
    return quote.bid - distance if side is Side.LONG else quote.ask + distance


def fold(aggregate: Aggregate | None, cls: type[Aggregate], stored: Event) -> Aggregate | None:
    """`aggregate` with `stored` applied, by the aggregate's own projector."""
    return cls.project(aggregate, [stored])


def cents_up(amount: Decimal) -> Money:
    return Money(
        amount=amount.quantize(Decimal("0.01"), rounding=decimal.ROUND_UP), currency=CURRENCY
    )


def fee_at(instrument: Instrument, quantity: Decimal, price: Decimal) -> Money:
    return cents_up(quantity * instrument.contract_size * price * instrument.fee_rate)


def loss_to(
    instrument: Instrument, side: Side, quantity: Decimal, entry: Decimal, exit_: Decimal
) -> Money:
    """What closing at `exit_` loses, never below zero (this machine trades no stakes)."""
    assert instrument.funding is not Funding.STAKE
    return cents_up(
        max((entry - exit_) * side.sign, Decimal(0)) * quantity * instrument.contract_size
    )


def risk_of(
    instrument: Instrument, side: Side, quantity: Decimal, entry: Decimal, stop: Decimal | None
) -> Money | None:
    """What a position held from `entry` can still lose with its stop at `stop`; None: unbounded.

    Worked out here, apart from the engine's own arithmetic: the move to the
    stop and the fee out; without a stop, a long's whole value, a short unbounded.
    """
    if stop is None:
        return (
            None if side is Side.SHORT else loss_to(instrument, side, quantity, entry, Decimal(0))
        )
    return loss_to(instrument, side, quantity, entry, stop) + fee_at(instrument, quantity, stop)


def moves_away(side: Side, old: Decimal | None, new: Decimal | None) -> bool:
    """Whether a stop moved from `old` to `new` left the position less protected."""
    if old is None:
        return False
    if new is None:
        return True
    return (old - new) * side.sign > 0


def held_risk(held: Position, stop: Decimal | None) -> Money | None:
    return risk_of(held.instrument, held.side, held.quantity, held.entry_price, stop)


INTENT_ENDS = (IntentCompleted, IntentFailed, IntentRolledBack, IntentResolvedByOperator)
FOLDED: dict[type[Event], type[Aggregate]] = {
    **dict.fromkeys(ACCOUNT_EVENTS, Account),
    **dict.fromkeys(POSITION_EVENTS, Position),
    **dict.fromkeys(CONTROLS_EVENTS, RiskControls),
}


@dataclass
class History:
    """The store's event log, folded in commit order as far as it has been read.

    For every intent it records what the engine's checks had to go by when
    it was recorded: its account's total, the limits, the kill switches,
    and for a stop-loss change the position's stop. Then it checks each
    risk rule against that, event by event.
    """

    read_to: int = 0
    aggregates: dict[UUID, Aggregate] = field(default_factory=dict)
    worst: dict[UUID, Money | None] = field(default_factory=dict)
    """Each open intent's worst case, as recorded (None: unbounded)."""
    opening: dict[UUID, UUID] = field(default_factory=dict)
    """Open intents not yet concluded, and their accounts."""
    widened: dict[UUID, Decimal | None] = field(default_factory=dict)
    """Stop-loss changes that widened when recorded, and the stop they asked for."""
    log: list[Event] = field(default_factory=list)
    """Every event read, in commit order."""

    def controls(self, scope: UUID | None) -> RiskControls:
        held = self.aggregates.get(controls_id(scope))
        assert held is None or isinstance(held, RiskControls)
        return held if held is not None else RiskControls.start(scope)

    def account(self, identity: UUID) -> Account:
        held = self.aggregates.get(identity)
        assert isinstance(held, Account), f"intent for account {identity} before it opened"
        return held

    def position(self, identity: UUID) -> Position:
        held = self.aggregates.get(identity)
        assert isinstance(held, Position), f"{identity} is not a position in the log"
        return held

    def follow(self, store: Store) -> None:
        """Read and check every event committed since the last call."""
        recorder = store.application.recorder
        mapper = store.application.mapper
        while True:
            page = recorder.select_notifications(start=self.read_to + 1, limit=500)
            for notification in page:
                event = mapper.to_domain_event(notification)
                assert isinstance(event, Event)
                self._check(event)
                self.log.append(event)
                cls = FOLDED.get(type(event))
                if cls is not None:
                    folded = fold(self.aggregates.get(event.originator_id), cls, event)
                    assert folded is not None
                    self.aggregates[event.originator_id] = folded
                self.read_to = notification.id
            if len(page) < 500:
                return

    def open_positions(self) -> list[Position]:
        """Open positions, as the log has them so far."""
        return sorted(
            (p for p in self.aggregates.values() if isinstance(p, Position) and p.is_open),
            key=lambda p: str(p.id),
        )

    def _check(self, event: Event) -> None:
        if isinstance(event, IntentRecorded):
            self._check_intent(event)
            if isinstance(event.payload, OpenRequest):
                self.opening[event.originator_id] = event.account_id
        elif isinstance(event, INTENT_ENDS):
            self.opening.pop(event.originator_id, None)
        elif isinstance(event, StopLossChanged):
            self._check_stop_change(event)

    def _check_intent(self, event: IntentRecorded) -> None:
        engaged = self.controls(event.account_id).kill_switch or self.controls(None).kill_switch
        limits = self.controls(event.account_id).limits
        total = self.account(event.account_id).total
        cap = limits.risk_cap(total)
        payload = event.payload
        if isinstance(payload, OpenRequest):
            assert engaged is None, (
                f"open {event.originator_id} recorded under the kill switch of {engaged}"
            )
            if limits.require_stop_loss or cap is not None:
                assert payload.stop_loss is not None, f"open {event.originator_id} has no stop"
            if cap is not None:
                assert event.at_risk is not None
                assert event.at_risk <= cap, f"open risks {event.at_risk}, cap {cap}"
            self._check_exposure(event, limits, event.at_risk)
            self.worst[event.originator_id] = event.at_risk
        elif isinstance(payload, ProtectionChange):
            held = self.position(payload.position_id)
            if not moves_away(held.side, held.stop_loss, payload.stop_loss):
                return
            assert engaged is None, (
                f"stop-loss of {held.id} widened from {held.stop_loss} to "
                f"{payload.stop_loss} under the kill switch of {engaged}"
            )
            if limits.require_stop_loss or cap is not None:
                assert payload.stop_loss is not None, f"stop-loss of {held.id} removed"
            if cap is not None and payload.stop_loss is not None:
                instrument = held.instrument
                loss = held_risk(held, payload.stop_loss)
                assert loss is not None
                loss += fee_at(instrument, held.quantity, held.entry_price)
                assert loss <= cap, (
                    f"stop-loss of {held.id} widened to {payload.stop_loss}: "
                    f"{loss} at stake, cap {cap}"
                )
            self._check_daily_loss(
                event, limits, held_risk(held, payload.stop_loss), without=held.id
            )
            self.widened[event.originator_id] = payload.stop_loss

    def _check_exposure(self, event: IntentRecorded, limits: Limits, worst: Money | None) -> None:
        """With this open counted in flight, the account is within every limit."""
        account = self.account(event.account_id)
        day = account.usage_on(event.recorded_at.astimezone(UTC).date())
        # Only opens hold reservations: each one is an open in flight (this one too, whether
        # or not its reservation is in the log yet).
        others = set(account.reservations) - {event.originator_id}
        in_flight = len(others) + 1
        trades = day.opened + in_flight
        held_open = len(account.commitments) + in_flight
        shown = f"open {event.originator_id}: {trades} trades, {held_open} open; {limits}"
        if limits.max_trades_per_day is not None:
            assert trades <= limits.max_trades_per_day, shown
        if limits.max_open_positions is not None:
            assert held_open <= limits.max_open_positions, shown
        self._check_daily_loss(event, limits, worst)

    def _check_daily_loss(
        self,
        event: IntentRecorded,
        limits: Limits,
        adding: Money | None,
        *,
        without: UUID | None = None,
    ) -> None:
        """The day's loss, every open position and open in flight at its worst, and `adding`
        (None: unbounded) stay within the daily limits."""
        if limits.max_daily_loss is None and limits.max_daily_loss_pct is None:
            return
        account = self.account(event.account_id)
        day = account.usage_on(event.recorded_at.astimezone(UTC).date())
        risks: list[Money | None] = [adding]
        risks += [self.worst[i] for i in account.reservations if i != event.originator_id]
        risks += [
            held_risk(held, held.stop_loss)
            for held in self.open_positions()
            if held.account_id == account.id and held.id != without
        ]
        shown = f"{event.originator_id} ({type(event.payload).__name__}): {risks}; {limits}"
        assert None not in risks, f"an unbounded loss under a daily limit: {shown}"
        at_risk = sum((risk for risk in risks if risk is not None), Money.zero(CURRENCY))
        worst = max(-day.net_pnl, Money.zero(account.currency)) + at_risk
        if limits.max_daily_loss is not None:
            assert worst <= limits.max_daily_loss, shown
        if limits.max_daily_loss_pct is not None:
            equity = account.total - day.net_pnl
            assert worst.amount <= equity.amount * limits.max_daily_loss_pct / 100, shown

    def _check_stop_change(self, event: StopLossChanged) -> None:
        held = self.position(event.originator_id)
        if not moves_away(held.side, event.old, event.new):
            return
        # A stop moves away from the market only by a change checked as a widening.
        assert event.intent_id in self.widened, (
            f"stop-loss of {held.id} widened from {event.old} to {event.new} "
            f"by {event.intent_id}, which was not checked as a widening"
        )
        assert self.widened[event.intent_id] == event.new


@dataclass
class Switch:
    flatten: bool


class RiskMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.stack = ExitStack()
        self.folder: Path | None = None
        self.original_uuid4: Callable[[], UUID] | None = None
        self.portal: anyio.from_thread.BlockingPortal
        self.engine: Engine
        self.reader: Store
        self.broker_view: PaperBroker
        self.history = History()
        # The model: what operators set, and what callers were told.
        self.limits: dict[str, Limits] = {name: Limits() for name in ACCOUNTS}
        self.switches: dict[str | None, Switch] = {}
        self.refused = 0
        self.restarts = 0

    # Set-up and tear-down ---------------------------------------------------------

    @initialize(seed=st.integers(min_value=0, max_value=2**31), data=st.data())
    def start(self, seed: int, data: st.DataObject) -> None:
        # Fault decisions follow the intents' client ids: ids from the seed,
        # so hypothesis sees the same outcomes when it replays a run.
        ids = random.Random(seed)  # noqa: S311 - reproducible, not secret
        self.original_uuid4 = engine_module.uuid4
        engine_module.uuid4 = lambda: UUID(int=ids.getrandbits(128), version=4)
        self.folder = Path(tempfile.mkdtemp(prefix="risk-machine-"))
        self.store_url = f"sqlite:///{self.folder / 'ledger.db'}"
        self.clean_broker_url = f"paper:///{self.folder / 'broker.db'}?seed={seed}"
        self.broker_url = f"{self.clean_broker_url}&faults={FAULTS}"
        with PaperBroker.open(self.clean_broker_url) as funding:
            for name in ACCOUNTS:
                anyio.run(funding.fund, name, usd(BROKER_FUNDS))
        self._start_engine()
        for name in ACCOUNTS:
            self.deposit(name, 1_000_000)
            # Limits from the start: what opens in flight and stops press against.
            first = {
                limit: data.draw(st.none() | values, label=limit)
                for limit, values in FIRST_LIMITS.items()
            }
            self._save_limits(name, {k: v for k, v in first.items() if v is not None}, [])

    def _start_engine(self) -> None:
        self.portal = self.stack.enter_context(anyio.from_thread.start_blocking_portal())
        self.engine = self.stack.enter_context(
            self.portal.wrap_async_context_manager(
                open_engine(store=self.store_url, broker=self.broker_url)
            )
        )
        self.reader = self.stack.enter_context(Store.open(self.store_url))
        self.broker_view = self.stack.enter_context(
            PaperBroker.open(self.clean_broker_url, start_session=False)
        )

    def teardown(self) -> None:
        try:
            self.stack.close()
        finally:
            if self.original_uuid4 is not None:
                engine_module.uuid4 = self.original_uuid4
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)

    # Helpers ----------------------------------------------------------------------

    def since(self, mark: int) -> list[Event]:
        """The events committed since `mark` (from `before()`), but the breaker's.

        The breaker's own events are left out: a read probe before an
        operation may close it, whatever then becomes of the operation.
        """
        self.history.follow(self.reader)
        return [
            stored
            for stored in self.history.log[mark:]
            if not isinstance(stored, BreakerOpened | BreakerClosed)
        ]

    def before(self) -> int:
        self.history.follow(self.reader)
        return len(self.history.log)

    def stored_controls(self, scope: str | None) -> RiskControls:
        identity = None if scope is None else account_id(scope)
        return self.reader.get(RiskControls, controls_id(identity)) or RiskControls.start(identity)

    def killed(self, name: str) -> bool:
        return name in self.switches or None in self.switches

    def used(self, name: str) -> tuple[Account, Exposure]:
        held = self.reader.get(Account, account_id(name))
        assert held is not None
        return held, exposure(UnitOfWork({}, self.reader), held, datetime.now(UTC).date())

    def open_positions(self) -> list[Position]:
        held = [self.reader.get(Position, target) for target in self.reader.open_positions()]
        return sorted((p for p in held if p is not None), key=lambda p: str(p.id))

    def was_refused(self, error: Refused, mark: int, operation: str, allowed: set[str]) -> None:
        """A refusal: by a control that may refuse this; its refusal event, and nothing else."""
        assert error.control in allowed, f"{operation} refused by {error.control}: {error}"
        hypothesis.event(f"{operation}: refused by {error.control}")
        self.refused += 1
        since = self.since(mark)
        assert len(since) == 1, f"a refusal wrote {since}: the refusal event alone is expected"
        written = since[0]
        assert isinstance(written, OperationRefused), written
        assert (written.control, written.operation) == (error.control, operation)
        assert written.detail == error.detail

    def wrote_nothing(self, mark: int) -> None:
        assert self.since(mark) == [], "an operation refused as invalid wrote events"

    def recorded_one_intent(self, mark: int) -> IntentRecorded:
        recorded = [e for e in self.since(mark) if isinstance(e, IntentRecorded)]
        assert len(recorded) == 1, recorded
        assert not any(isinstance(e, OperationRefused) for e in self.since(mark))
        return recorded[0]

    # Rules: trading ---------------------------------------------------------------

    @rule(name=st.sampled_from(ACCOUNTS), cents=st.integers(min_value=50_000, max_value=2_000_000))
    def deposit(self, name: str, cents: int) -> None:
        result = self.portal.call(self.engine.deposit, name, str(from_cents(cents)), CURRENCY)
        assert result.status == "completed"

    @rule(
        name=st.sampled_from(ACCOUNTS),
        symbol=st.sampled_from(sorted(STEPS_OF)),
        side=st.sampled_from([Side.LONG, Side.SHORT]),
        data=st.data(),
    )
    def open_position(self, name: str, symbol: str, side: Side, data: st.DataObject) -> None:
        permille = data.draw(st.none() | STOP_PERMILLE, label="stop permille")
        self._open(name, symbol, side, data, permille)

    @rule(
        name=st.sampled_from(ACCOUNTS),
        symbol=st.sampled_from(sorted(STEPS_OF)),
        side=st.sampled_from([Side.LONG, Side.SHORT]),
        data=st.data(),
        permille=st.integers(min_value=1, max_value=30),
    )
    def open_protected(
        self, name: str, symbol: str, side: Side, data: st.DataObject, permille: int
    ) -> None:
        """An open with a stop near the market: what a per-trade cap lets through."""
        self._open(name, symbol, side, data, permille)

    def _open(
        self, name: str, symbol: str, side: Side, data: st.DataObject, permille: int | None
    ) -> None:
        instrument = self.portal.call(self.broker_view.instrument, symbol)
        assert instrument is not None
        low, high = STEPS_OF[symbol]
        steps = data.draw(st.integers(min_value=low, max_value=high), label="steps")
        quantity = Quantity(steps * instrument.quantity_step)
        quote = self.portal.call(self.broker_view.quote, symbol)
        stop: Decimal | None = None
        if permille is not None:
            stop = stop_at(instrument.price_tick, side, quote, permille)
        entry = Price(quote.ask if side is Side.LONG else quote.bid)
        worst = instrument.worst_fill(side, entry, engine_module.PRICE_PROTECTION)
        notional = Money.rounded(instrument.notional(quantity, worst), CURRENCY, decimal.ROUND_UP)
        limits = self.limits[name]
        killed = self.killed(name)
        before = self.before()
        try:
            self.portal.call(
                lambda: self.engine.open_position(
                    name, symbol, side, str(quantity), stop_loss=None if stop is None else str(stop)
                )
            )
        except Refused as error:
            allowed = self._controls_that_may_refuse(name, stop)
            allowed |= {Control.CIRCUIT_BREAKER, Control.STALE_QUOTE, Control.MARKET_CLOSED}
            self.was_refused(error, before, "open", allowed)
            return
        except (NotFound, InsufficientFunds, InvalidValue) as error:
            hypothesis.event(f"open: {type(error).__name__}")
            self.wrote_nothing(before)
            return
        except (OperationRejected, OutcomeUnknown) as error:
            hypothesis.event(f"open: {type(error).__name__}")
        else:
            hypothesis.event("open: completed")
        # Past every control: the intent was recorded, whatever the broker said.
        assert not killed, f"an open in {name} went through its kill switch"
        intent = self.recorded_one_intent(before)
        # Its worst case, as limits count it: from the worst price its order may fill at,
        # what it can lose once held, and the fee on the way in.
        held = risk_of(instrument, side, quantity, worst, stop)
        expected = None if held is None else held + fee_at(instrument, quantity, worst)
        assert intent.at_risk == expected, (intent.at_risk, expected)
        _, used = self.used(name)
        self._assert_within(name, limits, used, notional)

    def _controls_that_may_refuse(self, name: str, stop: Decimal | None) -> set[str]:
        limits = self.limits[name]
        may: set[str] = {Control.STOP_LOSS_SIDE} if stop is not None else set()
        if self.killed(name):
            may.add(Control.KILL_SWITCH)
        if limits.require_stop_loss and stop is None:
            may.add(Control.STOP_LOSS_REQUIRED)
        named = {
            Control.MAX_TRADES_PER_DAY: limits.max_trades_per_day,
            Control.MAX_OPEN_POSITIONS: limits.max_open_positions,
            Control.MAX_POSITION_NOTIONAL: limits.max_position_notional,
            Control.MAX_DAILY_LOSS: limits.max_daily_loss,
            Control.MAX_DAILY_LOSS_PCT: limits.max_daily_loss_pct,
            Control.RISK_PER_TRADE: limits.risk_per_trade_pct,
        }
        return may | {control for control, value in named.items() if value is not None}

    def _assert_within(self, name: str, limits: Limits, used: Exposure, notional: Money) -> None:
        if limits.max_trades_per_day is not None:
            assert used.trades_today <= limits.max_trades_per_day, (name, used, limits)
        if limits.max_open_positions is not None:
            assert used.open_positions <= limits.max_open_positions, (name, used, limits)
        if limits.max_position_notional is not None:
            assert notional <= limits.max_position_notional, (name, notional, limits)
        worst = used.loss_today + used.at_risk
        if limits.max_daily_loss is not None:
            assert worst <= limits.max_daily_loss, (name, used, limits)
        if limits.max_daily_loss_pct is not None:
            cap = Money.rounded(
                used.equity.amount * limits.max_daily_loss_pct / 100,
                CURRENCY,
                decimal.ROUND_DOWN,
            )
            assert worst <= cap, (name, used, limits, cap)

    @precondition(lambda self: self.history.open_positions())
    @rule(data=st.data(), part=st.booleans())
    def close_position(self, data: st.DataObject, part: bool) -> None:  # noqa: FBT001
        held = data.draw(st.sampled_from(self.open_positions()), label="position")
        size = None
        if part:
            half = (held.quantity / 2).quantize(held.instrument.quantity_step, decimal.ROUND_DOWN)
            size = str(half) if 0 < half < held.quantity else None
        before = self.before()
        try:
            self.portal.call(self.engine.close_position, held.id, size)
        except Refused as error:
            # Closing reduces risk: no limit and no kill switch stops it.
            self.was_refused(error, before, "close", {Control.CIRCUIT_BREAKER})
        except (OperationRejected, OutcomeUnknown) as error:
            hypothesis.event(f"close: {type(error).__name__}")
            self.recorded_one_intent(before)
        except (NotFound, IllegalTransition, InvalidValue) as error:
            hypothesis.event(f"close: {type(error).__name__}")
            self.wrote_nothing(before)
        else:
            hypothesis.event("close: completed")
            self.recorded_one_intent(before)

    @precondition(lambda self: self.history.open_positions())
    @rule(data=st.data())
    def move_stop_loss(self, data: st.DataObject) -> None:
        held = data.draw(st.sampled_from(self.open_positions()), label="position")
        permille = data.draw(st.none() | STOP_PERMILLE, label="stop permille")
        quote = self.portal.call(self.broker_view.quote, held.instrument.symbol)
        stop: Decimal | None = None
        if permille is not None:
            stop = stop_at(held.instrument.price_tick, held.side, quote, permille)
        name = next(n for n in ACCOUNTS if account_id(n) == held.account_id)
        wider = moves_away(held.side, held.stop_loss, stop)
        before = self.before()
        try:
            self.portal.call(
                self.engine.change_stop_loss, held.id, None if stop is None else str(stop)
            )
        except Refused as error:
            allowed: set[str] = {Control.CIRCUIT_BREAKER, Control.STOP_LOSS_SIDE}
            if wider:
                # Only a wider stop is a new risk: a tighter one goes under any control.
                allowed |= {Control.KILL_SWITCH} if self.killed(name) else set()
                allowed |= {Control.RISK_PER_TRADE, Control.STOP_LOSS_REQUIRED}
                limits = self.limits[name]
                if limits.max_daily_loss is not None:
                    allowed.add(Control.MAX_DAILY_LOSS)
                if limits.max_daily_loss_pct is not None:
                    allowed.add(Control.MAX_DAILY_LOSS_PCT)
            self.was_refused(error, before, "set-sl", allowed)
        except (OperationRejected, OutcomeUnknown) as error:
            hypothesis.event(f"set-sl: {type(error).__name__}")
            self.recorded_one_intent(before)
        except (NotFound, IllegalTransition, InvalidValue) as error:
            hypothesis.event(f"set-sl: {type(error).__name__}")
            self.wrote_nothing(before)
        else:
            hypothesis.event(f"set-sl: completed, {'wider' if wider else 'tighter'}")
            self.recorded_one_intent(before)
            assert not (wider and self.killed(name)), "a stop widened under the kill switch"

    @rule(steps=st.integers(min_value=1, max_value=600))
    def advance_the_broker_clock(self, steps: int) -> None:
        self.portal.call(self.broker_view.advance, steps)

    # Rules: the operator's controls -------------------------------------------------

    @rule(name=st.sampled_from(ACCOUNTS), data=st.data())
    def set_limits(self, name: str, data: st.DataObject) -> None:
        self._set_limits(name, data)

    def _set_limits(self, name: str, data: st.DataObject) -> None:
        names = data.draw(st.sets(st.sampled_from(sorted(LIMIT_VALUES)), max_size=4), label="set")
        changes = {limit: data.draw(LIMIT_VALUES[limit], label=limit) for limit in sorted(names)}
        others = sorted(set(LIMIT_VALUES) - names)
        clear = data.draw(st.lists(st.sampled_from(others), unique=True, max_size=2), label="clear")
        if not changes and not clear:
            changes = {"max_open_positions": "3"}
        self._save_limits(name, changes, clear)

    def _save_limits(self, name: str, changes: dict[str, object], clear: list[str]) -> None:
        if not changes and not clear:
            return
        # As `ledger limits set` does it: read, update, save, outside the engine.
        controls = self.stored_controls(name)
        assert controls.limits == self.limits[name], "the store lost an operator's limits"
        limits = updated(controls.limits, changes, clear, CURRENCY)
        controls.set_limits(limits, actor=OPERATOR, reason="machine", recorded_at=_now())
        self.reader.save(controls)
        self.limits[name] = limits

    @rule(scope=st.sampled_from(SCOPES), flatten=st.booleans())
    def engage_kill_switch(self, scope: str | None, flatten: bool) -> None:  # noqa: FBT001
        controls = self.stored_controls(scope)
        engaged = self.switches.get(scope)
        try:
            controls.engage(actor=OPERATOR, reason="halt", flatten=flatten, recorded_at=_now())
        except IllegalTransition:
            assert engaged is not None
            assert engaged.flatten or not flatten
            return
        assert engaged is None or (flatten and not engaged.flatten)
        self.reader.save(controls)
        self.switches[scope] = Switch(flatten=flatten)

    @precondition(lambda self: self.switches)
    @rule(data=st.data())
    def release_kill_switch(self, data: st.DataObject) -> None:
        scope = data.draw(st.sampled_from(sorted(self.switches, key=str)), label="scope")
        # As `ledger kill-switch release` counts them: the broker's positions in its scope.
        at_broker = self.portal.call(self.broker_view.positions)
        holding = len([p for p in at_broker if scope is None or p.account == scope])
        controls = self.stored_controls(scope)
        try:
            controls.release(
                actor=OPERATOR, reason="resume", broker_positions=holding, recorded_at=_now()
            )
        except IllegalTransition:
            assert self.switches[scope].flatten
            assert holding
            return
        assert not self.switches[scope].flatten or not holding
        self.reader.save(controls)
        del self.switches[scope]

    @precondition(lambda self: any(switch.flatten for switch in self.switches.values()))
    @rule()
    def flattening_pass(self) -> None:
        """What a running engine does after each reconciliation pass."""
        scopes = {
            None if s is None else account_id(s) for s, w in self.switches.items() if w.flatten
        }
        targets = {p.id for p in self.open_positions() if None in scopes or p.account_id in scopes}
        closing = set()
        for intent_id in self.reader.unfinished_intents():
            intent = self.reader.get(Intent, intent_id)
            if intent is not None and isinstance(intent.payload, CloseRequest):
                closing.add(intent.payload.position_id)
        closings = self.portal.call(flatten_latched, self.engine)
        # Every open position under a flattening switch gets a close, but one already closing.
        assert {c.position_id for c in closings} == targets - closing
        for closed in closings:
            assert closed.result is not None or closed.error, closed
            if closed.error is not None and closed.error.startswith("refused by "):
                assert closed.error.startswith(f"refused by {Control.CIRCUIT_BREAKER}:")
                self.refused += 1

    # Rules: crashes ------------------------------------------------------------------

    @precondition(lambda self: self.restarts < RESTARTS_MAX)
    @rule()
    def crash_and_recover(self) -> None:
        """The engine goes with what it left in flight; a new one recovers on start."""
        self.restarts += 1
        self.stack.close()
        self.stack = ExitStack()
        self._start_engine()
        # The controls outlive the engine: exactly what operators set.
        for name in ACCOUNTS:
            assert self.stored_controls(name).limits == self.limits[name]

    # Invariants, from the store's log -------------------------------------------------

    @invariant()
    def every_intent_kept_to_the_controls_of_its_moment(self) -> None:
        if self.folder is None:
            return
        self.history.follow(self.reader)

    @invariant()
    def every_refusal_the_callers_heard_is_recorded(self) -> None:
        if self.folder is None:
            return
        self.history.follow(self.reader)
        refusals = [e for e in self.history.log if isinstance(e, OperationRefused)]
        assert len(refusals) == self.refused

    @invariant()
    def exposure_counts_the_day_every_open_position_and_every_open_in_flight(self) -> None:
        if self.folder is None:
            return
        self.history.follow(self.reader)
        for name in ACCOUNTS:
            _, used = self.used(name)
            tallied = self.tallied(name)
            assert sorted(used.unbounded) == sorted(tallied.unbounded), name
            assert msgspec.structs.replace(used, unbounded=()) == msgspec.structs.replace(
                tallied, unbounded=()
            ), name

    def tallied(self, name: str) -> Exposure:
        """`name`'s exposure today, counted from the log alone (not by `ledger.risk`): its
        positions opened today and open now, its realised P&L and fees today, its opens
        still in flight at their recorded worst case and its open positions at their stops."""
        identity = account_id(name)
        today = datetime.now(UTC).date()
        opened = 0
        net = Decimal(0)
        for stored in self.history.log:
            if stored.recorded_at.astimezone(UTC).date() != today:
                continue
            if isinstance(stored, PositionOpened) and stored.account_id == identity:
                opened += 1
            elif isinstance(stored, PnlRealised) and stored.originator_id == identity:
                net += stored.amount.amount
            elif isinstance(stored, FeeCharged) and stored.originator_id == identity:
                net -= stored.amount.amount
        in_flight = [i for i, owner in self.history.opening.items() if owner == identity]
        held_open = [p for p in self.history.open_positions() if p.account_id == identity]
        risks = [self.history.worst[i] for i in in_flight]
        risks += [held_risk(held, held.stop_loss) for held in held_open]
        unbounded = [
            f"an open in flight (intent {i})" for i in in_flight if self.history.worst[i] is None
        ] + [
            f"position {p.id} ({p.side} {p.instrument.symbol})"
            for p in held_open
            if held_risk(p, p.stop_loss) is None
        ]
        total = self.history.account(identity).total
        return Exposure(
            trades_today=opened + len(in_flight),
            open_positions=len(held_open) + len(in_flight),
            loss_today=usd(max(-net, Decimal(0))),
            at_risk=sum((risk for risk in risks if risk is not None), Money.zero(CURRENCY)),
            equity=total - usd(net),
            unbounded=tuple(unbounded),
        )

    @invariant()
    def the_store_holds_the_controls_operators_set(self) -> None:
        if self.folder is None:
            return
        for scope in SCOPES:
            controls = self.stored_controls(scope)
            engaged = controls.kill_switch
            assert (engaged is not None) == (scope in self.switches), scope
            if engaged is not None:
                assert engaged.flatten == self.switches[scope].flatten
            if scope is not None:
                assert controls.limits == self.limits[scope]


def _now() -> datetime:
    return datetime.now(UTC)


RiskMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
TestRiskMachine = RiskMachine.TestCase


# What the machine's invariants point at, pinned down one case each ----------------------------


@pytest.fixture
def anyio_backend():
    return "asyncio"


class GatedBroker:
    """The paper broker, but a take-profit amendment waits at a gate: a slow venue."""

    def __init__(self, broker: PaperBroker, gate: anyio.Event) -> None:
        self.broker = broker
        self.gate = gate

    def __getattr__(self, name: str) -> object:
        return getattr(self.broker, name)

    async def amend_protection(self, request: ProtectionRequest) -> WriteResult:
        if request.stop_loss is msgspec.UNSET:
            await self.gate.wait()
        return await self.broker.amend_protection(request)


@pytest.mark.anyio
async def test_a_take_profit_change_does_not_put_back_a_stop_tightened_meanwhile(tmp_path):
    setup = await funded(Setup(tmp_path))
    gate = anyio.Event()
    with Store.open(setup.store_url) as store, PaperBroker.open(setup.broker_url) as broker:
        async with Engine.open(store, GatedBroker(broker, gate), holder="test") as engine:
            quote = await broker.quote("BTCUSD")
            opened = await engine.open_position(
                "main", "BTCUSD", "long", "0.01", stop_loss=quote.bid - 5000
            )
            assert opened.position_id is not None
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(engine.change_take_profit, opened.position_id, quote.ask + 5000)
                await anyio.sleep(0.2)  # recorded, and waiting for the venue
                engage(setup)  # from here, no stop may move away from the market
                await engine.change_stop_loss(opened.position_id, quote.bid - 1000)
                gate.set()
            (at_broker,) = await broker.positions()
        held = store.get(Position, opened.position_id)
    assert held is not None
    assert at_broker.stop_loss == quote.bid - 1000
    assert held.take_profit == quote.ask + 5000
    assert held.stop_loss == quote.bid - 1000, f"the stop went back to {held.stop_loss}"


async def next_move_past(engine: Engine, size: Decimal) -> Decimal:
    """Let the paper clock run to a step whose next BTCUSD price move is more than `size`."""
    assert isinstance(engine.broker, PaperBroker)
    book = engine.broker._book
    for _ in range(200):
        mid = book._mid("BTCUSD")
        move = market.next_price(book.settings.seed, "BTCUSD", book.step + 1, mid) - mid
        if abs(move) > size:
            return move
        await engine.broker.advance(1)
    raise AssertionError(f"no price move past {size} in 200 steps")


@pytest.mark.anyio
async def test_an_open_at_the_daily_loss_limit_is_accepted_and_stays_within_it(tmp_path):
    setup = await funded(Setup(tmp_path))
    async with setup.engine() as engine:
        quote = await engine.broker.quote("BTCUSD")
        instrument = await engine.instrument("BTCUSD")
        quantity, stop = Quantity(Decimal("0.05")), Price(quote.bid - Decimal("0.5"))
        worst = instrument.worst_fill(Side.LONG, Price(quote.ask), engine.price_protection)
        # Its fees and its fill past the quote count: exactly what the limit allows.
        limit = worst_loss(instrument, Side.LONG, quantity, worst, stop)
        set_limits(setup, max_daily_loss=str(limit.amount - Decimal("0.01")))
        with pytest.raises(Refused, match="max_daily_loss"):
            await engine.open_position("main", "BTCUSD", "long", str(quantity), stop_loss=stop)
        set_limits(setup, max_daily_loss=str(limit.amount))
        opened = await engine.open_position("main", "BTCUSD", "long", str(quantity), stop_loss=stop)
        assert opened.status == "completed"
    with Store.open(setup.store_url) as store:
        held = store.get(Account, account_id("main"))
        assert held is not None
        used = exposure(UnitOfWork({}, store), held, datetime.now(UTC).date())
    assert used.loss_today + used.at_risk <= limit, used


@pytest.mark.anyio
async def test_a_stop_as_filled_risks_at_most_the_per_trade_share(tmp_path):
    setup = await funded(Setup(tmp_path))
    set_limits(setup, risk_per_trade_pct="1")  # of 10000.00: 100.00, or 95.00 with the margin
    async with setup.engine() as engine:
        move = await next_move_past(engine, Decimal(1))
        # The fill lands one price step after the quote, worse than the quote.
        side = Side.LONG if move > 0 else Side.SHORT
        quote = await engine.broker.quote("BTCUSD")
        instrument = await engine.instrument("BTCUSD")
        priced = Price(quote.ask if side is Side.LONG else quote.bid)
        worst = instrument.worst_fill(side, priced, engine.price_protection)
        quantity = Quantity(Decimal("0.05"))
        # The widest stop the cap allows, measured from the worst fill, fees included.
        distance = Decimal(1900)
        while True:
            stop = Price(worst - side.sign * distance)
            if worst_loss(instrument, side, quantity, worst, stop) <= usd("95.00"):
                break
            distance -= instrument.price_tick
        opened = await engine.open_position("main", "BTCUSD", side, str(quantity), stop_loss=stop)
    assert opened.position_id is not None
    held = setup_position(setup, opened.position_id)
    assert held.entry_price != priced, "the fill was meant to land off the quote"
    assert held.stop_loss is not None
    loss = worst_loss(held.instrument, held.side, held.quantity, held.entry_price, held.stop_loss)
    assert loss <= usd("95.00"), f"filled at {held.entry_price}: {loss} at stake"


@pytest.mark.anyio
async def test_an_open_the_market_moves_past_its_protection_is_rejected_and_released(tmp_path):
    setup = await funded(Setup(tmp_path))
    async with setup.engine() as engine:
        engine.price_protection = Decimal(0)  # the quote itself is the worst price allowed
        move = await next_move_past(engine, Decimal(1))
        side = Side.LONG if move > 0 else Side.SHORT  # the next step moves against it
        with pytest.raises(OperationRejected, match="protection price"):
            await engine.open_position("main", "BTCUSD", side, "0.05")
        assert await engine.broker.positions() == []
    account = setup.account()
    assert not account.reservations
    assert account.total == usd("10000")


@pytest.mark.anyio
async def test_a_refused_stop_loss_change_names_its_account(tmp_path):
    setup = await funded(Setup(tmp_path))
    async with setup.engine() as engine:
        quote = await engine.broker.quote("BTCUSD")
        opened = await engine.open_position(
            "main", "BTCUSD", "long", "0.01", stop_loss=quote.bid - 1000
        )
        assert opened.position_id is not None
        engage(setup)
        with pytest.raises(Refused, match="kill_switch"):
            await engine.change_stop_loss(opened.position_id, quote.bid - 2000)
    (refusal,) = refusals(setup)
    assert (refusal.operation, refusal.subject) == ("set-sl", str(opened.position_id))
    assert refusal.account_id == account_id("main")


def setup_position(setup: Setup, target: UUID) -> Position:
    with Store.open(setup.store_url) as store:
        held = store.get(Position, target)
    assert held is not None
    return held
