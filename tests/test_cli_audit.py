"""`ledger audit verify` and `ledger audit head`, run as a user runs them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from adapters.store import Store
from projections import catch_up
from projections.database import Database
from projections.seals import SEALS, seal
from tests.projections.scenario import Scenario
from tests.terminal import on_terminal
from tests.test_cli import ledger


@pytest.fixture
def history(sqlite_url: str) -> str:
    """A store with the views' scenario, its views caught up, sealed at its end."""
    with Store.open(sqlite_url) as store:
        Scenario(store).write_everything()
        catch_up(store)
        seal(store, final=True)
    return sqlite_url


def test_verify_passes_a_clean_store(history, tmp_path):
    result = ledger("audit", "verify", "--store", history, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("ok: the chain matches every seal and the invariants hold\n")
    assert result.stderr == ""


def test_verify_json(history, tmp_path):
    result = ledger("audit", "verify", "--json", "--store", history, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["ok"] is True
    assert verdict["problems"] == []
    assert verdict["events"] == verdict["sequence"] > 0
    assert (verdict["seals_checked"], verdict["unsealed_events"]) == (1, 0)
    assert len(verdict["head"]) == 64


@pytest.mark.tampered
def test_a_changed_event_exits_5_naming_where(history, tmp_path):
    path = history.removeprefix("sqlite:///")
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE stored_events SET topic = 'account.opened/v9' WHERE rowid = 3")
    result = ledger("audit", "verify", "--json", "--store", history, cwd=tmp_path)
    assert result.returncode == 5
    assert json.loads(result.stdout)["problems"][0]["sequence"] == 3
    (line,) = result.stderr.splitlines()
    assert (
        line
        == "ledger: chain at event 3: event 3 is not the event chained there: changed, or moved"
    )
    kinds = [problem["kind"] for problem in json.loads(result.stdout)["problems"]]
    assert kinds[:2] == ["chain", "decode"]


@pytest.mark.tampered
def test_a_store_without_seals_verifies_with_a_warning_that_only_an_anchor_can_prove_it(
    history, tmp_path
):
    path = history.removeprefix("sqlite:///")
    with sqlite3.connect(path) as raw:
        raw.execute(f"DROP TABLE {SEALS.name}")
    result = ledger("audit", "verify", "--store", history, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "0 seals checked" in result.stdout
    assert result.stdout.endswith(
        "ok, but no seal covers any event: only an anchor kept outside the database "
        "(`ledger audit head`) can show the log was not rewritten\n"
    )


def test_head_anchors_a_later_verify(history, tmp_path):
    shown = ledger("audit", "head", "--store", history, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    anchor = shown.stdout.strip()
    sequence, _, head = anchor.partition(":")
    as_json = json.loads(ledger("audit", "head", "--json", "--store", history, cwd=tmp_path).stdout)
    assert as_json == {"sequence": int(sequence), "events": int(sequence), "head": head}
    assert (
        ledger("audit", "verify", "--anchor", anchor, "--store", history, cwd=tmp_path).returncode
        == 0
    )
    other = f"{sequence}:{'0' * 64}"
    wrong = ledger("audit", "verify", "--anchor", other, "--store", history, cwd=tmp_path)
    assert wrong.returncode == 5
    assert f"ledger: anchor at event {sequence}: the chain's head" in wrong.stderr


def test_head_writes_nothing(sqlite_url, tmp_path):
    with Store.open(sqlite_url) as store:
        Scenario(store)
    assert ledger("audit", "head", "--store", sqlite_url, cwd=tmp_path).stdout.startswith("2:")
    with Store.open(sqlite_url) as store:
        database = Database(store)
        with database.transaction(commit=False) as cursor:
            assert database.tables_named_like(cursor, SEALS.name) == []


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["audit", "verify", "--anchor", "12"], 2, "is not SEQUENCE:HEAD"),
        (["audit", "verify", "--anchor", "x:00"], 2, "is not SEQUENCE:HEAD"),
        (["audit", "head", "--store", "mysql://x/y"], 3, "unknown store kind 'mysql'"),
        (["audit", "verify", "--store", "mysql://x/y"], 3, "unknown store kind 'mysql'"),
    ],
)
def test_errors_are_one_line_and_an_exit_code(arguments, code, message, tmp_path):
    result = ledger(*arguments, cwd=tmp_path)
    assert result.returncode == code
    (line,) = result.stderr.splitlines()
    assert message in line


def test_verify_shows_progress_on_a_terminal(history, tmp_path: Path):
    returncode, shown, output = on_terminal(["audit", "verify", "--store", history], tmp_path)
    assert returncode == 0
    assert b"verifying" in shown
    assert b"events/s" in shown
    assert output.endswith("the invariants hold\n")


def test_a_demo_session_ends_sealed_and_verifies_clean(tmp_path):
    environment = {"LEDGER_BROKER": f"paper:///{tmp_path / 'broker.db'}"}
    demo = ledger("run", "--demo", "--duration", "1", cwd=tmp_path, env=environment)
    assert demo.returncode == 0, demo.stderr
    result = ledger("audit", "verify", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["events"] > 0
    assert verdict["unsealed_events"] == 0
