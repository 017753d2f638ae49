"""The Intent lifecycle against the table in ledger/intent.py's docstring, and client ids.

The table is written out here by hand from the diagram, not imported from
the module, so a change to the code's table that the diagram does not
describe makes these tests fail.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.client_ids import client_id, parse_client_id
from ledger.errors import IllegalTransition, InvalidValue
from ledger.events import Event
from ledger.instruments import Side
from ledger.intent import (
    BalanceChange,
    CloseRequest,
    Evidence,
    Intent,
    IntentCompleted,
    IntentFailed,
    IntentKind,
    IntentNeedsReview,
    IntentRecorded,
    IntentResolvedByOperator,
    IntentRolledBack,
    IntentStatus,
    IntentSubmitted,
    OpenRequest,
    ProtectionChange,
    TradeRequest,
)
from ledger.money import Money

PENDING = IntentStatus.PENDING
IN_PROGRESS = IntentStatus.IN_PROGRESS
COMPLETED = IntentStatus.COMPLETED
FAILED = IntentStatus.FAILED
ROLLED_BACK = IntentStatus.ROLLED_BACK
NEEDS_REVIEW = IntentStatus.NEEDS_REVIEW

# 4 base-62 characters of epoch, 2 of attempt (see ledger/client_ids.py).
EPOCH_LIMIT = 62**4 - 1
ATTEMPT_LIMIT = 62**2 - 1
CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9]{1,32}")

RESOLVE = "resolve_by_operator"
AUTOMATIC_COMMANDS = ("submit", "complete", "fail", "roll_back", "flag_for_review")
# Every command, with the outcome named for an operator's resolution.
COMMANDS: list[tuple[str, IntentStatus | None]] = [(name, None) for name in AUTOMATIC_COMMANDS] + [
    (RESOLVE, outcome) for outcome in IntentStatus
]

# The status each automatic command leads to.
TARGET = {
    "submit": IN_PROGRESS,
    "complete": COMPLETED,
    "fail": FAILED,
    "roll_back": ROLLED_BACK,
    "flag_for_review": NEEDS_REVIEW,
}
EVENT_OF = {
    "submit": IntentSubmitted,
    "complete": IntentCompleted,
    "fail": IntentFailed,
    "roll_back": IntentRolledBack,
    "flag_for_review": IntentNeedsReview,
    RESOLVE: IntentResolvedByOperator,
}

# The diagram: pending -> in_progress -> completed | failed | rolled_back;
# pending may also fail or be rolled back; pending and in_progress may go to
# needs_review, which an operator alone resolves to completed | rolled_back.
LEGAL: dict[IntentStatus, set[tuple[str, IntentStatus | None]]] = {
    PENDING: {("submit", None), ("fail", None), ("roll_back", None), ("flag_for_review", None)},
    IN_PROGRESS: {
        ("complete", None),
        ("fail", None),
        ("roll_back", None),
        ("flag_for_review", None),
    },
    NEEDS_REVIEW: {(RESOLVE, COMPLETED), (RESOLVE, ROLLED_BACK)},
    COMPLETED: set(),
    FAILED: set(),
    ROLLED_BACK: set(),
}
TERMINAL = {COMPLETED, FAILED, ROLLED_BACK}

# How to bring a fresh (pending) intent to each status.
PATH_TO: dict[IntentStatus, list[tuple[str, IntentStatus | None]]] = {
    PENDING: [],
    IN_PROGRESS: [("submit", None)],
    COMPLETED: [("submit", None), ("complete", None)],
    FAILED: [("fail", None)],
    ROLLED_BACK: [("submit", None), ("roll_back", None)],
    NEEDS_REVIEW: [("submit", None), ("flag_for_review", None)],
}


def now() -> datetime:
    return datetime.now(UTC)


def evidence(broker_ref: str | None = "B-1") -> Evidence:
    return Evidence(source="lookup", observed_at=now(), broker_ref=broker_ref)


def record(
    intent_id: UUID | None = None, *, epoch: int = 1, attempt: int = 1
) -> tuple[Intent, list[Event]]:
    """A pending intent, and the events it has emitted so far (its IntentRecorded)."""
    intent = Intent.record(
        intent_id or uuid4(),
        kind=IntentKind.BALANCE_DEDUCT,
        account_id=uuid4(),
        payload=BalanceChange(amount=Money.parse("10.00", "USD")),
        epoch=epoch,
        attempt=attempt,
        recorded_at=now(),
        reservation=Money.parse("10.00", "USD"),
    )
    events = intent.collect_events()
    assert [type(e) for e in events] == [IntentRecorded]
    return intent, events


def command(intent: Intent, name: str, outcome: IntentStatus | None) -> Callable[[], None]:
    at = now()
    calls: dict[str, Callable[[], None]] = {
        "submit": lambda: intent.submit(recorded_at=at),
        "complete": lambda: intent.complete(evidence(), recorded_at=at),
        "fail": lambda: intent.fail("broker refused", recorded_at=at),
        "roll_back": lambda: intent.roll_back(evidence(None), recorded_at=at),
        "flag_for_review": lambda: intent.flag_for_review("ambiguous", recorded_at=at),
    }
    if name == RESOLVE:
        assert outcome is not None
        return lambda: intent.resolve_by_operator(
            outcome, actor="alice", reason="checked the venue", recorded_at=at, broker_ref="OP-1"
        )
    return calls[name]


def intent_in(status: IntentStatus) -> tuple[Intent, list[Event]]:
    intent, events = record()
    for name, outcome in PATH_TO[status]:
        command(intent, name, outcome)()
        events += intent.collect_events()
    assert intent.status is status
    return intent, events


def expected_status(name: str, outcome: IntentStatus | None) -> IntentStatus:
    if name == RESOLVE:
        assert outcome is not None
        return outcome
    return TARGET[name]


def state_of(intent: Intent) -> tuple[object, ...]:
    return (
        intent.status,
        intent.version,
        list(intent.evidence),
        intent.broker_ref,
        intent.resolved_at,
    )


# The transition table ---------------------------------------------------------------


def test_the_table_covers_every_status() -> None:
    assert set(LEGAL) == set(IntentStatus)
    assert set(PATH_TO) == set(IntentStatus)


@pytest.mark.parametrize("status", list(IntentStatus), ids=str)
@pytest.mark.parametrize(
    ("name", "outcome"), COMMANDS, ids=[f"{n}:{o}" if o else n for n, o in COMMANDS]
)
def test_every_status_and_command(
    status: IntentStatus, name: str, outcome: IntentStatus | None
) -> None:
    intent, history = intent_in(status)
    before = state_of(intent)
    run = command(intent, name, outcome)
    if (name, outcome) not in LEGAL[status]:
        with pytest.raises(IllegalTransition):
            run()
        assert intent.collect_events() == []
        assert state_of(intent) == before
        return
    run()
    emitted = intent.collect_events()
    assert [type(e) for e in emitted] == [EVENT_OF[name]]
    new_status = expected_status(name, outcome)
    assert intent.status is new_status
    assert intent.version == before[1] + 1
    assert emitted[0].originator_version == intent.version
    assert intent.is_terminal is (new_status in TERMINAL)
    if new_status in TERMINAL:
        assert intent.resolved_at == emitted[0].recorded_at
    else:
        assert intent.resolved_at is None
    reloaded = Intent.project(None, [*history, *emitted])
    assert reloaded is not None
    assert state_of(reloaded) == state_of(intent)


@pytest.mark.parametrize("name", AUTOMATIC_COMMANDS)
def test_needs_review_is_left_only_by_an_operator(name: str) -> None:
    intent, _ = intent_in(NEEDS_REVIEW)
    with pytest.raises(IllegalTransition):
        command(intent, name, None)()
    assert intent.status is NEEDS_REVIEW
    assert intent.collect_events() == []


@pytest.mark.parametrize("status", [s for s in IntentStatus if s is not NEEDS_REVIEW], ids=str)
@pytest.mark.parametrize("outcome", [COMPLETED, ROLLED_BACK], ids=str)
def test_an_operator_resolves_only_what_needs_review(
    status: IntentStatus, outcome: IntentStatus
) -> None:
    intent, _ = intent_in(status)
    with pytest.raises(IllegalTransition):
        command(intent, RESOLVE, outcome)()
    assert intent.status is status
    assert intent.collect_events() == []


@pytest.mark.parametrize(("actor", "reason"), [("", "why"), ("alice", ""), (" ", "why")])
def test_an_operator_resolution_names_actor_and_reason(actor: str, reason: str) -> None:
    intent, _ = intent_in(NEEDS_REVIEW)
    before = state_of(intent)
    with pytest.raises(InvalidValue):
        intent.resolve_by_operator(COMPLETED, actor=actor, reason=reason, recorded_at=now())
    assert intent.collect_events() == []
    assert state_of(intent) == before


def test_evidence_and_broker_ref_are_kept() -> None:
    intent, _ = record()
    intent.submit(recorded_at=now())
    intent.flag_for_review("ambiguous", recorded_at=now(), evidence=evidence("B-7"))
    intent.resolve_by_operator(
        COMPLETED, actor="alice", reason="found it", recorded_at=now(), broker_ref="B-8"
    )
    assert [e.broker_ref for e in intent.evidence] == ["B-7"]
    assert intent.broker_ref == "B-8"
    assert intent.status is COMPLETED
    assert intent.version == 4


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(COMMANDS),
        max_size=12,
    )
)
def test_random_command_sequences_follow_the_table(
    sequence: list[tuple[str, IntentStatus | None]],
) -> None:
    intent, events = record()
    status = PENDING
    for name, outcome in sequence:
        run = command(intent, name, outcome)
        if (name, outcome) in LEGAL[status]:
            run()
            status = expected_status(name, outcome)
            events += intent.collect_events()
        else:
            with pytest.raises(IllegalTransition):
                run()
            assert intent.collect_events() == []
        assert intent.status is status
        assert intent.version == len(events)
    reloaded = Intent.project(None, events)
    assert reloaded is not None
    assert state_of(reloaded) == state_of(intent)


# Kinds and payloads ------------------------------------------------------------------

PAYLOADS = {
    "balance": BalanceChange(amount=Money.parse("5.00", "USD")),
    "open": OpenRequest(symbol="TEST", side=Side.LONG, quantity=Decimal("1.000")),
    "close": CloseRequest(position_id=uuid4()),
    "protection": ProtectionChange(position_id=uuid4(), stop_loss=Decimal("9.00")),
    "trade": TradeRequest(symbol="TEST", side=Side.SHORT, quantity=Decimal("2.000")),
}
PAYLOAD_FOR_KIND = {
    IntentKind.BALANCE_DEDUCT: "balance",
    IntentKind.BALANCE_ADD: "balance",
    IntentKind.POSITION_OPEN: "open",
    IntentKind.POSITION_CLOSE: "close",
    IntentKind.POSITION_UPDATE: "protection",
    IntentKind.TRADE_EXECUTE: "trade",
}


def test_every_kind_has_a_payload() -> None:
    assert set(PAYLOAD_FOR_KIND) == set(IntentKind)


@pytest.mark.parametrize("kind", list(IntentKind), ids=str)
@pytest.mark.parametrize("payload_name", list(PAYLOADS))
def test_kind_and_payload_must_match(kind: IntentKind, payload_name: str) -> None:
    intent_id = uuid4()
    arguments = {
        "kind": kind,
        "account_id": uuid4(),
        "payload": PAYLOADS[payload_name],
        "epoch": 3,
        "recorded_at": now(),
    }
    if PAYLOAD_FOR_KIND[kind] != payload_name:
        with pytest.raises(InvalidValue):
            Intent.record(intent_id, **arguments)
        return
    intent = Intent.record(intent_id, **arguments)
    assert intent.kind is kind
    assert intent.payload == PAYLOADS[payload_name]
    assert intent.status is PENDING
    assert intent.version == 1
    assert parse_client_id(intent.client_id) == (intent_id, 3, 1)


@pytest.mark.parametrize("amount", ["0.00", "-0.01", "-100.00"])
def test_a_reservation_must_be_positive(amount: str) -> None:
    with pytest.raises(InvalidValue):
        Intent.record(
            uuid4(),
            kind=IntentKind.BALANCE_DEDUCT,
            account_id=uuid4(),
            payload=PAYLOADS["balance"],
            epoch=1,
            recorded_at=now(),
            reservation=Money.parse(amount, "USD"),
        )


# Client ids ---------------------------------------------------------------------------

epochs = st.integers(min_value=0, max_value=EPOCH_LIMIT)
attempts = st.integers(min_value=1, max_value=ATTEMPT_LIMIT)


@settings(max_examples=60, deadline=None)
@given(st.uuids(), epochs, attempts)
def test_client_id_round_trips(intent_id: UUID, epoch: int, attempt: int) -> None:
    text = client_id(intent_id, epoch=epoch, attempt=attempt)
    assert CLIENT_ID_PATTERN.fullmatch(text)
    assert text == client_id(intent_id, epoch=epoch, attempt=attempt)
    parts = parse_client_id(text)
    assert parts is not None
    assert parts.intent_id == intent_id
    assert parts.epoch == epoch
    assert parts.attempt == attempt


@settings(max_examples=60, deadline=None)
@given(st.uuids(), epochs, attempts)
def test_an_intent_records_its_client_id(intent_id: UUID, epoch: int, attempt: int) -> None:
    intent, _ = record(intent_id, epoch=epoch, attempt=attempt)
    assert CLIENT_ID_PATTERN.fullmatch(intent.client_id)
    assert parse_client_id(intent.client_id) == (intent_id, epoch, attempt)
    assert (intent.epoch, intent.attempt) == (epoch, attempt)


@settings(max_examples=60, deadline=None)
@given(st.uuids(), st.uuids(), epochs, epochs, attempts, attempts)
def test_different_intents_get_different_client_ids(
    first: UUID, second: UUID, epoch_a: int, epoch_b: int, attempt_a: int, attempt_b: int
) -> None:
    a = client_id(first, epoch=epoch_a, attempt=attempt_a)
    b = client_id(second, epoch=epoch_b, attempt=attempt_b)
    assert (a == b) is ((first, epoch_a, attempt_a) == (second, epoch_b, attempt_b))


@pytest.mark.parametrize(
    ("epoch", "attempt"), [(-1, 1), (EPOCH_LIMIT + 1, 1), (0, 0), (0, ATTEMPT_LIMIT + 1)]
)
def test_client_id_refuses_out_of_range(epoch: int, attempt: int) -> None:
    with pytest.raises(InvalidValue):
        client_id(uuid4(), epoch=epoch, attempt=attempt)


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.text(alphabet=string.ascii_letters + string.digits, min_size=28, max_size=28),
        st.text(max_size=40),
    )
)
def test_parse_accepts_only_what_it_can_rebuild(text: str) -> None:
    parts = parse_client_id(text)
    if parts is not None:
        assert client_id(parts.intent_id, epoch=parts.epoch, attempt=parts.attempt) == text


def test_parse_refuses_foreign_ids() -> None:
    assert parse_client_id("") is None
    assert parse_client_id("abc") is None
    assert parse_client_id("z" * 28) is None  # more than 128 bits of intent id
    assert parse_client_id("0" * 26 + "00") is None  # attempt 0
    assert parse_client_id("0" * 27 + "-") is None
    assert parse_client_id("0" * 29) is None
    assert parse_client_id("0" * 27 + "1") == (UUID(int=0), 0, 1)
