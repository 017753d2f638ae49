"""`ledger recover`, `ledger reconcile` and `ledger wal resolve`, run as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

from tests.test_cli import ledger


class Desk:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.options = [
            "--store",
            f"sqlite:///{folder / 'ledger.db'}",
            "--broker",
            f"paper:///{folder / 'broker.db'}?seed=3",
        ]

    def run(self, *arguments: str):
        # The broker's own commands take only --broker.
        options = self.options[2:] if arguments[0] == "broker" else self.options
        return ledger(*arguments, *options, cwd=self.folder)

    def events(self) -> int:
        result = ledger("info", "--json", self.options[0], self.options[1], cwd=self.folder)
        assert result.returncode == 0, result.stderr
        return int(json.loads(result.stdout)["event_count"])

    def fund_both(self, broker_amount: str, ledger_amount: str) -> None:
        funded = self.run("broker", "fund", "main", broker_amount, "--currency", "USD")
        assert funded.returncode == 0, funded.stderr
        deposited = self.run("deposit", "main", ledger_amount, "--currency", "USD")
        assert deposited.returncode == 0, deposited.stderr


def test_a_clean_ledger_recovers_with_exit_0_and_twice_writes_nothing(tmp_path):
    desk = Desk(tmp_path)
    desk.fund_both("10000", "10000")
    opened = desk.run("open", "main", "ETHUSD", "--side", "buy", "--quantity", "0.5", "--json")
    assert opened.returncode == 0, opened.stderr
    first = desk.run("recover", "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads(first.stdout)["needs_review"] is False
    before = desk.events()
    again = desk.run("recover", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["items"] == []
    assert desk.events() == before


def test_an_unexplained_balance_difference_exits_3_and_is_recorded_once(tmp_path):
    desk = Desk(tmp_path)
    desk.fund_both("10000", "9000")
    first = desk.run("recover", "--json")
    assert first.returncode == 3, first.stderr
    report = json.loads(first.stdout)
    (item,) = report["items"]
    assert item["finding"] == "balance_difference"
    assert "1000.00 unexplained" in item["detail"]
    assert report["recorded"] is True
    before = desk.events()
    second = desk.run("recover", "--json")
    assert second.returncode == 3
    assert json.loads(second.stdout)["recorded"] is False
    assert desk.events() == before


def test_a_plan_writes_nothing_and_an_apply_adopts_what_only_the_broker_holds(tmp_path):
    desk = Desk(tmp_path)
    desk.fund_both("10000", "10000")
    # An order placed at the broker by someone else: the broker holds a
    # position the ledger never opened (and charged its fee).
    elsewhere = ledger(
        "run",
        "--duration",
        "0.5",
        "--reconcile-every",
        "0",
        "--store",
        f"sqlite:///{tmp_path / 'other.db'}",
        "--broker",
        f"paper:///{tmp_path / 'broker.db'}?seed=3&faults=external_order:1",
        cwd=tmp_path,
    )
    assert elsewhere.returncode == 0, elsewhere.stderr
    before = desk.events()
    plan = desk.run("reconcile", "--plan", "--json")
    assert plan.returncode == 3, plan.stderr
    findings = {item["finding"] for item in json.loads(plan.stdout)["items"]}
    assert "external" in findings
    assert desk.events() == before
    applied = desk.run("reconcile", "--apply", "--json")
    report = json.loads(applied.stdout)
    adopted = [item for item in report["items"] if item["finding"] == "external"]
    assert adopted
    assert all(item["applied"] for item in adopted)
    positions = desk.run("broker", "positions", "--json")
    assert positions.returncode == 0, positions.stderr
    assert len(json.loads(positions.stdout)) == len(adopted)


def test_reconcile_needs_plan_or_apply(tmp_path):
    result = Desk(tmp_path).run("reconcile")
    assert result.returncode == 1
    assert result.stderr.strip() == "ledger: reconcile: say --plan or --apply"


def test_resolving_an_intent_not_under_review_is_refused(tmp_path):
    desk = Desk(tmp_path)
    desk.fund_both("10000", "10000")
    deposited = desk.run("deposit", "main", "5", "--currency", "USD", "--json")
    intent = json.loads(deposited.stdout)["intent_id"]
    desk.run("recover")  # startup recovery's own report, once, before counting
    before = desk.events()
    result = desk.run("wal", "resolve", intent, "--outcome", "rolled_back", "--reason", "checked")
    assert result.returncode == 1
    assert "not needs_review" in result.stderr
    assert desk.events() == before
    unknown = desk.run(
        "wal", "resolve", str(UUID(int=7)), "--outcome", "rolled_back", "--reason", "checked"
    )
    assert unknown.returncode == 1
    assert "no intent" in unknown.stderr
