"""A known history written straight through the store, as the engine and recovery write it.

Every kind of event the views read happens in it at least once: an
account opened and funded, a position opened through an intent (reserve,
then settle), increased by a later fill, protected, partly closed and
closed; one adopted from the broker (committed, flagged, a flag cleared);
an intent left in flight, one awaiting review, one resolved by an operator;
fees; and days that change.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID, uuid4

from adapters.store import Store
from ledger.account import Account
from ledger.instruments import Instrument, Price, Quantity, Side
from ledger.intent import Evidence, Intent, IntentKind, IntentStatus, OpenRequest
from ledger.money import Money
from ledger.position import Position, PositionFlag, Provenance, position_id

START = datetime(2026, 3, 4, 1, 0, tzinfo=UTC)
BTC = Instrument(
    symbol="BTCUSD", quote_currency="USD", price_tick=Decimal("0.5"), quantity_step=Decimal("0.001")
)


def usd(text: str) -> Money:
    return Money.parse(text, "USD")


class Scenario:
    """Writes the history step by step; `now` moves on an hour a step."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.now = START
        self.account = Account.open("main", "USD", recorded_at=self.tick())
        self.account.deposit(usd("100000"), recorded_at=self.tick())
        store.save(self.account)

    def tick(self, hours: int = 1) -> datetime:
        self.now += timedelta(hours=hours)
        return self.now

    def intent(self, reservation: Money | None = None) -> Intent:
        intent = Intent.record(
            uuid4(),
            kind=IntentKind.POSITION_OPEN,
            account_id=self.account.id,
            payload=OpenRequest(symbol="BTCUSD", side=Side.LONG, quantity=Decimal("0.5")),
            epoch=1,
            recorded_at=self.tick(),
            reservation=reservation,
        )
        intent.submit(recorded_at=self.now)
        return intent

    def open_position(self, quantity: str = "0.5", price: str = "60000") -> Position:
        """Commit 1 then commit 2 of an open: reserve, then settle into a position."""
        reservation = usd(str(Decimal(quantity) * Decimal(price) * Decimal("1.01")))
        intent = self.intent(reservation)
        self.account.reserve(intent.id, reservation, recorded_at=self.now)
        self.store.save(intent, self.account)
        position = Position.open(
            position_id(intent.id),
            account_id=self.account.id,
            instrument=BTC,
            side=Side.LONG,
            quantity=Quantity(Decimal(quantity)),
            entry_price=Price(Decimal(price)),
            recorded_at=self.tick(),
            stop_loss=Price(Decimal(50000)),
            broker_ref=f"P-{intent.id.hex[:6]}",
            client_id=intent.client_id,
            intent_id=intent.id,
        )
        cost = BTC.funds_required(Quantity(Decimal(quantity)), Price(Decimal(price)))
        self.account.settle(intent.id, position.id, cost, recorded_at=self.now)
        self.account.charge_fee(usd("3.50"), "trading fee", recorded_at=self.now)
        intent.complete(Evidence(source="submit", observed_at=self.now), recorded_at=self.now)
        self.store.save(intent, position, self.account)
        return position

    def close(self, position: Position, quantity: str, price: str) -> None:
        size = Quantity(Decimal(quantity))
        committed = self.account.commitments[position.id]
        released = (
            committed
            if size == position.quantity
            else usd(str((committed.amount * size / position.quantity).quantize(Decimal("0.01"))))
        )
        pnl = position.close(size, Price(Decimal(price)), recorded_at=self.tick())
        self.account.realise_pnl(position.id, pnl, released, recorded_at=self.now)
        self.store.save(position, self.account)

    def adopt(self) -> Position:
        """What recovery does with a position found only at the broker."""
        position = Position.open(
            uuid4(),
            account_id=self.account.id,
            instrument=BTC,
            side=Side.SHORT,
            quantity=Quantity(Decimal("0.2")),
            entry_price=Price(Decimal(61000)),
            recorded_at=self.tick(),
            broker_ref="EXT-1",
            provenance=Provenance.ADOPTED,
        )
        self.account.commit(position.id, usd("12200"), recorded_at=self.now)
        position.flag(PositionFlag.EXTERNAL, "opened at the broker by hand", recorded_at=self.now)
        position.flag(PositionFlag.QUANTITY_MISMATCH, "broker holds 0.3", recorded_at=self.now)
        self.store.save(position, self.account)
        return position

    def write_everything(self) -> dict[str, UUID]:
        """The whole history; returns the ids a test looks for."""
        kept = self.open_position()
        kept.increase(
            Quantity(Decimal("0.1")), Price(Decimal(60500)), "F-2", recorded_at=self.tick()
        )
        self.account.commit(kept.id, usd("6050"), recorded_at=self.now)
        kept.change_take_profit(Price(Decimal(70000)), "requested", recorded_at=self.now)
        self.store.save(kept, self.account)
        self.tick(hours=24)  # the next day
        gone = self.open_position(quantity="0.3", price="62000")
        self.close(gone, "0.1", "63000")
        self.close(gone, "0.2", "61000.5")
        adopted = self.adopt()
        adopted.clear_flag(PositionFlag.QUANTITY_MISMATCH, "broker agrees", recorded_at=self.tick())
        self.store.save(adopted)
        in_flight = self.intent(usd("1000"))
        self.account.reserve(in_flight.id, usd("1000"), recorded_at=self.now)
        reviewed = self.intent()
        reviewed.flag_for_review("two candidate orders", recorded_at=self.tick())
        resolved = self.intent(usd("500"))
        self.account.reserve(resolved.id, usd("500"), recorded_at=self.now)
        resolved.flag_for_review("no order found yet", recorded_at=self.tick())
        self.store.save(in_flight, reviewed, resolved, self.account)
        resolved.resolve_by_operator(
            IntentStatus.ROLLED_BACK, actor="ops", reason="never sent", recorded_at=self.tick()
        )
        self.account.release_reservation(resolved.id, recorded_at=self.now)
        self.account.withdraw(usd("250"), recorded_at=self.now)
        self.store.save(resolved, self.account)
        return {
            "kept": kept.id,
            "gone": gone.id,
            "adopted": adopted.id,
            "in_flight": in_flight.id,
            "reviewed": reviewed.id,
        }
