"""Long histories, written straight through the store, for the scenarios that need many events.

Writing a million events through the engine would take the benchmark
most of its time; these are the same events the engine writes for a
deposit (an intent recorded, submitted and completed, the account
credited), saved many operations to a transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import uuid4

from adapters.store import Store
from ledger.account import Account, account_id
from ledger.instruments import Side
from ledger.intent import BalanceChange, Evidence, Intent, IntentKind, OpenRequest
from ledger.money import Money

START = datetime(2026, 1, 5, tzinfo=UTC)
EVENTS_PER_DEPOSIT = 4
"""An intent's recorded, submitted and completed, and the account's deposited."""
OPERATIONS_PER_SAVE = 250


def deposits(store: Store, account: str, events: int, *, intents: bool = True) -> int:
    """About `events` events of deposits into `account` (opened first); return how many.

    Without `intents`, only the account's own events: a long account stream.
    """
    moment = START
    held = store.get(Account, account_id(account))
    written = 0
    if held is None:
        held = Account.open(account, "USD", recorded_at=moment)
        written += 1
    amount = Money.parse("1", "USD")
    per_deposit = EVENTS_PER_DEPOSIT if intents else 1
    while written < events:
        batch = []
        for _ in range(min(OPERATIONS_PER_SAVE, (events - written) // per_deposit + 1)):
            moment += timedelta(milliseconds=1)
            if not intents:
                held.deposit(amount, recorded_at=moment)
                written += 1
                continue
            intent = Intent.record(
                uuid4(),
                kind=IntentKind.BALANCE_ADD,
                account_id=held.id,
                payload=BalanceChange(amount=amount),
                epoch=1,
                recorded_at=moment,
            )
            intent.submit(recorded_at=moment)
            evidence = Evidence(source="ledger", observed_at=moment, detail="no broker call")
            intent.complete(evidence, recorded_at=moment)
            held.deposit(amount, recorded_at=moment, intent_id=intent.id)
            batch.append(intent)
            written += EVENTS_PER_DEPOSIT
        store.save(held, *batch)
    return written


def pending_opens(store: Store, account: str, count: int) -> None:
    """`count` opens recorded and submitted, never answered: what recovery must settle."""
    held = store.get(Account, account_id(account))
    if held is None:
        raise LookupError(f"no account {account}")
    moment = START + timedelta(days=1)
    intents = []
    for _ in range(count):
        intent_id = uuid4()
        reservation = Money.parse("1", "USD")
        held.reserve(intent_id, reservation, recorded_at=moment)
        intent = Intent.record(
            intent_id,
            kind=IntentKind.POSITION_OPEN,
            account_id=held.id,
            payload=OpenRequest(symbol="EURUSD", side=Side.LONG, quantity=Decimal(1000)),
            epoch=1,
            recorded_at=moment,
            reservation=reservation,
            broker_time=moment,
        )
        intent.submit(recorded_at=moment)
        intents.append(intent)
    store.save(held, *intents)
