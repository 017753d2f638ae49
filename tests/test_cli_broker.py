"""`ledger broker ...`: what the broker itself says, as an operator reads it."""

from __future__ import annotations

import json
from decimal import Decimal

import anyio
import pytest

from adapters.paper.broker import PaperBroker
from ledger.instruments import Side
from ledger.ports import Accepted, OrderAction, OrderRequest, ProtectionRequest
from tests.test_cli import ledger


@pytest.fixture
def broker_url(tmp_path):
    return f"paper:///{tmp_path / 'broker.db'}?seed=12"


def open_a_position(url: str) -> Accepted:
    async def submit() -> Accepted:
        with PaperBroker.open(url) as broker:
            result = await broker.submit(
                OrderRequest(
                    client_id="cli1",
                    account="desk",
                    action=OrderAction.OPEN,
                    symbol="ETHUSD",
                    side=Side.SHORT,
                    quantity=Decimal("1.5"),
                    stop_loss=Decimal("3500.00"),
                )
            )
        assert isinstance(result, Accepted), result
        return result

    return anyio.run(submit)


def test_fund_then_balance_shows_money_as_strings(tmp_path, broker_url):
    funded = ledger(
        "broker",
        "fund",
        "desk",
        "2500.50",
        "--currency",
        "USD",
        "--broker",
        broker_url,
        cwd=tmp_path,
    )
    assert funded.returncode == 0, funded.stderr
    assert funded.stdout.strip() == "funded desk with 2500.50 USD"
    result = ledger("broker", "balance", "--json", "--broker", broker_url, cwd=tmp_path)
    assert json.loads(result.stdout) == [
        {
            "account": "desk",
            "currency": "USD",
            "balance": {"amount": "2500.50", "currency": "USD"},
            "used": {"amount": "0.00", "currency": "USD"},
            "available": {"amount": "2500.50", "currency": "USD"},
        }
    ]


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("1.001", "amount: '1.001' has more than 2 decimal places"),
        ("NaN", "amount: 'NaN' is not a finite number"),
        ("-0", "amount: negative zero is not a value"),
        ("-5", "amount: -5.00 USD must be more than zero"),
        ("1e999999", "amount: '1e999999' has an exponent out of range"),
    ],
)
def test_a_bad_amount_is_one_line_and_writes_nothing(tmp_path, broker_url, amount, message):
    # "--" lets a negative amount through as an argument rather than an option.
    result = ledger(
        "broker",
        "fund",
        "--currency",
        "USD",
        "--broker",
        broker_url,
        "--",
        "desk",
        amount,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"ledger: {message}"]
    assert not (tmp_path / "broker.db").exists()
    listing = ledger("broker", "balance", "--json", "--broker", broker_url, cwd=tmp_path)
    assert json.loads(listing.stdout) == []


def test_positions_and_orders_as_json(tmp_path, broker_url):
    ledger(
        "broker",
        "fund",
        "desk",
        "100000",
        "--currency",
        "USD",
        "--broker",
        broker_url,
        cwd=tmp_path,
    )
    accepted = open_a_position(broker_url)
    positions = json.loads(
        ledger("broker", "positions", "--json", "--broker", broker_url, cwd=tmp_path).stdout
    )
    assert len(positions) == 1
    (position,) = positions
    assert position["broker_ref"] == accepted.fills[0].position_ref
    assert position["account"] == "desk"
    assert position["symbol"] == "ETHUSD"
    assert position["side"] == "short"
    assert position["quantity"] == "1.500"
    assert position["entry_price"] == str(accepted.fills[0].price)
    assert position["stop_loss"] == "3500.00"
    assert position["take_profit"] is None
    assert position["client_id"] == "cli1"

    orders = json.loads(
        ledger("broker", "orders", "--all", "--json", "--broker", broker_url, cwd=tmp_path).stdout
    )
    assert [(o["client_id"], o["broker_ref"], o["status"]) for o in orders] == [
        ("cli1", accepted.broker_ref, "filled")
    ]
    working = json.loads(
        ledger("broker", "orders", "--json", "--broker", broker_url, cwd=tmp_path).stdout
    )
    assert working == []
    fills = json.loads(
        ledger("broker", "fills", "--json", "--broker", broker_url, cwd=tmp_path).stdout
    )
    assert [fill["fill_id"] for fill in fills] == [accepted.fills[0].fill_id]
    assert isinstance(fills[0]["fee"]["amount"], str)


def test_tables_for_people(tmp_path, broker_url):
    ledger(
        "broker",
        "fund",
        "desk",
        "100000",
        "--currency",
        "USD",
        "--broker",
        broker_url,
        cwd=tmp_path,
    )
    open_a_position(broker_url)
    table = ledger("broker", "positions", "--broker", broker_url, cwd=tmp_path).stdout.splitlines()
    assert table[0].split() == [
        "broker_ref", "account", "symbol", "side", "quantity", "entry_price",
        "stop_loss", "take_profit", "client_id",
    ]  # fmt: skip
    assert table[1].split()[1:4] == ["desk", "ETHUSD", "short"]


def test_the_broker_comes_from_the_environment(tmp_path, broker_url):
    result = ledger(
        "broker",
        "fund",
        "env",
        "7",
        "--currency",
        "EUR",
        cwd=tmp_path,
        env={"LEDGER_BROKER": broker_url},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "broker.db").exists()
    assert not (tmp_path / "paper-broker.db").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("kraken://x", "unknown broker kind 'kraken'"),
        ("paper:///x.db?faults=partial_fill:2", "probability 2.000000 is outside 0..1"),
        ("paper:///x.db?scope=sometimes", "unknown client-id scope 'sometimes'"),
        ("paper:///no/such/dir/x.db", "does not exist"),
    ],
)
def test_a_bad_broker_url_is_one_line_and_exit_code_3(tmp_path, url, message):
    result = ledger("broker", "positions", "--broker", url, cwd=tmp_path)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert message in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_advance_moves_the_broker_clock_and_can_trigger_stops(tmp_path, broker_url):
    ledger(
        "broker",
        "fund",
        "desk",
        "100000",
        "--currency",
        "USD",
        "--broker",
        broker_url,
        cwd=tmp_path,
    )
    accepted = open_a_position(broker_url)
    stop = Decimal("3500.00")
    assert accepted.fills[0].price < stop

    async def set_a_near_stop() -> None:
        with PaperBroker.open(broker_url) as broker:
            quote = await broker.quote("ETHUSD")
            result = await broker.amend_protection(
                ProtectionRequest(
                    client_id="cli2",
                    account="desk",
                    position_ref=accepted.fills[0].position_ref,
                    # Beyond one price step's largest move, so the amendment,
                    # which comes after a step, still finds it protective.
                    stop_loss=quote.ask + Decimal("2.00"),
                )
            )
            assert isinstance(result, Accepted), result

    anyio.run(set_a_near_stop)
    result = ledger("broker", "advance", "3000", "--broker", broker_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("advanced 3000 steps; broker time is 2026-01-05T09:50:0")
    fills = json.loads(
        ledger("broker", "fills", "--json", "--broker", broker_url, cwd=tmp_path).stdout
    )
    assert [fill["reason"] for fill in fills] == ["order", "stop_loss"]
    positions = json.loads(
        ledger("broker", "positions", "--json", "--broker", broker_url, cwd=tmp_path).stdout
    )
    assert positions == []
    closed = json.loads(
        ledger(
            "broker", "positions", "--all", "--json", "--broker", broker_url, cwd=tmp_path
        ).stdout
    )
    assert closed[0]["quantity"] == "0.000"
    assert closed[0]["closed_at"] is not None


def test_advance_refuses_a_silly_number_of_steps(tmp_path, broker_url):
    result = ledger("broker", "advance", "0", "--broker", broker_url, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_looking_at_the_broker_fires_no_while_down_faults(tmp_path):
    clean = f"paper:///{tmp_path / 'broker.db'}?seed=12"
    ledger("broker", "fund", "desk", "100000", "--currency", "USD", "--broker", clean, cwd=tmp_path)
    open_a_position(clean)
    faulty = f"{clean}&faults=manual_close:1,external_order:1"
    for _ in range(3):
        listing = ledger("broker", "positions", "--json", "--broker", faulty, cwd=tmp_path)
        assert [p["client_id"] for p in json.loads(listing.stdout)] == ["cli1"]


@pytest.mark.parametrize("name", ["", "a" * 65, "a\nb", "\x1b[31mred"])
def test_a_bad_broker_account_name_is_refused(tmp_path, broker_url, name):
    result = ledger(
        "broker", "fund", "--currency", "USD", "--broker", broker_url, "--", name, "5", cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.startswith("ledger: account: ")
    assert len(result.stderr.strip().splitlines()) == 1
