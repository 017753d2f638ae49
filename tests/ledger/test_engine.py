"""The engine on a real SQLite store and a real paper broker, with the broker's faults."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from adapters.bootstrap import open_engine
from adapters.paper.broker import PaperBroker
from adapters.store import Store
from ledger.account import Account, account_id
from ledger.errors import (
    IllegalTransition,
    InsufficientFunds,
    InvalidValue,
    LeaseHeld,
    NotFound,
    OperationRejected,
    OutcomeUnknown,
)
from ledger.intent import Intent, IntentStatus
from ledger.money import Money
from ledger.ports import Found
from ledger.ports import NotFound as BrokerNotFound
from ledger.position import Position

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Setup:
    """A ledger store and a paper broker in one folder, the broker funded."""

    def __init__(self, folder: Path, faults: str = "", seed: int = 1) -> None:
        self.store_url = f"sqlite:///{folder / 'ledger.db'}"
        query = f"?seed={seed}" + (f"&faults={faults}" if faults else "")
        self.broker_url = f"paper:///{folder / 'broker.db'}{query}"
        self.clean_broker_url = f"paper:///{folder / 'broker.db'}?seed={seed}"

    async def fund_broker(self, amount: str = "1000000") -> None:
        with PaperBroker.open(self.clean_broker_url) as broker:
            await broker.fund("main", Money.parse(amount, "USD"))

    def engine(self, **options: object):
        return open_engine(store=self.store_url, broker=self.broker_url, **options)

    def account(self) -> Account:
        with Store.open(self.store_url) as store:
            account = store.get(Account, account_id("main"))
        assert account is not None
        return account

    def intent(self, intent_id) -> Intent:
        with Store.open(self.store_url) as store:
            intent = store.get(Intent, intent_id)
        assert intent is not None
        return intent

    def event_count(self) -> int:
        with Store.open(self.store_url) as store:
            return store.info().event_count

    def unfinished(self):
        with Store.open(self.store_url) as store:
            return store.unfinished_intents()


@pytest.fixture
async def setup(tmp_path):
    ready = Setup(tmp_path)
    await ready.fund_broker()
    return ready


async def test_deposit_and_withdraw(setup):
    async with setup.engine() as engine:
        deposited = await engine.deposit("main", "1000.50", "USD")
        await engine.withdraw("main", "0.50", "USD")
        with pytest.raises(InsufficientFunds, match=r"cannot withdraw 2000.00 USD: 1000.00 USD"):
            await engine.withdraw("main", "2000", "USD")
    assert deposited.status == "completed"
    account = setup.account()
    assert account.total == Money.parse("1000.00", "USD")
    assert setup.unfinished() == []


@pytest.mark.parametrize(
    ("amount", "currency", "error", "message"),
    [
        ("NaN", "USD", InvalidValue, "not a finite number"),
        ("-0", "USD", InvalidValue, "negative zero"),
        ("1.001", "USD", InvalidValue, "more than 2 decimal places"),
        ("0", "USD", InvalidValue, "must be more than zero"),
        ("1e99999", "USD", InvalidValue, "exponent out of range"),
        ("5", "EUR", InvalidValue, "holds USD, not EUR"),
    ],
)
async def test_a_refused_operation_writes_nothing(setup, amount, currency, error, message):
    async with setup.engine() as engine:
        await engine.deposit("main", "100", "USD")
        before = setup.event_count()
        with pytest.raises(error, match=message):
            await engine.deposit("main", amount, currency)
        assert setup.event_count() == before


async def test_an_open_reserves_then_settles_and_a_close_realises(setup):
    async with setup.engine() as engine:
        await engine.deposit("main", "100000", "USD")
        opened = await engine.open_position("main", "BTCUSD", "long", "0.5", stop_loss="50000")
        account = setup.account()
        assert account.reserved.is_zero
        assert account.committed.amount == opened.price * Decimal("0.5")
        position_id = opened.position_id
        half = await engine.close_position(position_id, "0.25")
        rest = await engine.close_position(position_id)
    assert half.quantity == Decimal("0.25")
    assert rest.quantity == Decimal("0.25")
    account = setup.account()
    assert account.committed.is_zero
    with Store.open(setup.store_url) as store:
        position = store.get(Position, position_id)
    assert position is not None
    assert not position.is_open
    assert position.realised_pnl == half.pnl + rest.pnl
    assert setup.intent(opened.intent_id).status is IntentStatus.COMPLETED


async def test_stop_loss_and_take_profit_changes_reach_the_broker(setup):
    async with setup.engine() as engine:
        await engine.deposit("main", "100000", "USD")
        opened = await engine.open_position("main", "ETHUSD", "short", "1")
        await engine.change_stop_loss(opened.position_id, "4000.00")
        await engine.change_take_profit(opened.position_id, "2000.00")
        with pytest.raises(InvalidValue, match=r"stop_loss: .* other side of take-profit"):
            await engine.change_stop_loss(opened.position_id, "1000.00")
    with PaperBroker.open(setup.clean_broker_url) as broker:
        (position,) = await broker.positions()
    assert (position.stop_loss, position.take_profit) == (Decimal("4000.00"), Decimal("2000.00"))


async def test_a_rejected_order_fails_its_intent_and_releases_the_reservation(tmp_path):
    setup = Setup(tmp_path)
    await setup.fund_broker("100")  # the broker has less than the ledger thinks
    async with setup.engine() as engine:
        await engine.deposit("main", "100000", "USD")
        with pytest.raises(OperationRejected, match=r"insufficient funds") as rejected:
            await engine.open_position("main", "BTCUSD", "long", "1")
    assert setup.intent(rejected.value.intent_id).status is IntentStatus.FAILED
    assert setup.account().reserved.is_zero
    assert setup.account().available == Money.parse("100000", "USD")


async def test_an_answer_lost_after_acceptance_is_completed_from_the_broker(tmp_path):
    setup = Setup(tmp_path, faults="timeout_after_accept:1")
    await setup.fund_broker()
    async with setup.engine() as engine:
        await engine.deposit("main", "100000", "USD")
        opened = await engine.open_position("main", "BTCUSD", "long", "0.1")
    assert opened.status == "completed"
    assert setup.intent(opened.intent_id).status is IntentStatus.COMPLETED
    assert setup.account().reserved.is_zero


async def test_an_unknown_outcome_keeps_the_intent_and_its_reservation_and_is_not_resent(tmp_path):
    setup = Setup(tmp_path, faults="timeout_before_accept:1")
    await setup.fund_broker()
    async with setup.engine() as engine:
        await engine.deposit("main", "100000", "USD")
        with pytest.raises(OutcomeUnknown, match=r"stays in flight") as unknown:
            await engine.open_position("main", "BTCUSD", "long", "0.1")
    intent = setup.intent(unknown.value.intent_id)
    assert intent.status is IntentStatus.IN_PROGRESS
    assert setup.unfinished() == [intent.id]
    account = setup.account()
    assert account.reservations == {intent.id: intent.reservation}
    with PaperBroker.open(setup.clean_broker_url) as broker:
        assert isinstance(await broker.lookup(intent.client_id), BrokerNotFound)
        assert await broker.all_orders() == []


async def test_an_order_hidden_by_lookup_lag_stays_in_flight(tmp_path):
    setup = Setup(tmp_path, faults="timeout_after_accept:1,lookup_lag:1")
    await setup.fund_broker()
    async with setup.engine() as engine:
        await engine.deposit("main", "100000", "USD")
        with pytest.raises(OutcomeUnknown) as unknown:
            await engine.open_position("main", "BTCUSD", "long", "0.1")
    intent = setup.intent(unknown.value.intent_id)
    assert intent.status is IntentStatus.IN_PROGRESS
    with PaperBroker.open(setup.clean_broker_url) as broker:
        await broker.advance(10)
        found = await broker.lookup(intent.client_id)
        assert isinstance(found, Found)
        assert len(await broker.all_orders()) == 1


async def test_a_duplicate_acknowledgement_opens_one_position_of_the_right_size(tmp_path):
    setup = Setup(tmp_path, faults="duplicate_ack:1")
    await setup.fund_broker()
    async with setup.engine() as engine:
        await engine.deposit("main", "100000", "USD")
        opened = await engine.open_position("main", "BTCUSD", "long", "0.2")
    assert opened.quantity == Decimal("0.2")
    assert list(setup.account().commitments) == [opened.position_id]


async def test_operations_on_missing_or_closed_things_are_refused(setup):
    async with setup.engine() as engine:
        with pytest.raises(NotFound, match=r"no account 'ghost'"):
            await engine.open_position("ghost", "BTCUSD", "long", "0.1")
        with pytest.raises(InvalidValue, match=r"'XYZ' is not traded"):
            await engine.open_position("main", "XYZ", "long", "1")
        await engine.deposit("main", "100000", "USD")
        opened = await engine.open_position("main", "BTCUSD", "long", "0.1")
        await engine.close_position(opened.position_id)
        with pytest.raises(IllegalTransition, match=r"is closed"):
            await engine.close_position(opened.position_id)
        with pytest.raises(InvalidValue, match=r"quantity: '0.00001' has more than 4 decimal"):
            await engine.open_position("main", "BTCUSD", "long", "0.00001")
        with pytest.raises(InvalidValue, match=r"stop_loss: 5000.10 is not a multiple of 0.25"):
            await engine.open_position("main", "US500", "long", "1", stop_loss="5000.1")


async def test_a_second_engine_on_the_same_store_is_refused_naming_the_holder(setup):
    async with setup.engine() as first:
        with pytest.raises(LeaseHeld, match=r"in use by another engine \(pid \d+ on "):
            async with setup.engine():
                pass
        first_epoch = first.epoch
    async with setup.engine() as second:
        assert second.epoch == first_epoch + 1
        result = await second.deposit("main", "1", "USD")
    assert result.client_id is not None
    assert result.client_id[22:26] == f"{second.epoch:04d}"


async def test_concurrent_operations_share_commits(setup):
    async with setup.engine() as engine:
        before = copy.copy(engine.writer.statistics)  # startup recovery used the writer too
        await engine.deposit("main", "1", "USD")
        async with anyio.create_task_group() as tasks:
            for _ in range(200):
                tasks.start_soon(engine.deposit, "main", "1", "USD")
        statistics = engine.writer.statistics
    assert statistics.commands - before.commands == 201
    assert statistics.transactions - before.transactions < 201
    assert statistics.batch_size_max > 1
    assert setup.account().total == Money.parse("201", "USD")
