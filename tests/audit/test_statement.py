"""Statements: running balances that add up to the account, the intent and broker reference
behind each change, a window that opens with the balance before it, CSV that parses."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest

from adapters.store import Store
from audit.records import Kind
from audit.replay import Replay
from audit.statement import OPENING, Line, statement
from commands.history import write_csv
from ledger.account import Account, account_id
from ledger.errors import InvalidValue, NotFound
from ledger.intent import Intent, IntentKind
from ledger.position import Position
from tests.audit.histories import (  # noqa: F401 - the fixtures
    fixed_history_fixture,
    trading_history_fixture,
)

KIND_BEHIND = {
    "account.deposited": {IntentKind.BALANCE_ADD},
    "account.withdrawn": {IntentKind.BALANCE_DEDUCT},
    "account.funds_reserved": {IntentKind.POSITION_OPEN},
    "account.funds_settled": {IntentKind.POSITION_OPEN},
    "account.reservation_released": {IntentKind.POSITION_OPEN},
    "account.fee_charged": {IntentKind.POSITION_OPEN, IntentKind.POSITION_CLOSE},
    "account.pnl_realised": {IntentKind.POSITION_CLOSE},
}


def lines_of(store: Store, name: str, **window) -> list[Line]:
    _, lines = statement(store, name, **window)
    return list(lines)


@pytest.mark.parametrize("name", ["main", "desk"])
def test_running_balances_add_up_to_the_account(fixed_history, name):
    with Store.open(fixed_history.store_url) as store:
        lines = lines_of(store, name)
        account = store.get(Account, account_id(name))
        replayed = list(Replay(store, account=name).records())
    changes = [r.sequence for r in replayed if r.aggregate is Kind.ACCOUNT]
    assert [line.sequence for line in lines] == changes[1:]  # all but account.opened
    total = available = Decimal(0)
    for line in lines:
        total += line.total_change
        available += line.available_change
        assert (line.total, line.available) == (total, available), line
        assert line.total - line.reserved - line.committed == line.available, line
    last = lines[-1]
    assert (last.total, last.reserved, last.committed, last.available) == (
        account.total.amount,
        account.reserved.amount,
        account.committed.amount,
        account.available.amount,
    )
    assert {line.type for line in lines} >= {"account.deposited", "account.fee_charged"}


def test_each_change_names_the_intent_and_the_broker_reference_behind_it(trading_history):
    with Store.open(trading_history.store_url) as store:
        heading, lines = statement(store, "main")
        assert (heading.account, heading.currency) == ("main", "USD")
        seen = set()
        for line in lines:
            intent = store.get(Intent, line.intent_id)
            assert intent is not None, line
            assert intent.account_id == heading.account_id
            assert intent.kind in KIND_BEHIND[line.type], line
            seen.add(line.type)
            if intent.kind in {IntentKind.BALANCE_ADD, IntentKind.BALANCE_DEDUCT}:
                assert line.broker_ref is None
            else:
                # The order the broker filled, as the intent's evidence records it.
                assert line.broker_ref is not None
                assert line.broker_ref == intent.broker_ref == intent.evidence[-1].broker_ref
            if line.position_id is not None:
                assert store.get(Position, line.position_id).account_id == heading.account_id
    assert seen == set(KIND_BEHIND) - {"account.reservation_released"}


def test_a_change_with_no_intent_names_the_position_and_its_reference(fixed_history):
    with Store.open(fixed_history.store_url) as store:
        lines = lines_of(store, "desk")
        adopted = [line for line in lines if line.type == "account.funds_committed"]
        assert adopted
        for line in adopted:
            assert line.intent_id is None
            assert line.broker_ref == store.get(Position, line.position_id).broker_ref
            assert line.broker_ref.startswith("EXT-")


def test_a_window_opens_with_the_balance_before_it(fixed_history):
    with Store.open(fixed_history.store_url) as store:
        full = lines_of(store, "main")
        middle = len(full) // 2
        start = full[middle].recorded_at
        before = [line for line in full if line.recorded_at < start]
        windowed = lines_of(store, "main", start=start)
        opening = windowed[0]
        assert (opening.type, opening.sequence, opening.recorded_at) == (
            OPENING,
            before[-1].sequence,
            start,
        )
        assert (opening.total, opening.available, opening.total_change) == (
            before[-1].total,
            before[-1].available,
            Decimal("0.00"),
        )
        assert windowed[1:] == full[len(before) :]
        until = full[-2].recorded_at
        assert lines_of(store, "main", start=start, until=until) == [
            opening,
            *(line for line in full[len(before) :] if line.recorded_at <= until),
        ]
        (late,) = lines_of(store, "main", start=full[-1].recorded_at.replace(year=2100))
        assert (late.type, late.sequence, late.total) == (
            OPENING,
            full[-1].sequence,
            full[-1].total,
        )


def test_csv_has_a_header_and_plain_decimals(fixed_history, capsys):
    with Store.open(fixed_history.store_url) as store:
        full = lines_of(store, "desk")
        _, lines = statement(store, "desk", start=full[1].recorded_at)
        write_csv(lines)
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == list(Line.__struct_fields__)
    assert rows[0]["type"] == OPENING
    assert len(rows) == len(full)
    for row, line in zip(rows[1:], full[1:], strict=True):
        assert Decimal(row["total"]) == line.total
        assert row["total"] == format(line.total, "f")
        assert "E" not in row["total_change"] + row["available_change"]
        assert row["intent_id"] == ("" if line.intent_id is None else str(line.intent_id))


def test_an_unknown_account_or_a_name_no_account_can_have_is_refused(fixed_history):
    with Store.open(fixed_history.store_url) as store:
        with pytest.raises(NotFound, match="no account 'nobody'"):
            statement(store, "nobody")
        with pytest.raises(InvalidValue, match="account"):
            statement(store, "no body")
