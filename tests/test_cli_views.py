"""`ledger positions`, `balances`, `wal pending` and `rebuild`, run as a user runs them."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from adapters.store import Store
from ledger.position import Position
from projections import catch_up
from projections.database import Database
from tests.projections.scenario import Scenario
from tests.terminal import on_terminal
from tests.test_cli import ledger


@pytest.fixture
def history(store_url):
    with Store.open(store_url) as store:
        ids = Scenario(store).write_everything()
    return store_url, ids


def succeed(*arguments: str, cwd) -> str:
    result = ledger(*arguments, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_positions_json_shows_what_is_open_with_its_protection_and_provenance(history, tmp_path):
    url, ids = history
    rows = json.loads(succeed("positions", "--json", "--store", url, cwd=tmp_path))
    by_id = {row["position_id"]: row for row in rows}
    assert set(by_id) == {str(ids["kept"]), str(ids["adopted"])}
    kept = by_id[str(ids["kept"])]
    assert {
        key: kept[key]
        for key in ("account", "symbol", "side", "quantity", "entry_price", "stop_loss")
    } == {
        "account": "main",
        "symbol": "BTCUSD",
        "side": "long",
        "quantity": "0.6",
        "entry_price": kept["entry_price"],
        "stop_loss": "50000",
    }
    with Store.open(url) as store:
        position = store.get(Position, ids["kept"])
    assert position is not None
    assert Decimal(kept["entry_price"]) == position.entry_price
    assert (kept["take_profit"], kept["status"], kept["provenance"]) == (
        "70000",
        "open",
        "intent",
    )
    assert kept["broker_ref"].startswith("P-")
    adopted = by_id[str(ids["adopted"])]
    assert (adopted["provenance"], adopted["flags"]) == ("adopted", ["external"])
    everything = json.loads(
        succeed("positions", "--all", "--account", "main", "--json", "--store", url, cwd=tmp_path)
    )
    assert len(everything) == 3


def test_positions_as_a_table_of_an_account(sqlite_url, tmp_path):
    with Store.open(sqlite_url) as store:
        Scenario(store).write_everything()
    lines = succeed("positions", "--store", sqlite_url, cwd=tmp_path).splitlines()
    assert lines[0].split() == [
        "position_id",
        "account",
        "symbol",
        "side",
        "quantity",
        "entry_price",
        "stop_loss",
        "take_profit",
        "status",
        "provenance",
        "flags",
    ]
    assert len(lines) == 3
    assert "external" in lines[2]
    assert succeed("positions", "--account", "desk", "--store", sqlite_url, cwd=tmp_path) == (
        "(none)\n"
    )


def test_balances_json_is_the_account(history, tmp_path):
    url, _ = history
    (row,) = json.loads(succeed("balances", "--json", "--store", url, cwd=tmp_path))
    assert {key: row[key] for key in ("account", "currency", "total", "reserved", "available")} == {
        "account": "main",
        "currency": "USD",
        "total": "99643.10",
        "reserved": "1000.00",
        "available": "50393.10",
    }
    assert Decimal(row["total"]) - Decimal(row["reserved"]) - Decimal(row["committed"]) == Decimal(
        row["available"]
    )
    assert (
        json.loads(succeed("balances", "--account", "x", "--json", "--store", url, cwd=tmp_path))
        == []
    )


def test_wal_pending_lists_the_intents_in_flight(history, tmp_path):
    url, ids = history
    rows = json.loads(succeed("wal", "pending", "--json", "--store", url, cwd=tmp_path))
    assert {row["intent_id"] for row in rows} == {str(ids["in_flight"]), str(ids["reviewed"])}
    for row in rows:
        assert row["kind"] == "POSITION_OPEN"
        assert row["account"] == "main"
        assert row["age_seconds"] >= 0
    assert sorted(row["status"] for row in rows) == ["in_progress", "needs_review"]


def test_rebuild_and_check(history, tmp_path):
    url, _ = history
    with Store.open(url) as store:
        catch_up(store)
        database = Database(store)
        with database.transaction(commit=True) as cursor:
            cursor.execute(f"UPDATE {database.table('view_positions')} SET symbol = 'XYZ'")  # noqa: S608
    checked = ledger("rebuild", "--check", "--store", url, cwd=tmp_path)
    assert checked.returncode == 4
    (line,) = checked.stderr.splitlines()
    assert line.startswith("ledger: view positions differs from its rebuild: table view_positions")
    assert "column symbol: 'XYZ' in the view, 'BTCUSD' rebuilt" in line
    rebuilt = ledger("rebuild", "--projection", "positions", "--store", url, cwd=tmp_path)
    assert rebuilt.returncode == 0
    assert rebuilt.stdout.startswith("positions: rebuilt up to event ")
    assert rebuilt.stderr == ""  # no terminal, no progress bar
    assert succeed("rebuild", "--check", "--store", url, cwd=tmp_path) == (
        "all: equal to a rebuild from the start of the log\n"
    )


def test_rebuild_shows_progress_in_events_per_second_on_a_terminal(sqlite_url, tmp_path):
    with Store.open(sqlite_url) as store:
        Scenario(store).write_everything()
    returncode, shown, output = on_terminal(["rebuild", "--store", sqlite_url], tmp_path)
    assert returncode == 0
    assert b"events/s" in shown
    assert b"rebuilding" in shown
    assert output.startswith("all: rebuilt up to event")


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["rebuild", "--projection", "nope"], 2, "Invalid value for '--projection'"),
        (["positions", "--store", "mysql://x/y"], 3, "unknown store kind 'mysql'"),
        (["wal", "pending", "--store", "mysql://x/y"], 3, "unknown store kind 'mysql'"),
    ],
)
def test_errors_are_one_line_and_an_exit_code(arguments, code, message, tmp_path):
    result = ledger(*arguments, cwd=tmp_path)
    assert result.returncode == code
    (line,) = result.stderr.splitlines()
    assert message in line
