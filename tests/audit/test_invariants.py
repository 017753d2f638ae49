"""Each invariant of the ledger, broken by events written straight through the store, is found.

Every test starts from the known history of `tests.projections.scenario`
(which verifies clean), writes what the ledger itself would never write,
and expects `verify` to name that invariant first.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from uuid import UUID, uuid4

import msgspec
import pytest

from adapters.store import Store
from audit.problems import ProblemKind
from audit.verify import verify
from ledger.account import Account, AccountSnapshot, ReservationReleased
from ledger.events import Event
from ledger.idempotency import KeyedRequest
from ledger.instruments import Price, Quantity, Side
from ledger.intent import (
    BalanceChange,
    CloseRequest,
    Evidence,
    Intent,
    IntentCompleted,
    IntentKind,
    OpenRequest,
    ProtectionChange,
)
from ledger.origin import Origin
from ledger.position import Position, PositionFlag, PositionFlagged, Provenance, position_id
from ledger.results import OperationResult
from projections import catch_up
from projections.balances import BALANCES
from projections.database import Database
from tests.projections.scenario import BTC, Scenario, usd

pytestmark = pytest.mark.tampered  # these tests damage stored events on purpose


class Corrupted:
    """The scenario's store and ids, and ways to write into it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.scenario = Scenario(store)
        self.ids = self.scenario.write_everything()
        catch_up(store)

    @property
    def now(self):
        return self.scenario.tick()

    @property
    def account(self) -> Account:
        return self.scenario.account

    def get(self, cls, key: str | UUID):
        found = self.store.get(cls, self.ids[key] if isinstance(key, str) else key)
        assert found is not None
        return found

    def intent(self, kind: IntentKind, payload, reservation=None) -> Intent:
        return Intent.record(
            uuid4(),
            kind=kind,
            account_id=self.account.id,
            payload=payload,
            epoch=1,
            recorded_at=self.now,
            reservation=reservation,
        )

    def completed(self, intent: Intent) -> Intent:
        intent.submit(recorded_at=self.now)
        intent.complete(Evidence(source="submit", observed_at=self.now), recorded_at=self.now)
        return intent

    def raw(self, event: Event) -> None:
        """Store `event` as it is, past every aggregate's guards."""
        application = self.store.application
        application.recorder.insert_events([application.mapper.to_stored_event(event)])

    def next_of(self, aggregate) -> dict:
        return {
            "originator_id": aggregate.id,
            "originator_version": aggregate.version + 1,
            "recorded_at": self.now,
        }


@pytest.fixture
def ledger(sqlite_url) -> Corrupted:
    with Store.open(sqlite_url) as store:
        corrupted = Corrupted(store)
        assert verify(store).ok
        yield corrupted


def snapshot_disagrees(c: Corrupted) -> None:
    snapshot = AccountSnapshot.take(c.get(Account, c.account.id))
    wrong = msgspec.structs.replace(snapshot, total=snapshot.total + usd("1"))
    c.store.application.snapshots.put([wrong])


def view_disagrees(c: Corrupted) -> None:
    database = Database(c.store)
    with database.transaction(commit=True) as cursor:
        cursor.execute(f"UPDATE {BALANCES.name} SET reserved = '0.00'")  # noqa: S608


def reservation_of_no_intent(c: Corrupted) -> None:
    c.account.reserve(uuid4(), usd("10"), recorded_at=c.now)
    c.store.save(c.account)


def reservation_of_a_failed_intent(c: Corrupted) -> None:
    intent = c.intent(IntentKind.BALANCE_DEDUCT, BalanceChange(amount=usd("10")), usd("10"))
    c.account.reserve(intent.id, usd("10"), recorded_at=c.now)
    intent.fail("refused", recorded_at=c.now)
    c.store.save(intent, c.account)


def reservation_of_another_amount(c: Corrupted) -> None:
    intent = c.intent(IntentKind.BALANCE_DEDUCT, BalanceChange(amount=usd("10")), usd("10"))
    c.account.reserve(intent.id, usd("9"), recorded_at=c.now)
    c.store.save(intent, c.account)


def intent_in_flight_reserves_nothing(c: Corrupted) -> None:
    intent = c.intent(IntentKind.BALANCE_DEDUCT, BalanceChange(amount=usd("10")), usd("10"))
    c.store.save(intent)


def reservation_released_early(c: Corrupted) -> None:
    c.account.release_reservation(c.ids["in_flight"], recorded_at=c.now)
    c.store.save(c.account)


def deposit_intent_without_deposit(c: Corrupted) -> None:
    c.store.save(c.completed(c.intent(IntentKind.BALANCE_ADD, BalanceChange(amount=usd("5")))))


def deposit_of_another_amount(c: Corrupted) -> None:
    intent = c.completed(c.intent(IntentKind.BALANCE_ADD, BalanceChange(amount=usd("5"))))
    c.account.deposit(usd("50"), recorded_at=c.now, intent_id=intent.id)
    c.store.save(intent, c.account)


def open_intent_without_position(c: Corrupted) -> None:
    request = OpenRequest(symbol="BTCUSD", side=Side.LONG, quantity=Decimal("0.1"))
    c.store.save(c.completed(c.intent(IntentKind.POSITION_OPEN, request)))


def open_intent_without_settlement(c: Corrupted) -> None:
    request = OpenRequest(symbol="BTCUSD", side=Side.LONG, quantity=Decimal("0.1"))
    intent = c.completed(c.intent(IntentKind.POSITION_OPEN, request))
    position = Position.open(
        position_id(intent.id),
        account_id=c.account.id,
        instrument=BTC,
        side=Side.LONG,
        quantity=Quantity(Decimal("0.1")),
        entry_price=Price(Decimal(60000)),
        recorded_at=c.now,
        intent_id=intent.id,
    )
    c.account.commit(position.id, usd("6000"), recorded_at=c.now)
    c.store.save(intent, position, c.account)


def close_intent_without_fill(c: Corrupted) -> None:
    request = CloseRequest(position_id=c.ids["kept"])
    c.store.save(c.completed(c.intent(IntentKind.POSITION_CLOSE, request)))


def level_not_asked_for(c: Corrupted) -> None:
    kept = c.get(Position, "kept")
    request = ProtectionChange(position_id=kept.id, stop_loss=kept.stop_loss, take_profit=None)
    intent = c.completed(c.intent(IntentKind.POSITION_UPDATE, request))
    kept.change_stop_loss(
        Price(Decimal(51000)), "requested", recorded_at=c.now, intent_id=intent.id
    )
    c.store.save(intent, kept)


def position_without_intent(c: Corrupted) -> None:
    position = Position.open(
        uuid4(),
        account_id=c.account.id,
        instrument=BTC,
        side=Side.LONG,
        quantity=Quantity(Decimal("0.1")),
        entry_price=Price(Decimal(60000)),
        recorded_at=c.now,
        intent_id=uuid4(),
    )
    c.account.commit(position.id, usd("6000"), recorded_at=c.now)
    c.store.save(position, c.account)


def adopted_without_flag(c: Corrupted) -> None:
    position = Position.open(
        uuid4(),
        account_id=c.account.id,
        instrument=BTC,
        side=Side.LONG,
        quantity=Quantity(Decimal("0.1")),
        entry_price=Price(Decimal(60000)),
        recorded_at=c.now,
        provenance=Provenance.ADOPTED,
    )
    c.account.commit(position.id, usd("6000"), recorded_at=c.now)
    c.store.save(position, c.account)


def open_position_holds_nothing(c: Corrupted) -> None:
    kept = c.get(Position, "kept")
    c.account.realise_pnl(kept.id, usd("0"), c.account.commitments[kept.id], recorded_at=c.now)
    c.store.save(c.account)


def closed_position_holds_funds(c: Corrupted) -> None:
    c.account.commit(c.ids["gone"], usd("10"), recorded_at=c.now)
    c.store.save(c.account)


def pnl_without_a_close(c: Corrupted) -> None:
    c.account.realise_pnl(c.ids["kept"], usd("25"), usd("0"), recorded_at=c.now)
    c.store.save(c.account)


def event_after_a_close(c: Corrupted) -> None:
    gone = c.get(Position, "gone")
    c.raw(PositionFlagged(**c.next_of(gone), flag=PositionFlag.ORPHAN, detail="late"))


def intent_event_after_its_end(c: Corrupted) -> None:
    intent = c.get(Intent, c.get(Position, "kept").intent_id)
    c.raw(IntentCompleted(**c.next_of(intent), evidence=Evidence(source="x", observed_at=c.now)))


def event_that_does_not_apply(c: Corrupted) -> None:
    account = c.get(Account, c.account.id)
    c.raw(ReservationReleased(**c.next_of(account), intent_id=uuid4(), amount=usd("1")))


def version_skipped(c: Corrupted) -> None:
    account = c.get(Account, c.account.id)
    fields = c.next_of(account) | {"originator_version": account.version + 2}
    c.raw(ReservationReleased(**fields, intent_id=uuid4(), amount=usd("1")))


def event_of_another_kind(c: Corrupted) -> None:
    account = c.get(Account, c.account.id)
    c.raw(PositionFlagged(**c.next_of(account), flag=PositionFlag.ORPHAN, detail="wrong stream"))


def intent_of_no_account(c: Corrupted) -> None:
    intent = Intent.record(
        uuid4(),
        kind=IntentKind.BALANCE_ADD,
        account_id=uuid4(),
        payload=BalanceChange(amount=usd("1")),
        epoch=1,
        recorded_at=c.now,
    )
    c.store.save(intent)


def key_of_no_intent(c: Corrupted) -> None:
    origin = Origin(actor="bot", key="k1", digest="d" * 64)
    c.store.save(KeyedRequest.record(origin, uuid4(), recorded_at=c.now))


def key_of_an_intent_sent_without_it(c: Corrupted) -> None:
    intent = c.get(Intent, c.get(Position, "kept").intent_id)
    origin = Origin(actor="bot", key="k2", digest="d" * 64)
    c.store.save(KeyedRequest.record(origin, intent.id, recorded_at=c.now))


def keyed_intent_without_its_record(c: Corrupted) -> None:
    intent = Intent.record(
        uuid4(),
        kind=IntentKind.BALANCE_ADD,
        account_id=c.account.id,
        payload=BalanceChange(amount=usd("1")),
        epoch=1,
        recorded_at=c.now,
        origin=Origin(actor="bot", key="k3", digest="d" * 64),
    )
    c.store.save(intent)


def answer_unlike_its_intent(c: Corrupted) -> None:
    origin = Origin(actor="bot", key="k4", digest="d" * 64)
    intent = Intent.record(
        uuid4(),
        kind=IntentKind.POSITION_CLOSE,
        account_id=c.account.id,
        payload=CloseRequest(position_id=c.ids["kept"]),
        epoch=1,
        recorded_at=c.now,
        origin=origin,
    )
    intent.submit(recorded_at=c.now)
    request = KeyedRequest.record(origin, intent.id, recorded_at=c.now)
    answer = OperationResult(intent_id=intent.id, kind=intent.kind, status="completed")
    request.answer(answer, recorded_at=c.now)
    c.store.save(intent, request)


BROKEN: list[tuple[Callable[[Corrupted], None], ProblemKind, str]] = [
    (snapshot_disagrees, ProblemKind.ACCOUNT, "total 99643.10 USD summed from its events"),
    (view_disagrees, ProblemKind.VIEW, "reserved 0.00 in the balances view"),
    (reservation_of_no_intent, ProblemKind.RESERVATION, "not in the log"),
    (reservation_of_a_failed_intent, ProblemKind.RESERVATION, "which is failed"),
    (reservation_of_another_amount, ProblemKind.RESERVATION, "which reserves 10.00 USD"),
    (intent_in_flight_reserves_nothing, ProblemKind.RESERVATION, "holds nothing for it"),
    (reservation_released_early, ProblemKind.RESERVATION, "holds nothing for it"),
    (deposit_intent_without_deposit, ProblemKind.INTENT, "has no deposit"),
    (deposit_of_another_amount, ProblemKind.INTENT, "is not what completed BALANCE_ADD"),
    (open_intent_without_position, ProblemKind.INTENT, "opened by it"),
    (open_intent_without_settlement, ProblemKind.INTENT, "no funds settled"),
    (close_intent_without_fill, ProblemKind.INTENT, "no closing fill"),
    (level_not_asked_for, ProblemKind.INTENT, "is not what completed update intent"),
    (position_without_intent, ProblemKind.POSITION, "names no opening intent"),
    (adopted_without_flag, ProblemKind.POSITION, "never flagged external"),
    (open_position_holds_nothing, ProblemKind.POSITION, "holds no funds for it"),
    (closed_position_holds_funds, ProblemKind.POSITION, "still holds 10.00 USD"),
    (pnl_without_a_close, ProblemKind.POSITION, "realised 25.00 for it"),
    (event_after_a_close, ProblemKind.POSITION, "follows the close"),
    (intent_event_after_its_end, ProblemKind.INTENT, "follows the end (completed)"),
    (event_that_does_not_apply, ProblemKind.ACCOUNT, "does not apply to account"),
    (version_skipped, ProblemKind.STREAM, "where 17 comes next"),
    (event_of_another_kind, ProblemKind.STREAM, "a position event in the stream of account"),
    (intent_of_no_account, ProblemKind.INTENT, "names no account"),
    (key_of_no_intent, ProblemKind.REQUEST, "not in the log"),
    (key_of_an_intent_sent_without_it, ProblemKind.REQUEST, "sent without it"),
    (keyed_intent_without_its_record, ProblemKind.REQUEST, "which has no record"),
    (answer_unlike_its_intent, ProblemKind.REQUEST, "kept the answer completed"),
]


@pytest.mark.parametrize(
    ("corrupt", "kind", "message"), BROKEN, ids=[b[0].__name__ for b in BROKEN]
)
def test_a_broken_invariant_is_named_first(ledger, corrupt, kind, message):
    corrupt(ledger)
    verdict = verify(ledger.store)
    assert not verdict.ok
    first = verdict.problems[0]
    assert (first.kind, message in first.message) == (kind, True), first.describe()


def test_an_event_that_breaks_its_aggregate_is_named_at_its_sequence(ledger):
    event_that_does_not_apply(ledger)
    verdict = verify(ledger.store)
    assert verdict.problems[0].sequence == verdict.sequence
