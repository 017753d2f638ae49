"""`ledger status`: what stands between the ledger and trading safely right now.

Engaged kill switches, the broker's circuit breaker, intents in flight or
awaiting an operator, and naked positions: open positions whose
stop-loss the broker does not confirm (missing there, or at another
level than the ledger's last confirmed one). Reconciliation restores
those (`--sl-policy restore`); this shows them between passes.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

import anyio
import msgspec
import typer

from adapters.paper.settings import DEFAULT_BROKER_URL
from adapters.store import DEFAULT_STORE_URL, Store
from commands.shared import (
    BrokerOption,
    JsonOption,
    StoreOption,
    errors_as_exit_codes,
    open_broker,
    open_store,
    print_json,
    show,
)
from ledger.account import Account
from ledger.breaker import CircuitBreaker, breaker_id
from ledger.intent import Intent, IntentStatus
from ledger.ports import BrokerPosition
from ledger.position import Position
from ledger.usage import SwitchRow, switch_rows


class NakedPosition(msgspec.Struct, frozen=True, kw_only=True):
    position_id: UUID
    account: str
    symbol: str
    side: str
    quantity: Decimal
    ledger_stop_loss: Decimal | None
    broker_stop_loss: Decimal | None
    why: str


class BreakerState(msgspec.Struct, frozen=True, kw_only=True):
    venue: str
    open: bool
    cause: str | None = None
    opened_at: datetime | None = None


class Status(msgspec.Struct, frozen=True, kw_only=True):
    kill_switches: list[SwitchRow]
    """Only the engaged ones."""
    breaker: BreakerState
    intents_in_flight: int
    intents_needing_review: int
    naked_positions: list[NakedPosition]


def naked_positions(store: Store, at_broker: list[BrokerPosition]) -> list[NakedPosition]:
    """Open ledger positions whose stop-loss the broker does not hold at the ledger's level."""
    by_ref = {position.broker_ref: position for position in at_broker}
    naked = []
    for identity in store.open_positions():
        held = store.get(Position, identity)
        if held is None:
            continue
        there = by_ref.get(held.broker_ref or "")
        broker_stop = None if there is None else there.stop_loss
        if held.stop_loss is None:
            why = "no stop-loss in the ledger"
        elif there is None:
            why = "the broker does not show the position"
        elif broker_stop is None:
            why = "the broker holds no stop-loss"
        elif broker_stop != held.stop_loss:
            why = "the broker's stop-loss differs"
        else:
            continue
        owner = store.get(Account, held.account_id)
        naked.append(
            NakedPosition(
                position_id=held.id,
                account=owner.name if owner is not None else str(held.account_id),
                symbol=held.instrument.symbol,
                side=held.side.value,
                quantity=held.quantity,
                ledger_stop_loss=held.stop_loss,
                broker_stop_loss=broker_stop,
                why=why,
            )
        )
    return naked


def _breaker(store: Store, venue: str) -> BreakerState:
    stored = store.get(CircuitBreaker, breaker_id(venue))
    if stored is None or not stored.is_open:
        return BreakerState(venue=venue, open=False)
    return BreakerState(venue=venue, open=True, cause=stored.cause, opened_at=stored.opened_at)


@errors_as_exit_codes
def status(
    store: StoreOption = DEFAULT_STORE_URL,
    broker: BrokerOption = DEFAULT_BROKER_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Kill switches, the circuit breaker, intents in flight, and naked positions."""
    with open_store(store) as opened, open_broker(broker) as venue:
        at_broker = anyio.run(venue.positions)
        intents = [opened.get(Intent, i) for i in opened.unfinished_intents()]
        report = Status(
            kill_switches=[row for row in switch_rows(opened) if row.engaged],
            breaker=_breaker(opened, venue.capabilities.venue),
            intents_in_flight=len(intents),
            intents_needing_review=sum(
                1 for i in intents if i is not None and i.status is IntentStatus.NEEDS_REVIEW
            ),
            naked_positions=naked_positions(opened, at_broker),
        )
    if as_json:
        print_json(report)
        return
    switches = ", ".join(row.scope for row in report.kill_switches) or "none engaged"
    typer.echo(f"kill switches: {switches}")
    state = f"open since {report.breaker.opened_at} ({report.breaker.cause})"
    typer.echo(
        f"circuit breaker ({report.breaker.venue}): {state if report.breaker.open else 'closed'}"
    )
    typer.echo(
        f"intents: {report.intents_in_flight} in flight, "
        f"{report.intents_needing_review} awaiting an operator"
    )
    typer.echo(f"naked positions: {len(report.naked_positions)}")
    if report.naked_positions:
        columns = ["position_id", "account", "symbol", "side", "quantity", "ledger_stop_loss"]
        show(report.naked_positions, [*columns, "broker_stop_loss", "why"], as_json=False)
