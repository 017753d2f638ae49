"""Idempotency keys: one key, one intent, one answer, also across restarts."""

from __future__ import annotations

import pytest

from adapters.store import Store
from ledger.errors import (
    InvalidValue,
    KeyReused,
    OperationRejected,
    OutcomeUnknown,
    RequestInFlight,
)
from ledger.idempotency import KeyedRequest, request_id
from ledger.intent import IntentStatus
from ledger.origin import Origin
from tests.ledger.test_engine import Setup

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def keyed(key: str, digest: str = "first", actor: str = "bot") -> Origin:
    return Origin(actor=actor, key=key, digest=digest)


async def test_a_key_sent_again_gets_the_first_answer_and_no_second_intent(tmp_path):
    setup = Setup(tmp_path)
    await setup.fund_broker()
    async with setup.engine() as engine:
        await engine.deposit("main", "100000", "USD", origin=keyed("fund"))
        opened = await engine.open_position(
            "main", "BTCUSD", "long", "0.1", stop_loss="1000", origin=keyed("buy")
        )
        events = setup.event_count()
        again = await engine.open_position(
            "main", "BTCUSD", "long", "0.1", stop_loss="1000", origin=keyed("buy")
        )
        assert again == opened
        assert setup.event_count() == events
    # A restart forgets nothing: the key and its answer are in the store.
    async with setup.engine() as engine:
        assert await engine.deposit("main", "100000", "USD", origin=keyed("fund")) is not None
        after = await engine.open_position(
            "main", "BTCUSD", "long", "0.1", stop_loss="1000", origin=keyed("buy")
        )
    assert after == opened
    assert list(setup.account().commitments) == [opened.position_id]
    intent = setup.intent(opened.intent_id)
    assert intent.origin == keyed("buy")


async def test_a_key_sent_with_another_request_is_refused_and_writes_nothing(tmp_path):
    setup = Setup(tmp_path)
    async with setup.engine() as engine:
        first = await engine.deposit("main", "100", "USD", origin=keyed("k", digest="a"))
        events = setup.event_count()
        with pytest.raises(KeyReused, match=r"first sent with another request") as reused:
            await engine.deposit("main", "200", "USD", origin=keyed("k", digest="b"))
        assert reused.value.intent_id == first.intent_id
        assert setup.event_count() == events


async def test_keys_are_scoped_by_actor(tmp_path):
    setup = Setup(tmp_path)
    async with setup.engine() as engine:
        one = await engine.deposit("main", "100", "USD", origin=keyed("k", actor="one"))
        two = await engine.deposit("main", "100", "USD", origin=keyed("k", actor="two"))
    assert one.intent_id != two.intent_id
    assert setup.account().total.amount == 200


async def test_a_rejected_request_sent_again_is_rejected_again_without_a_second_intent(tmp_path):
    setup = Setup(tmp_path)
    await setup.fund_broker("100")
    async with setup.engine() as engine:
        await engine.deposit("main", "100000", "USD")
        with pytest.raises(OperationRejected) as first:
            await engine.open_position("main", "BTCUSD", "long", "1", origin=keyed("big"))
        events = setup.event_count()
        with pytest.raises(OperationRejected) as second:
            await engine.open_position("main", "BTCUSD", "long", "1", origin=keyed("big"))
    assert second.value.intent_id == first.value.intent_id
    assert second.value.reason == first.value.reason
    assert setup.event_count() == events


async def test_a_key_whose_outcome_is_unknown_is_in_flight_until_recovery_decides(tmp_path):
    setup = Setup(tmp_path, faults="timeout_before_accept:1")
    await setup.fund_broker()
    async with setup.engine(startup=None) as engine:
        await engine.deposit("main", "100000", "USD")
        with pytest.raises(OutcomeUnknown) as unknown:
            await engine.open_position("main", "BTCUSD", "long", "0.1", origin=keyed("lost"))
        with pytest.raises(RequestInFlight):
            await engine.open_position("main", "BTCUSD", "long", "0.1", origin=keyed("lost"))
    # Startup recovery finds the order never reached the broker and rolls the intent back.
    setup.broker_url = setup.clean_broker_url
    async with setup.engine() as engine:
        assert setup.intent(unknown.value.intent_id).status is IntentStatus.ROLLED_BACK
        with pytest.raises(OperationRejected, match=r"rolled_back"):
            await engine.open_position("main", "BTCUSD", "long", "0.1", origin=keyed("lost"))
    with Store.open(setup.store_url) as store:
        request = store.get(KeyedRequest, request_id("bot", "lost"))
    assert request is not None
    assert request.intent_id == unknown.value.intent_id


@pytest.mark.parametrize("key", ["", "with space", "x" * 129, "naïve"])
def test_a_malformed_key_is_refused(key):
    with pytest.raises(InvalidValue, match=r"idempotency_key"):
        keyed(key)
