"""Intents left in flight by a crash, settled from what the broker shows and nothing else.

- a venue that cannot look up client ids is searched for candidates:
  one match completes an intent, none rolls it back, both as heuristic;
- two matches are ambiguous: the intent needs review, and its account and
  symbol are frozen until an operator resolves it;
- an order hidden by the broker's visibility lag is waited for on the
  broker's clock, never rolled back.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from ledger.account import account_id
from ledger.engine import Engine
from ledger.errors import Frozen
from ledger.instruments import Side
from ledger.intent import Intent, IntentStatus
from ledger.ports import Accepted, ClientIdScope, NotFound, OrderAction, OrderRequest
from ledger.reconciliation import Finding
from recovery.recover import Report, recover_at_startup
from tests.recovery.test_recovery import (
    ACCOUNT,
    Venue,
    all_intents,
    assert_frozen_where_reviewing,
    assert_ledger_matches_broker,
    printed,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Recovery:
    """Startup recovery that keeps its report."""

    def __init__(self) -> None:
        self.reports: list[Report] = []

    async def __call__(self, engine: Engine) -> None:
        self.reports.append(await recover_at_startup(engine))

    @property
    def report(self) -> Report:
        (report,) = self.reports
        return report


def intents_by_id(venue: Venue) -> dict:
    with venue.store() as store:
        return {intent.id: intent for intent in all_intents(store)}


async def test_without_client_id_lookup_candidates_complete_or_roll_back_heuristically(tmp_path):
    never_sent = Venue(tmp_path, scope=ClientIdScope.NONE, faults="timeout_before_accept:1")
    await never_sent.fund()
    (lost,) = printed(await never_sent.crash(trades="US500:long:1", moves=0), "unknown")
    # A second engine (whose startup recovery settles the first crash) sends two
    # orders alike in all but their tag, and hears back from neither.
    answer_lost = Venue(tmp_path, scope=ClientIdScope.NONE, faults="timeout_after_accept:1")
    trades = "BTCUSD:long:0.1,BTCUSD:long:0.1"
    sent = printed(await answer_lost.crash(trades=trades, moves=0, deposit="0"), "unknown")
    assert len(sent) == 2
    recovery = Recovery()
    async with answer_lost.engine(startup=recovery) as engine:
        assert engine.frozen == {}
    settled = {i.subject for i in recovery.report.items if i.finding is Finding.INTENT_COMPLETED}
    assert settled == {str(intent_id) for intent_id in sent}
    intents = intents_by_id(answer_lost)
    rolled_back = intents[lost]
    assert rolled_back.status is IntentStatus.ROLLED_BACK
    (evidence,) = rolled_back.evidence
    assert (evidence.source, evidence.heuristic, evidence.broker_ref) == ("candidates", True, None)
    with answer_lost.broker() as broker:
        orders = {order.client_id: order for order in await broker.all_orders()}
    assert len(orders) == 2
    for intent_id in sent:
        intent = intents[intent_id]
        assert intent.status is IntentStatus.COMPLETED
        (evidence,) = intent.evidence
        assert (evidence.source, evidence.heuristic) == ("candidates", True)
        assert evidence.broker_ref == orders[intent.client_id].broker_ref
    await assert_ledger_matches_broker(answer_lost)


async def test_two_orders_matching_one_intent_need_review_and_freeze_its_symbol(tmp_path):
    venue = Venue(tmp_path, scope=ClientIdScope.NONE, faults="timeout_after_accept:1")
    await venue.fund()
    (intent_id,) = printed(await venue.crash(trades="BTCUSD:long:0.1", moves=0), "unknown")
    with venue.store() as store:
        intent = store.get(Intent, intent_id)
    assert intent is not None
    # Someone places an order the intent's search cannot tell from its own.
    with venue.broker() as broker:
        lookalike = OrderRequest(
            client_id="desk1",
            account=ACCOUNT,
            action=OrderAction.OPEN,
            symbol="BTCUSD",
            side=Side.LONG,
            quantity=Decimal("0.1"),
            tag=intent.client_id[:8],
        )
        assert isinstance(await broker.submit(lookalike), Accepted)
        refs = sorted(order.broker_ref for order in await broker.all_orders())
    assert len(refs) == 2
    recovery = Recovery()
    async with venue.engine(startup=recovery) as engine:
        assert engine.frozen == {(account_id(ACCOUNT), "BTCUSD"): intent_id}
        (reviewing,) = await assert_frozen_where_reviewing(engine)
        with pytest.raises(Frozen, match=rf"intent {intent_id} needs review"):
            await engine.open_position(ACCOUNT, "BTCUSD", Side.SHORT, "0.1")
        other = await engine.open_position(ACCOUNT, "ETHUSD", Side.SHORT, "1")
    assert reviewing.id == intent_id
    assert other.status == "completed"
    (item,) = [i for i in recovery.report.items if i.finding is Finding.INTENT_NEEDS_REVIEW]
    assert (item.subject, item.applied) == (str(intent_id), True)
    assert item.detail.startswith("2 orders match BTCUSD long 0.1")
    assert item.detail.endswith(f": {', '.join(refs)}")
    reviewed = intents_by_id(venue)[intent_id]
    assert reviewed.status is IntentStatus.NEEDS_REVIEW
    assert reviewed.review_reason == item.detail


@pytest.mark.parametrize("scope", [ClientIdScope.FOREVER, ClientIdScope.NONE])
async def test_an_order_hidden_by_the_visibility_lag_is_waited_for_not_rolled_back(tmp_path, scope):
    lag = 5
    faults = "crash_after_accept:1,lookup_lag:1"
    venue = Venue(tmp_path, scope=scope, faults=faults, lag_seconds=lag)
    await venue.fund()
    assert await venue.crash(trades="BTCUSD:long:0.1", moves=0) == []
    with venue.store() as store:
        (intent_id,) = store.unfinished_intents()
        intent = store.get(Intent, intent_id)
    assert intent is not None
    # The broker accepted the order, and reads do not show it yet.
    with venue.broker() as broker:
        crashed_at = await broker.server_time()
        (row,) = broker.dump()["orders"]
        assert row["client_id"] == intent.client_id
        assert await broker.all_orders() == []
        assert await broker.fills() == []
        if scope is ClientIdScope.FOREVER:
            assert await broker.lookup(intent.client_id) == NotFound(authoritative=True)
    recovery = Recovery()
    async with venue.engine(startup=recovery) as engine:
        recovered_at = await engine.broker.server_time()
    assert recovered_at >= crashed_at + timedelta(seconds=lag)
    findings = {(i.finding, i.subject, i.applied) for i in recovery.report.items}
    assert (Finding.INTENT_COMPLETED, str(intent_id), True) in findings
    assert Finding.INTENT_ROLLED_BACK not in {finding for finding, _, _ in findings}
    completed = intents_by_id(venue)[intent_id]
    assert completed.status is IntentStatus.COMPLETED
    (evidence,) = completed.evidence
    assert evidence.source == ("lookup" if scope is ClientIdScope.FOREVER else "candidates")
    assert evidence.broker_ref == row["ref"]
    await assert_ledger_matches_broker(venue)
