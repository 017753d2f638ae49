"""The MessagePack mapper: exact round trips, stable names, upcasting, tamper checks."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar
from uuid import uuid4

import msgspec
import pytest
from eventsourcing.persistence import MapperDeserialisationError
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.codec import MsgspecMapper
from ledger.account import Deposited
from ledger.catalogue import EVENT_TYPES
from ledger.events import Event, EventTypes
from ledger.money import Money
from tests.strategies import structs

MAPPER = MsgspecMapper(EVENT_TYPES)
NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def exact(event: Event) -> bytes:
    # JSON shows a Decimal's exponent and a datetime's offset: equal bytes
    # mean the same digits and the same instant, not just equal values.
    return msgspec.json.encode(event)


@pytest.mark.parametrize("event_class", list(EVENT_TYPES), ids=lambda cls: cls.stored_name)
@settings(max_examples=40)
@given(data=st.data())
def test_every_event_type_round_trips_exactly(event_class, data):
    event = data.draw(structs(event_class))
    stored = MAPPER.to_stored_event(event)
    assert stored.topic == f"{event_class.stored_name}/v{event_class.class_version}"
    decoded = MAPPER.to_domain_event(stored)
    assert type(decoded) is event_class
    assert exact(decoded) == exact(event)


def test_stored_names_do_not_depend_on_the_module_path():
    for cls in EVENT_TYPES:
        assert cls.__module__ not in MAPPER.event_types.topic(cls)
        assert "." in cls.stored_name
        assert cls.stored_name.split(".")[0] in {
            "account",
            "position",
            "intent",
            "reconciliation",
            "controls",
            "refusal",
            "breaker",
            "request",
        }


def test_stored_events_are_compact_messagepack():
    event = Deposited(
        originator_id=uuid4(),
        originator_version=2,
        recorded_at=NOW,
        amount=Money(amount=Decimal("100.00"), currency="USD"),
    )
    stored = MAPPER.to_stored_event(event)
    assert len(stored.state) < len(msgspec.json.encode(event)) * 0.8
    assert msgspec.msgpack.decode(stored.state)["amount"] == {"amount": "100.00", "currency": "USD"}


def deposited(**changes: Any) -> Any:
    event = Deposited(
        originator_id=uuid4(),
        originator_version=1,
        recorded_at=NOW,
        amount=Money(amount=Decimal("5.00"), currency="USD"),
    )
    return replace(MAPPER.to_stored_event(event), **changes)


def test_a_row_whose_id_differs_from_its_state_is_refused():
    with pytest.raises(MapperDeserialisationError, match="differs from its row"):
        MAPPER.to_domain_event(deposited(originator_id=uuid4()))
    with pytest.raises(MapperDeserialisationError, match="differs from its row"):
        MAPPER.to_domain_event(deposited(originator_version=7))


def test_unknown_names_and_future_versions_are_refused():
    with pytest.raises(MapperDeserialisationError, match="no event type is stored as"):
        MAPPER.to_domain_event(deposited(topic="ledger.account:Deposited"))
    with pytest.raises(MapperDeserialisationError, match="newer than this code"):
        MAPPER.to_domain_event(deposited(topic="account.deposited/v2"))


def test_a_corrupted_state_is_refused_with_its_identity():
    stored = deposited()
    broken = replace(stored, state=stored.state[:-3])
    with pytest.raises(MapperDeserialisationError, match=r"account.deposited"):
        MAPPER.to_domain_event(broken)


def test_invalid_money_in_the_store_is_refused_on_the_way_back():
    stored = deposited()
    state = msgspec.msgpack.decode(stored.state)
    state["amount"]["amount"] = "5.001"
    bad = msgspec.msgpack.encode(state)
    with pytest.raises(MapperDeserialisationError, match="decimal places"):
        MAPPER.to_domain_event(replace(stored, state=bad))


# Upcasting: a test-only event that changed shape between versions.


class FeeV1(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "test.fee"
    cents: int


class FeeV3(Event, frozen=True, kw_only=True):
    """v2 turned cents into Money; v3 added a reason with no default."""

    stored_name: ClassVar[str] = "test.fee"
    class_version: ClassVar[int] = 3
    amount: Money
    reason: str

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        cents = state.pop("cents")
        state["amount"] = {"amount": str(Decimal(cents).scaleb(-2)), "currency": "USD"}

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        state["reason"] = "unknown (recorded before reasons were kept)"


def test_events_stored_at_older_versions_are_upcast_on_the_way_back():
    old = MsgspecMapper(EventTypes([FeeV1]))
    new = MsgspecMapper(EventTypes([FeeV3]))
    stored = old.to_stored_event(
        FeeV1(originator_id=uuid4(), originator_version=3, recorded_at=NOW, cents=1250)
    )
    assert stored.topic == "test.fee/v1"
    event = new.to_domain_event(stored)
    assert isinstance(event, FeeV3)
    assert event.amount == Money(amount=Decimal("12.50"), currency="USD")
    assert event.reason.startswith("unknown")
    assert event.recorded_at == NOW
    assert event.originator_version == 3


def test_a_class_with_a_version_but_no_upcaster_is_refused_at_registration():
    class Broken(Event, frozen=True, kw_only=True):
        stored_name: ClassVar[str] = "test.broken"
        class_version: ClassVar[int] = 2

    with pytest.raises(AssertionError, match="lacks upcast_v1_v2"):
        EventTypes([Broken])


def test_a_stored_name_can_be_used_only_once():
    with pytest.raises(AssertionError, match="used twice"):
        EventTypes([FeeV1, FeeV3])
