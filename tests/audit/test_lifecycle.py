"""An intent's lifecycle: its timings and evidence, and the ledger events it produced, read from
the few streams involved."""

from __future__ import annotations

from uuid import uuid4

import pytest

from adapters.store import Store
from audit.lifecycle import lifecycle
from audit.records import Kind
from audit.replay import Replay
from ledger.account import account_id
from ledger.errors import NotFound
from ledger.intent import IntentKind, IntentStatus
from ledger.position import position_id
from tests.audit.histories import trading_history_fixture  # noqa: F401 - the fixture
from tests.projections.scenario import Scenario


def everything(store: Store):
    return list(Replay(store).records())


def test_every_intent_shows_the_events_that_name_it_in_log_order(trading_history):
    with Store.open(trading_history.store_url) as store:
        records = everything(store)
        intents = [r.aggregate_id for r in records if r.type == "intent.recorded"]
        kinds = set()
        for intent_id in intents:
            found = lifecycle(store, intent_id)
            kinds.add((found.kind, found.status))
            assert found.steps == [r for r in records if r.aggregate_id == intent_id]
            assert found.produced == [
                r
                for r in records
                if r.aggregate is not Kind.INTENT and r.payload.get("intent_id") == str(intent_id)
            ]
            names = {account_id(name): name for name in ("main", "desk")}
            assert found.account == names[found.account_id]
    assert kinds == {
        (IntentKind.BALANCE_ADD, IntentStatus.COMPLETED),
        (IntentKind.BALANCE_DEDUCT, IntentStatus.COMPLETED),
        (IntentKind.POSITION_OPEN, IntentStatus.COMPLETED),
        (IntentKind.POSITION_CLOSE, IntentStatus.COMPLETED),
        (IntentKind.POSITION_UPDATE, IntentStatus.FAILED),
    }


def test_an_open_shows_its_timings_evidence_and_what_it_wrote(trading_history):
    opened = trading_history.positions[0]
    with Store.open(trading_history.store_url) as store:
        intent_id = next(
            r.aggregate_id
            for r in everything(store)
            if r.type == "intent.recorded" and position_id(r.aggregate_id) == opened
        )
        found = lifecycle(store, intent_id)
    assert (found.kind, found.status, found.payload.symbol) == (
        IntentKind.POSITION_OPEN,
        IntentStatus.COMPLETED,
        "BTCUSD",
    )
    assert found.recorded_at <= found.submitted_at <= found.resolved_at
    assert found.recorded_to_resolved_seconds == (
        (found.resolved_at - found.recorded_at).total_seconds()
    )
    assert found.recorded_to_resolved_seconds == pytest.approx(
        found.recorded_to_submitted_seconds + found.submitted_to_resolved_seconds
    )
    assert found.recorded_to_resolved_seconds > 0
    (evidence,) = found.evidence
    assert evidence.source == "submit"
    assert evidence.broker_ref == found.broker_ref
    assert found.broker_ref is not None
    assert found.reservation is not None
    assert [r.type for r in found.produced] == [
        "account.funds_reserved",
        "position.opened",
        "account.funds_settled",
        "account.fee_charged",
    ]
    assert found.produced[1].aggregate_id == opened
    assert found.review_reason is None
    assert found.resolution is None


def test_a_refused_change_shows_the_broker_reason_and_wrote_nothing(trading_history):
    with Store.open(trading_history.store_url) as store:
        intent_id = next(
            r.aggregate_id
            for r in everything(store)
            if r.type == "intent.recorded" and r.payload["kind"] == "POSITION_UPDATE"
        )
        found = lifecycle(store, intent_id)
    assert found.status is IntentStatus.FAILED
    (evidence,) = found.evidence
    assert evidence.detail
    assert [step.type for step in found.steps] == [
        "intent.recorded",
        "intent.submitted",
        "intent.failed",
    ]
    assert found.produced == []


def test_review_and_an_operator_resolution(store):
    Scenario(store).write_everything()
    records = everything(store)
    resolved = next(r for r in records if r.type == "intent.resolved_by_operator")
    found = lifecycle(store, resolved.aggregate_id)
    assert found.status is IntentStatus.ROLLED_BACK
    assert found.review_reason == "no order found yet"
    assert found.resolution is not None
    assert (found.resolution.actor, found.resolution.outcome, found.resolution.reason) == (
        "ops",
        IntentStatus.ROLLED_BACK,
        "never sent",
    )
    assert found.resolution.recorded_at == found.resolved_at == resolved.recorded_at
    assert [r.type for r in found.produced] == [
        "account.funds_reserved",
        "account.reservation_released",
    ]


def test_only_the_streams_involved_are_read(trading_history, monkeypatch):
    with Store.open(trading_history.store_url) as store:
        intent_id = next(r.aggregate_id for r in everything(store) if r.type == "intent.recorded")

        def no_scan(*_, **__):
            raise AssertionError("the whole log was read")

        monkeypatch.setattr(store.application.recorder, "select_notifications", no_scan)
        assert lifecycle(store, intent_id).intent_id == intent_id


def test_an_unknown_intent_or_another_aggregate_is_not_found(trading_history):
    with Store.open(trading_history.store_url) as store:
        for stranger in (uuid4(), account_id("main"), trading_history.positions[0]):
            with pytest.raises(NotFound, match=f"no intent {stranger}"):
                lifecycle(store, stranger)
