"""`ledger deposit|withdraw|open|close|set-sl|set-tp`: one-shot operations, run for real.

Each operation is a real `ledger` process on a real SQLite store and paper
broker. Success is exit 0 and JSON (money and decimals as strings); a refusal
or a broker rejection is exit 1 and one line on stderr; an unknown outcome,
or a store another engine holds, is exit 3.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import anyio
import pytest

from adapters.bootstrap import open_engine
from adapters.paper.broker import PaperBroker
from adapters.store import Store
from ledger.account import Account, account_id
from ledger.instruments import Side
from ledger.intent import Intent, IntentStatus
from ledger.money import Money
from ledger.position import Position, position_id
from tests.test_cli import ledger

UUID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


class Desk:
    """A store and a funded paper broker in one folder, and the `ledger` command on them."""

    def __init__(self, folder: Path, *, broker_funds: str = "1000000", faults: str = "") -> None:
        self.folder = folder
        self.store_url = f"sqlite:///{folder / 'ledger.db'}"
        self.clean_broker_url = f"paper:///{folder / 'broker.db'}?seed=5"
        self.broker_url = self.clean_broker_url + (f"&faults={faults}" if faults else "")
        with PaperBroker.open(self.clean_broker_url) as broker:
            anyio.run(broker.fund, "main", Money.parse(broker_funds, "USD"))

    def run(self, *arguments: str, broker_url: str | None = None):
        return ledger(
            *arguments,
            "--store",
            self.store_url,
            "--broker",
            broker_url or self.broker_url,
            cwd=self.folder,
        )

    def succeed(self, *arguments: str) -> dict[str, object]:
        result = self.run(*arguments, "--json")
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        answer = json.loads(result.stdout)
        assert isinstance(answer, dict)
        return answer

    def event_count(self) -> int:
        result = ledger("info", "--json", "--store", self.store_url, cwd=self.folder)
        assert result.returncode == 0, result.stderr
        count = json.loads(result.stdout)["event_count"]
        assert isinstance(count, int)
        return count

    def pending(self) -> list[dict[str, object]]:
        result = ledger("wal", "pending", "--json", "--store", self.store_url, cwd=self.folder)
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        assert isinstance(rows, list)
        return rows

    def prepare(self, deposit: str = "100000") -> tuple[UUID, UUID]:
        """In-process: deposit, open a position and keep it, open another and close it."""

        async def steps() -> tuple[UUID, UUID]:
            async with open_engine(store=self.store_url, broker=self.clean_broker_url) as engine:
                await engine.deposit("main", deposit, "USD")
                kept = await engine.open_position("main", "BTCUSD", "long", "0.1")
                gone = await engine.open_position("main", "ETHUSD", "short", "1")
                assert gone.position_id is not None
                await engine.close_position(gone.position_id)
            # Startup recovery reports what changed since it last ran (here the
            # balance the broker holds beyond the deposit) once, when it first sees it.
            async with open_engine(store=self.store_url, broker=self.clean_broker_url):
                pass
            assert kept.position_id is not None
            return kept.position_id, gone.position_id

        return anyio.run(steps)

    def broker_orders(self) -> int:
        with PaperBroker.open(self.clean_broker_url, start_session=False) as broker:
            return len(anyio.run(broker.all_orders))

    def intent(self, intent_id: UUID) -> Intent:
        with Store.open(self.store_url) as store:
            intent = store.get(Intent, intent_id)
        assert intent is not None
        return intent

    def position(self, target: UUID) -> Position:
        with Store.open(self.store_url) as store:
            position = store.get(Position, target)
        assert position is not None
        return position

    def account(self) -> Account:
        with Store.open(self.store_url) as store:
            account = store.get(Account, account_id("main"))
        assert account is not None
        return account


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("ledger: ")
    return lines[0]


def intent_named_in(line: str) -> UUID:
    found = re.search(rf"intent ({UUID_PATTERN})", line)
    assert found is not None, line
    return UUID(found.group(1))


def test_a_day_of_operations_prints_json_with_money_as_strings(tmp_path):
    desk = Desk(tmp_path)

    deposited = desk.succeed("deposit", "main", "100000.50", "--currency", "USD")
    assert deposited["kind"] == "BALANCE_ADD"
    assert deposited["status"] == "completed"
    assert isinstance(deposited["intent_id"], str)
    UUID(deposited["intent_id"])
    assert deposited["position_id"] is None

    withdrawn = desk.succeed("withdraw", "main", "0.50", "--currency", "USD")
    assert (withdrawn["kind"], withdrawn["status"]) == ("BALANCE_DEDUCT", "completed")
    assert withdrawn["intent_id"] != deposited["intent_id"]

    opened = desk.succeed(
        "open", "main", "BTCUSD", "--side", "buy", "--quantity", "0.2",
        "--sl", "60000.0", "--tp", "70000.0",
    )  # fmt: skip
    assert (opened["kind"], opened["status"]) == ("POSITION_OPEN", "completed")
    assert isinstance(opened["intent_id"], str)
    assert opened["position_id"] == str(position_id(UUID(opened["intent_id"])))
    assert opened["quantity"] == "0.2000"
    assert isinstance(opened["price"], str)
    entry = Decimal(opened["price"])
    assert entry % Decimal("0.5") == 0
    assert Decimal(60000) < entry < Decimal(70000)
    target = str(opened["position_id"])

    moved = desk.succeed("set-sl", target, "61000.5")
    assert (moved["kind"], moved["status"], moved["position_id"]) == (
        "POSITION_UPDATE",
        "completed",
        target,
    )
    assert moved["price"] is None
    assert moved["quantity"] is None
    aimed = desk.succeed("set-tp", target, "72000.0")
    assert (aimed["kind"], aimed["position_id"]) == ("POSITION_UPDATE", target)

    half = desk.succeed("close", target, "--quantity", "0.05")
    assert (half["kind"], half["status"], half["position_id"]) == (
        "POSITION_CLOSE",
        "completed",
        target,
    )
    assert half["quantity"] == "0.0500"
    assert isinstance(half["price"], str)
    Decimal(half["price"])
    pnl = half["pnl"]
    assert isinstance(pnl, dict)
    assert pnl["currency"] == "USD"
    assert isinstance(pnl["amount"], str)
    rest = desk.succeed("close", target)
    assert rest["quantity"] == "0.1500"

    position = desk.position(UUID(target))
    assert position.side is Side.LONG
    assert not position.is_open
    assert (position.stop_loss, position.take_profit) == (Decimal("61000.5"), Decimal("72000.0"))
    realised = Money.parse(pnl["amount"], "USD") + Money.parse(rest["pnl"]["amount"], "USD")
    assert position.realised_pnl == realised
    assert desk.account().committed.is_zero
    assert desk.pending() == []


@pytest.mark.parametrize(("flag", "side"), [("buy", Side.LONG), ("sell", Side.SHORT)])
def test_buy_opens_a_long_and_sell_a_short(tmp_path, flag, side):
    desk = Desk(tmp_path)
    desk.succeed("deposit", "main", "100000", "--currency", "USD")
    opened = desk.succeed("open", "main", "ETHUSD", "--side", flag, "--quantity", "1.5")
    assert opened["quantity"] == "1.500"
    position = desk.position(UUID(str(opened["position_id"])))
    assert position.side is side
    with PaperBroker.open(desk.clean_broker_url, start_session=False) as broker:
        (at_broker,) = anyio.run(broker.positions)
    assert (at_broker.side, at_broker.quantity) == (side, Decimal("1.5"))


def test_a_side_that_is_not_buy_or_sell_is_a_usage_error(tmp_path):
    desk = Desk(tmp_path)
    result = desk.run("open", "main", "BTCUSD", "--side", "long", "--quantity", "1")
    assert result.returncode == 2
    assert "'long' is not one of 'buy', 'sell'" in one_line(result.stderr)
    assert desk.event_count() == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["deposit", "main", "NaN", "--currency", "USD"], "amount: 'NaN' is not a finite number"),
        (
            ["deposit", "main", "1.001", "--currency", "USD"],
            "amount: '1.001' has more than 2 decimal places",
        ),
        (
            ["withdraw", "main", "1000000", "--currency", "USD"],
            "cannot withdraw 1000000.00 USD",
        ),
        (
            ["open", "main", "XYZ", "--side", "buy", "--quantity", "1"],
            "symbol: 'XYZ' is not traded at this broker",
        ),
        (
            ["open", "main", "BTCUSD", "--side", "buy", "--quantity", "0.00001"],
            "quantity: '0.00001' has more than 4 decimal places",
        ),
        (["close", "00000000-0000-4000-8000-000000000001"], "no position 0000"),
        (["close", "not-an-id"], "position: 'not-an-id' is not a valid id"),
        (["set-sl", "{kept}", "60000.3"], "stop_loss: 60000.3 is not a multiple of 0.5"),
        (["close", "{gone}"], "is closed"),
        (["set-tp", "{gone}", "3000.00"], "is closed"),
    ],
)
def test_a_refused_operation_is_one_line_exit_1_and_writes_nothing(tmp_path, arguments, message):
    desk = Desk(tmp_path)
    kept, gone = desk.prepare()
    arguments = [argument.format(kept=kept, gone=gone) for argument in arguments]
    events, orders = desk.event_count(), desk.broker_orders()
    result = desk.run(*arguments, "--json")
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert message in one_line(result.stderr)
    assert desk.event_count() == events
    assert desk.broker_orders() == orders


def test_a_broker_rejection_is_exit_1_and_keeps_only_the_failed_intent(tmp_path):
    desk = Desk(tmp_path, broker_funds="100")  # the broker holds less than the ledger
    desk.succeed("deposit", "main", "100000", "--currency", "USD")
    result = desk.run("open", "main", "BTCUSD", "--side", "buy", "--quantity", "1", "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert "the broker rejected it: insufficient funds" in line
    intent = desk.intent(intent_named_in(line))
    assert intent.status is IntentStatus.FAILED
    account = desk.account()
    assert account.reservations == {}
    assert account.available == Money.parse("100000", "USD")
    assert desk.pending() == []
    assert desk.broker_orders() == 0


@pytest.mark.parametrize(
    ("faults", "operation", "kind"),
    [
        (
            "timeout_before_accept:1",
            ["open", "main", "BTCUSD", "--side", "sell", "--quantity", "0.1"],
            "POSITION_OPEN",
        ),
        ("timeout_before_accept:1", ["close", "{kept}"], "POSITION_CLOSE"),
        ("timeout_after_accept:1", ["set-sl", "{kept}", "60000.0"], "POSITION_UPDATE"),
    ],
)
def test_an_unknown_outcome_is_exit_3_and_leaves_the_intent_pending(
    tmp_path, faults, operation, kind
):
    desk = Desk(tmp_path)
    kept, _ = desk.prepare()
    arguments = [argument.format(kept=kept) for argument in operation]
    faulty = f"{desk.clean_broker_url}&faults={faults}"
    result = desk.run(*arguments, "--json", broker_url=faulty)
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert "outcome unknown" in line
    assert "stays in flight until recovery" in line
    intent_id = intent_named_in(line)
    (pending,) = desk.pending()
    assert pending["intent_id"] == str(intent_id)
    assert (pending["kind"], pending["status"], pending["account"]) == (
        kind,
        "in_progress",
        "main",
    )
    assert pending["client_id"] == desk.intent(intent_id).client_id


def test_an_unknown_open_keeps_its_reservation(tmp_path):
    desk = Desk(tmp_path, faults="timeout_before_accept:1")
    desk.succeed("deposit", "main", "100000", "--currency", "USD")
    result = desk.run("open", "main", "ETHUSD", "--side", "buy", "--quantity", "2", "--json")
    assert result.returncode == 3, result.stderr
    intent = desk.intent(intent_named_in(one_line(result.stderr)))
    assert intent.reservation is not None
    assert desk.account().reservations == {intent.id: intent.reservation}
    assert desk.broker_orders() == 0


def test_a_store_held_by_another_engine_is_exit_3_naming_the_holder(tmp_path):
    desk = Desk(tmp_path)
    desk.succeed("deposit", "main", "100", "--currency", "USD")
    events = desk.event_count()
    with Store.open(desk.store_url) as store, store.lease("pid 1 on testhost"):
        result = desk.run("deposit", "main", "5", "--currency", "USD", "--json")
    assert result.returncode == 3
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert "is in use by another engine (pid 1 on testhost)" in line
    assert desk.event_count() == events
    assert desk.account().total == Money.parse("100", "USD")
