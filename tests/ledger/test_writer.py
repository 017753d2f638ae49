"""The single writer: one batch, one commit, and one bad command never fails the others."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from adapters.store import Store
from ledger.account import Account, account_id
from ledger.errors import InsufficientFunds, InvalidValue, InvariantViolated
from ledger.money import Money
from ledger.writer import UnitOfWork, Writer

pytestmark = pytest.mark.anyio
NOW = datetime(2026, 3, 4, tzinfo=UTC)


@pytest.fixture
def anyio_backend():
    return "asyncio"


def usd(text: str) -> Money:
    return Money.parse(text, "USD")


def deposit(name: str, amount: str) -> Callable[[UnitOfWork], Money]:
    def command(unit: UnitOfWork) -> Money:
        account = unit.get(Account, account_id(name))
        if account is None:
            account = Account.open(name, "USD", recorded_at=NOW)
            unit.add(account)
        account.deposit(usd(amount), recorded_at=NOW)
        return account.total

    return command


def half_done(name: str) -> Callable[[UnitOfWork], None]:
    """Changes the account, then fails the way a bug would: not a refusal."""

    def command(unit: UnitOfWork) -> None:
        account = unit.get(Account, account_id(name))
        assert account is not None
        account.deposit(usd("1000"), recorded_at=NOW)
        raise RuntimeError("a bug after the first event")

    return command


def refused_after_changing(name: str) -> Callable[[UnitOfWork], None]:
    def command(unit: UnitOfWork) -> None:
        account = unit.get(Account, account_id(name))
        assert account is not None
        account.deposit(usd("1000"), recorded_at=NOW)
        account.withdraw(usd("1000000"), recorded_at=NOW)  # refused, but too late

    return command


async def one_batch(writer: Writer, commands: list[Callable[[UnitOfWork], Any]]) -> list[object]:
    """Run `commands` through `writer` in one batch: all are queued before it starts."""
    outcomes: list[object] = [None] * len(commands)

    async def call(index: int) -> None:
        try:
            outcomes[index] = await writer.execute(commands[index])
        except Exception as error:  # noqa: BLE001 - the outcome is what is checked
            outcomes[index] = error

    async with anyio.create_task_group() as tasks:
        for index in range(len(commands)):
            tasks.start_soon(call, index)
        await anyio.wait_all_tasks_blocked()
        await tasks.start(writer.run)
        await anyio.wait_all_tasks_blocked()
        writer.close()
    return outcomes


def total(store: Store, name: str) -> Money:
    account = store.get(Account, account_id(name))
    assert account is not None
    return account.total


async def test_concurrent_commands_commit_together(store):
    writer = Writer(store)
    outcomes = await one_batch(writer, [deposit(f"a{n}", "5") for n in range(20)])
    assert outcomes == [usd("5")] * 20
    assert (writer.statistics.commands, writer.statistics.transactions) == (20, 1)


async def test_a_command_failing_half_way_fails_alone_and_leaves_no_trace(store):
    await one_batch(Writer(store), [deposit("main", "10")])
    outcomes = await one_batch(
        Writer(store),
        [deposit("main", "1"), half_done("main"), deposit("main", "2"), deposit("other", "3")],
    )
    assert outcomes[0] == usd("11")
    assert isinstance(outcomes[1], RuntimeError)
    assert outcomes[2:] == [usd("13"), usd("3")]
    assert total(store, "main") == usd("13")


async def test_a_refusal_that_changed_state_is_an_invariant_broken_for_its_caller_only(store):
    await one_batch(Writer(store), [deposit("main", "10")])
    outcomes = await one_batch(
        Writer(store), [refused_after_changing("main"), deposit("main", "1")]
    )
    assert isinstance(outcomes[0], InvariantViolated)
    assert isinstance(outcomes[0].__cause__, InsufficientFunds)
    assert outcomes[1] == usd("11")
    assert total(store, "main") == usd("11")


async def test_a_deposit_past_what_the_ledger_holds_is_refused_and_the_batch_goes_on(store):
    await one_batch(Writer(store), [deposit("main", "999999999999990")])
    outcomes = await one_batch(Writer(store), [deposit("main", "100"), deposit("other", "1")])
    assert isinstance(outcomes[0], InvalidValue)
    assert "more than the ledger can hold" in str(outcomes[0])
    assert outcomes[1] == usd("1")
    assert total(store, "main") == usd("999999999999990")


async def test_a_failed_save_reaches_every_caller_as_an_error_of_its_own(store):
    await one_batch(Writer(store), [deposit("main", "10")])

    def broken_save(*_: object) -> None:
        raise OSError("disk gone")

    store.save = broken_save
    outcomes = await one_batch(Writer(store), [deposit("main", "1"), deposit("main", "2")])
    first, second = outcomes
    assert isinstance(first, OSError)
    assert isinstance(second, OSError)
    assert first is not second
    assert first.__cause__ is second.__cause__
    assert str(first) == str(second) == "disk gone"


async def test_a_command_sees_what_an_earlier_one_in_its_batch_created(store):
    # Two deposits to a new account in one batch: the second finds the account the first
    # opened, rather than opening it again.
    outcomes = await one_batch(Writer(store), [deposit("new", "1"), deposit("new", "2")])
    assert outcomes == [usd("1"), usd("3")]
    assert total(store, "new") == usd("3")


async def test_a_batch_records_one_time_and_the_times_never_go_back(store):
    readings = iter([datetime(2026, 3, 4, 10, tzinfo=UTC), datetime(2026, 3, 4, 9, tzinfo=UTC)])
    writer = Writer(store, clock=lambda: next(readings))

    def stamped(name: str) -> Callable[[UnitOfWork], datetime]:
        def command(unit: UnitOfWork) -> datetime:
            account = unit.get(Account, account_id(name)) or Account.open(
                name, "USD", recorded_at=writer.now()
            )
            unit.add(account)
            account.deposit(usd("1"), recorded_at=writer.now())
            return writer.now()

        return command

    first = await one_batch(writer, [stamped("a"), stamped("b")])
    assert first == [datetime(2026, 3, 4, 10, tzinfo=UTC)] * 2
    writer = Writer(store, clock=lambda: datetime(2026, 3, 4, 9, tzinfo=UTC))
    writer._last_time = datetime(2026, 3, 4, 10, tzinfo=UTC)  # as after the first batch
    second = await one_batch(writer, [stamped("c")])
    assert second == [datetime(2026, 3, 4, 10, tzinfo=UTC)]  # the clock stepped back; not the log
