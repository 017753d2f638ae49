"""One engine, kept alive across rules, against a model and a faulty paper broker.

Each machine run gets a folder of its own, a SQLite store and a paper broker
whose fault plan loses answers (before and after acceptance), reports fills
twice and refuses stop-loss changes, with a seed drawn by hypothesis. The
rules deposit, withdraw, open, close and move stop-losses; every typed error
the engine raises is a legitimate outcome, and each rule records what the
model must then expect. After every step the invariants are read back from
the store (and the broker), never from the engine's own memory.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from uuid import UUID, uuid4

import anyio.from_thread
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import ledger.engine as engine_module
from adapters.bootstrap import open_engine
from adapters.paper import market
from adapters.paper.broker import PaperBroker
from adapters.store import INTENT_STARTS, Store
from ledger.account import (
    Account,
    AccountSnapshot,
    Deposited,
    FeeCharged,
    PnlRealised,
    Withdrawn,
    account_id,
)
from ledger.client_ids import parse_client_id
from ledger.engine import RESERVATION_MARGIN, Engine
from ledger.errors import (
    IllegalTransition,
    InsufficientFunds,
    InvalidValue,
    NotFound,
    OperationRejected,
    OutcomeUnknown,
)
from ledger.instruments import Price, Quantity, Side
from ledger.intent import Intent, IntentKind, IntentRecorded, IntentStatus
from ledger.money import Money
from ledger.position import Position, position_id
from ledger.results import OperationResult
from tests.agreement import assert_agrees

CURRENCY = "USD"
ACCOUNTS = ("main", "desk")
FAULTS = "timeout_before_accept:0.1,timeout_after_accept:0.1,duplicate_ack:0.2,reject_sl_change:0.2"
# The broker holds plenty for "main", and less for "desk" than the ledger may:
# some of desk's orders are refused at the broker, not by the ledger.
BROKER_FUNDS = {"main": "10000000", "desk": "1000"}
ZERO = Decimal("0.00")

# Stop-losses far from where the walks can go in a run (BTCUSD starts at
# 65000.0 and moves at most 20 a step; ETHUSD at 3200.00, at most 1.50 a
# step): no stop triggers at the broker behind the ledger's back.
STOPS: dict[tuple[str, Side], tuple[str, ...]] = {
    ("BTCUSD", Side.LONG): ("50000.0", "55000.5", "60000.0"),
    ("BTCUSD", Side.SHORT): ("70000.0", "75000.5", "80000.0"),
    ("ETHUSD", Side.LONG): ("2500.00", "2750.05", "3000.00"),
    ("ETHUSD", Side.SHORT): ("3500.00", "3750.05", "4000.00"),
}
# Quantities in steps: BTCUSD 0.0010-0.0500, ETHUSD 0.010-1.000.
STEPS_OF: dict[str, tuple[int, int]] = {"BTCUSD": (10, 500), "ETHUSD": (10, 1000)}

# Values every operation must refuse before writing anything.
BAD_VALUES = [
    "deposit NaN",
    "deposit too many places",
    "withdraw negative",
    "open unknown symbol",
    "open too many places",
    "close unknown position",
    "stop-loss off the tick",
]

cents = st.integers(min_value=1, max_value=2_000_000)
deposit_cents = st.integers(min_value=100_000, max_value=20_000_000)
opening_cents = st.integers(min_value=10_000, max_value=2_000_000)


def usd(amount: Decimal | str) -> Money:
    return Money.parse(amount, CURRENCY)


def from_cents(count: int) -> Decimal:
    return Decimal(count).scaleb(-2)


class ModelPosition:
    """What the model believes about one position the engine opened."""

    def __init__(self, account: str, symbol: str, side: Side, quantity: Decimal) -> None:
        self.account = account
        self.symbol = symbol
        self.side = side
        self.quantity = quantity
        self.stop_loss: Decimal | None = None
        # A write about it whose outcome is unknown: the broker may have done it.
        self.doubtful = False


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.stack = ExitStack()
        self.folder: Path | None = None
        self.original_uuid4: Callable[[], UUID] | None = None
        self.portal: anyio.from_thread.BlockingPortal
        self.engine: Engine
        self.reader: Store
        self.broker_view: PaperBroker
        # The model.
        self.opened_accounts: set[str] = set()
        self.deposited: dict[str, Decimal] = dict.fromkeys(ACCOUNTS, ZERO)
        self.withdrawn: dict[str, Decimal] = dict.fromkeys(ACCOUNTS, ZERO)
        self.intents: dict[UUID, IntentStatus] = {}
        self.in_flight_reservations: dict[UUID, Money] = {}
        self.positions: dict[UUID, ModelPosition] = {}
        self.closed: set[UUID] = set()

    # Set-up and tear-down ---------------------------------------------------------

    @initialize(seed=st.integers(min_value=0, max_value=2**31), opening=opening_cents)
    def start(self, seed: int, opening: int) -> None:
        # The broker's faults are drawn from its seed and each order's client
        # id, which comes from the intent id: ids from the seed, not uuid4, so
        # hypothesis sees the same outcomes when it replays a run.
        ids = random.Random(seed)  # noqa: S311 - reproducible, not secret
        self.original_uuid4 = engine_module.uuid4
        engine_module.uuid4 = lambda: UUID(int=ids.getrandbits(128), version=4)
        self.folder = Path(tempfile.mkdtemp(prefix="engine-machine-"))
        self.store_url = f"sqlite:///{self.folder / 'ledger.db'}"
        clean_broker_url = f"paper:///{self.folder / 'broker.db'}?seed={seed}"
        broker_url = f"{clean_broker_url}&faults={FAULTS}"
        self.portal = self.stack.enter_context(anyio.from_thread.start_blocking_portal())
        with PaperBroker.open(clean_broker_url) as funding:
            for name, amount in BROKER_FUNDS.items():
                self.portal.call(funding.fund, name, usd(amount))
        self.broker_url = broker_url
        self.clean_broker_url = clean_broker_url
        self.engine = self.stack.enter_context(
            self.portal.wrap_async_context_manager(
                open_engine(store=self.store_url, broker=broker_url)
            )
        )
        self.reader = self.stack.enter_context(Store.open(self.store_url))
        self.broker_view = self.stack.enter_context(
            PaperBroker.open(clean_broker_url, start_session=False)
        )
        # One account starts funded (sometimes too little for an order), so
        # trading starts at once; the other opens with its first deposit.
        self.deposit(ACCOUNTS[0], opening)

    def teardown(self) -> None:
        try:
            self.stack.close()
        finally:
            if self.original_uuid4 is not None:
                engine_module.uuid4 = self.original_uuid4
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)

    # Helpers ----------------------------------------------------------------------

    def account(self, name: str) -> Account | None:
        return self.reader.get(Account, account_id(name))

    def event_count(self) -> int:
        return self.reader.info().event_count

    def refused_without_a_trace(self, before: int) -> None:
        assert self.event_count() == before, "a refused operation wrote events"

    def completed(self, result: OperationResult, kind: IntentKind) -> None:
        assert result.status == "completed", result
        assert result.kind is kind
        assert result.intent_id not in self.intents
        self.intents[result.intent_id] = IntentStatus.COMPLETED

    def rejected(self, error: OperationRejected) -> None:
        intent_id = error.intent_id
        assert isinstance(intent_id, UUID)
        assert intent_id not in self.intents
        self.intents[intent_id] = IntentStatus.FAILED

    def unknown(self, error: OutcomeUnknown) -> UUID:
        intent_id = error.intent_id
        assert isinstance(intent_id, UUID)
        assert intent_id not in self.intents
        self.intents[intent_id] = IntentStatus.IN_PROGRESS
        return intent_id

    def open_ids(self) -> list[UUID]:
        return sorted(self.positions, key=str)

    # Rules ------------------------------------------------------------------------

    @rule(name=st.sampled_from(ACCOUNTS), amount=deposit_cents)
    def deposit(self, name: str, amount: int) -> None:
        money = from_cents(amount)
        result = self.portal.call(self.engine.deposit, name, str(money), CURRENCY)
        self.completed(result, IntentKind.BALANCE_ADD)
        self.opened_accounts.add(name)
        self.deposited[name] += money

    @rule(name=st.sampled_from(ACCOUNTS), amount=cents)
    def withdraw(self, name: str, amount: int) -> None:
        money = from_cents(amount)
        held = self.account(name)
        before = self.event_count()
        try:
            result = self.portal.call(self.engine.withdraw, name, str(money), CURRENCY)
        except NotFound:
            assert name not in self.opened_accounts
            self.refused_without_a_trace(before)
            return
        except InsufficientFunds:
            assert held is not None
            assert usd(money) > held.available, f"{money} refused with {held.available} free"
            self.refused_without_a_trace(before)
            return
        assert held is not None
        assert usd(money) <= held.available, f"{money} withdrawn with {held.available} free"
        self.completed(result, IntentKind.BALANCE_DEDUCT)
        self.withdrawn[name] += money

    @rule(
        name=st.sampled_from(ACCOUNTS),
        symbol=st.sampled_from(sorted(STEPS_OF)),
        side=st.sampled_from([Side.LONG, Side.SHORT]),
        data=st.data(),
    )
    def open_position(self, name: str, symbol: str, side: Side, data: st.DataObject) -> None:
        instrument = market.instrument(symbol)
        assert instrument is not None
        low, high = STEPS_OF[symbol]
        steps = data.draw(st.integers(min_value=low, max_value=high), label="steps")
        quantity = Quantity(steps * instrument.quantity_step)
        stop = data.draw(st.none() | st.sampled_from(STOPS[symbol, side]), label="stop_loss")
        # The engine prices its reservation from the quote it is about to read.
        quote = self.portal.call(self.broker_view.quote, symbol)
        estimate = (quote.ask if side is Side.LONG else quote.bid) * (1 + RESERVATION_MARGIN)
        reservation = instrument.funds_required(quantity, Price(estimate))
        held = self.account(name)
        before = self.event_count()
        try:
            result = self.portal.call(
                lambda: self.engine.open_position(name, symbol, side, str(quantity), stop_loss=stop)
            )
        except NotFound:
            assert name not in self.opened_accounts
            self.refused_without_a_trace(before)
            return
        except InsufficientFunds:
            assert held is not None
            assert reservation > held.available, f"{reservation} refused, {held.available} free"
            self.refused_without_a_trace(before)
            return
        except OperationRejected as error:
            self.rejected(error)
            refusal = error
        except OutcomeUnknown as error:
            intent_id = self.unknown(error)
            assert held is not None
            assert reservation <= held.available, f"{reservation} reserved, {held.available} free"
            self.in_flight_reservations[intent_id] = reservation
            return
        else:
            refusal = None
        assert held is not None
        assert reservation <= held.available, f"{reservation} reserved, {held.available} free"
        if refusal is not None:
            # Only desk's broker account is short of what the ledger holds.
            assert name == "desk", f"the broker refused {name}'s order: {refusal.reason}"
            assert "insufficient funds" in refusal.reason
            return
        self.completed(result, IntentKind.POSITION_OPEN)
        assert result.position_id == position_id(result.intent_id)
        assert result.quantity == quantity
        assert result.price is not None
        opened = ModelPosition(name, symbol, side, quantity)
        opened.stop_loss = None if stop is None else Decimal(stop)
        self.positions[result.position_id] = opened

    @precondition(lambda self: self.positions)
    @rule(data=st.data(), part=st.booleans())
    def close_position(self, data: st.DataObject, part: bool) -> None:  # noqa: FBT001
        target = data.draw(st.sampled_from(self.open_ids()), label="position")
        held = self.positions[target]
        instrument = market.instrument(held.symbol)
        assert instrument is not None
        size: Decimal | None = None
        if part:
            half = (held.quantity / 2).quantize(instrument.quantity_step, rounding=ROUND_DOWN)
            size = half if 0 < half < held.quantity else None
        before = self.event_count()
        refusal: OperationRejected | None = None
        try:
            result = self.portal.call(
                self.engine.close_position, target, None if size is None else str(size)
            )
        except OperationRejected as error:
            self.rejected(error)
            refusal = error
        except OutcomeUnknown as error:
            self.unknown(error)
            held.doubtful = True
            return
        except (NotFound, IllegalTransition, InvalidValue) as error:
            self.refused_without_a_trace(before)
            raise AssertionError(f"closing open position {target} was refused: {error}") from None
        if refusal is not None:
            # Only a position an unknown write may already have closed at the
            # broker can be refused there: nothing else touches it in a run.
            assert held.doubtful, f"the broker refused to close {target}: {refusal.reason}"
            return
        self.completed(result, IntentKind.POSITION_CLOSE)
        closed = held.quantity if size is None else size
        assert result.position_id == target
        assert result.quantity == closed
        assert result.pnl is not None
        held.quantity -= closed
        if not held.quantity:
            del self.positions[target]
            self.closed.add(target)

    @precondition(lambda self: self.positions)
    @rule(data=st.data())
    def change_stop_loss(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(self.open_ids()), label="position")
        held = self.positions[target]
        level = data.draw(
            st.none() | st.sampled_from(STOPS[held.symbol, held.side]), label="stop_loss"
        )
        try:
            result = self.portal.call(self.engine.change_stop_loss, target, level)
        except OperationRejected as error:
            self.rejected(error)
            return
        except OutcomeUnknown as error:
            self.unknown(error)
            return
        self.completed(result, IntentKind.POSITION_UPDATE)
        assert result.position_id == target
        held.stop_loss = None if level is None else Decimal(level)

    @precondition(lambda self: self.closed)
    @rule(data=st.data(), close=st.booleans())
    def operate_on_a_closed_position(self, data: st.DataObject, close: bool) -> None:  # noqa: FBT001
        target = data.draw(st.sampled_from(sorted(self.closed, key=str)), label="position")
        before = self.event_count()
        try:
            if close:
                self.portal.call(self.engine.close_position, target, None)
            else:
                self.portal.call(self.engine.change_stop_loss, target, None)
        except IllegalTransition:
            self.refused_without_a_trace(before)
        else:
            raise AssertionError(f"an operation on closed position {target} was accepted")

    @rule(bad=st.sampled_from(BAD_VALUES), name=st.sampled_from(ACCOUNTS))
    def refuse_a_bad_value(self, bad: str, name: str) -> None:
        engine = self.engine
        calls = {
            "deposit NaN": lambda: engine.deposit(name, "NaN", CURRENCY),
            "deposit too many places": lambda: engine.deposit(name, "1.001", CURRENCY),
            "withdraw negative": lambda: engine.withdraw(name, "-5", CURRENCY),
            "open unknown symbol": lambda: engine.open_position(name, "XYZ", Side.LONG, "1"),
            "open too many places": lambda: engine.open_position(
                name, "BTCUSD", Side.LONG, "0.00001"
            ),
            "close unknown position": lambda: engine.close_position(uuid4()),
            "stop-loss off the tick": lambda: engine.change_stop_loss(
                self.open_ids()[0] if self.positions else uuid4(), "1.001"
            ),
        }
        expected: type[Exception] = InvalidValue
        if bad == "close unknown position" or (bad.startswith("stop") and not self.positions):
            expected = NotFound
        before = self.event_count()
        try:
            self.portal.call(calls[bad])
        except expected:
            self.refused_without_a_trace(before)
        else:
            raise AssertionError(f"{bad} was accepted")

    @rule()
    def crash_and_recover(self) -> None:
        """The engine goes away with what it left in flight; a new one recovers on start.

        Afterwards the ledger equals the broker (open positions, SL/TP,
        cash) and nothing but an intent under review is left unfinished.
        """
        # The old engine's context is the last one on the stack but the two
        # readers: closing the whole stack and reopening keeps the order simple.
        self.stack.close()
        self.stack = ExitStack()
        self.portal = self.stack.enter_context(anyio.from_thread.start_blocking_portal())
        self.engine = self.stack.enter_context(
            self.portal.wrap_async_context_manager(
                open_engine(store=self.store_url, broker=self.clean_broker_url)
            )
        )
        self.reader = self.stack.enter_context(Store.open(self.store_url))
        self.broker_view = self.stack.enter_context(
            PaperBroker.open(self.clean_broker_url, start_session=False)
        )
        self._learn_what_recovery_decided()
        assert_agrees(self.reader, self.portal.call(self.broker_view.positions))

    def _learn_what_recovery_decided(self) -> None:
        """Bring the model up to what recovery settled from broker evidence."""
        for intent_id, intent in self.stored_intents().items():
            self.intents[intent_id] = intent.status
            if intent.is_terminal:
                self.in_flight_reservations.pop(intent_id, None)
            if intent.kind is IntentKind.POSITION_OPEN and intent.status is IntentStatus.COMPLETED:
                target = position_id(intent_id)
                if target not in self.positions and target not in self.closed:
                    position = self.reader.get(Position, target)
                    assert position is not None
                    name = self._name(position.account_id)
                    self.positions[target] = ModelPosition(
                        name, position.instrument.symbol, position.side, position.quantity
                    )
        for target in list(self.positions):
            position = self.reader.get(Position, target)
            assert position is not None
            if not position.is_open:
                del self.positions[target]
                self.closed.add(target)
                continue
            model = self.positions[target]
            model.quantity = position.quantity
            model.stop_loss = position.stop_loss
            model.doubtful = False

    def _name(self, account: UUID) -> str:
        return next(name for name in ACCOUNTS if account_id(name) == account)

    # Invariants, read from the store and the broker ------------------------------

    def stored_intents(self) -> dict[UUID, Intent]:
        recorded = [
            UUID(str(notification.originator_id))
            for notification in self.reader.application.recorder.select_notifications(
                start=1, limit=1_000_000, topics=INTENT_STARTS
            )
            if notification.topic.startswith(f"{IntentRecorded.stored_name}/")
        ]
        intents: dict[UUID, Intent] = {}
        for intent_id in recorded:
            intent = self.reader.get(Intent, intent_id)
            assert intent is not None, f"intent {intent_id} recorded but not loadable"
            intents[intent_id] = intent
        return intents

    @invariant()
    def intents_are_what_the_model_expects(self) -> None:
        if self.folder is None:
            return
        intents = self.stored_intents()
        assert {i: intent.status for i, intent in intents.items()} == self.intents

    @invariant()
    def reservations_are_exactly_those_of_unfinished_intents(self) -> None:
        if self.folder is None:
            return
        intents = self.stored_intents()
        unfinished = set(self.reader.unfinished_intents())
        assert unfinished == {i for i, intent in intents.items() if not intent.is_terminal}
        for name in ACCOUNTS:
            account = self.account(name)
            if account is None:
                assert name not in self.opened_accounts
                continue
            expected = {
                intent_id: intent.reservation
                for intent_id in unfinished
                if (intent := intents[intent_id]).account_id == account.id
                and intent.reservation is not None
            }
            # (a) reservations: exactly the unfinished intents' own amounts.
            assert account.reservations == expected
            assert {
                intent_id: amount
                for intent_id, amount in self.in_flight_reservations.items()
                if intents[intent_id].account_id == account.id
            } == expected
        # (b) a terminal intent holds nothing.
        held = {key for name in self.opened_accounts for key in self._reservations(name)}
        for intent_id, intent in intents.items():
            if intent.is_terminal:
                assert intent_id not in held, f"terminal intent {intent_id} holds a reservation"

    def _reservations(self, name: str) -> set[UUID]:
        account = self.account(name)
        assert account is not None
        return set(account.reservations)

    @invariant()
    def the_total_is_the_sum_of_the_account_events(self) -> None:
        if self.folder is None:
            return
        for name in sorted(self.opened_accounts):
            account = self.account(name)
            assert account is not None
            deposits = withdrawals = pnl = fees = ZERO
            for event in self.reader.application.events.get(account.id):
                if event.stored_name == AccountSnapshot.stored_name:
                    continue
                if isinstance(event, Deposited):
                    deposits += event.amount.amount
                elif isinstance(event, Withdrawn):
                    withdrawals += event.amount.amount
                elif isinstance(event, PnlRealised):
                    pnl += event.amount.amount
                elif isinstance(event, FeeCharged):
                    fees += event.amount.amount
            # (c) the total is the fold of the account's own events.
            assert account.total == usd(deposits - withdrawals + pnl - fees)
            assert deposits == self.deposited[name]
            assert withdrawals == self.withdrawn[name]

    @invariant()
    def every_completed_open_has_its_position(self) -> None:
        if self.folder is None:
            return
        for intent_id, intent in self.stored_intents().items():
            if intent.kind is not IntentKind.POSITION_OPEN:
                continue
            position = self.reader.get(Position, position_id(intent_id))
            if intent.status is IntentStatus.COMPLETED:
                # (d) a completed open has its position, at the derived id.
                assert position is not None, f"completed open {intent_id} has no position"
                assert position.intent_id == intent_id
                assert position.account_id == intent.account_id
                assert position.client_id == intent.client_id
            else:
                assert position is None, f"{intent.status} open {intent_id} has a position"
        for target, held in self.positions.items():
            position = self.reader.get(Position, target)
            assert position is not None
            assert position.is_open
            assert position.quantity == held.quantity
            assert position.stop_loss == held.stop_loss
        for target in self.closed:
            position = self.reader.get(Position, target)
            assert position is not None
            assert not position.is_open
        # Money is committed to exactly the positions still open.
        for name in sorted(self.opened_accounts):
            account = self.account(name)
            assert account is not None
            assert set(account.commitments) == {
                target for target, held in self.positions.items() if held.account == name
            }

    @invariant()
    def the_broker_saw_only_the_ledger_s_client_ids(self) -> None:
        if self.folder is None:
            return
        orders = self.portal.call(self.broker_view.all_orders)
        client_ids = [order.client_id for order in orders]
        # (e) unique, and each one an intent in the store, sent in this or an older epoch.
        assert len(set(client_ids)) == len(client_ids), client_ids
        intents = self.stored_intents()
        for client_id in client_ids:
            assert client_id is not None
            parts = parse_client_id(client_id)
            assert parts is not None, f"{client_id!r} is not one of the ledger's client ids"
            assert parts.intent_id in intents, f"{client_id} names no stored intent"
            assert intents[parts.intent_id].client_id == client_id
            assert parts.epoch <= self.engine.epoch
        # Every order the ledger completed is one the broker has; one it left in
        # flight is one the broker's lookup did not show, and with no visibility
        # lag in this fault plan, one the broker does not have.
        for intent in intents.values():
            if intent.kind not in {IntentKind.POSITION_OPEN, IntentKind.POSITION_CLOSE}:
                continue
            if intent.status is IntentStatus.COMPLETED:
                assert intent.client_id in client_ids, f"{intent.id} completed, not at the broker"
            elif intent.status in {IntentStatus.IN_PROGRESS, IntentStatus.ROLLED_BACK}:
                assert intent.client_id not in client_ids, f"{intent.id} {intent.status}, yet sent"

    @invariant()
    def the_broker_holds_what_the_ledger_holds(self) -> None:
        if self.folder is None:
            return
        at_broker = {p.broker_ref: p for p in self.portal.call(self.broker_view.positions)}
        for target, held in self.positions.items():
            if held.doubtful:
                continue
            position = self.reader.get(Position, target)
            assert position is not None
            assert position.broker_ref in at_broker, f"{target} is not open at the broker"
            there = at_broker[position.broker_ref]
            assert (there.account, there.symbol, there.side) == (
                held.account,
                held.symbol,
                held.side,
            )
            assert there.quantity == held.quantity
        # The broker's cash agrees with the ledger's: what fills realised and
        # cost in fees, and what open positions hold.
        balances = {b.account: b for b in self.portal.call(self.broker_view.account)}
        for name in sorted(self.opened_accounts):
            account = self.account(name)
            assert account is not None
            balance = balances[name]
            trading = account.total - usd(self.deposited[name] - self.withdrawn[name])
            assert balance.balance - usd(BROKER_FUNDS[name]) == trading
            assert balance.used == account.committed


EngineMachine.TestCase.settings = settings(max_examples=15, stateful_step_count=15, deadline=None)
TestEngineMachine = EngineMachine.TestCase
