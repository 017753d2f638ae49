"""What "the ledger agrees with the broker" means, for every test that checks it."""

from __future__ import annotations

from collections.abc import Iterable

from adapters.store import Store
from audit.verify import verify
from ledger.intent import Intent, IntentStatus
from ledger.ports import BrokerPosition
from ledger.position import Position


def assert_agrees(store: Store, broker_positions: Iterable[BrokerPosition]) -> None:
    """Open positions (symbol, side, quantity, SL, TP) match by broker reference,
    nothing is left unfinished but intents awaiting an operator, and the audit is clean."""
    unfinished = [store.get(Intent, intent_id) for intent_id in store.unfinished_intents()]
    assert all(
        intent is not None and intent.status is IntentStatus.NEEDS_REVIEW for intent in unfinished
    ), "recovery left an intent in flight"
    held = [store.get(Position, position_id) for position_id in store.open_positions()]
    ledger_view = sorted(
        (p.broker_ref, p.instrument.symbol, p.side, p.quantity, p.stop_loss, p.take_profit)
        for p in held
        if p is not None
    )
    broker_view = sorted(
        (p.broker_ref, p.symbol, p.side, p.quantity, p.stop_loss, p.take_profit)
        for p in broker_positions
    )
    assert ledger_view == broker_view
    assert_audit_clean(store)


def assert_audit_clean(store: Store) -> None:
    """`ledger audit verify` finds nothing wrong: the hash chain and every invariant hold."""
    verdict = verify(store)
    assert verdict.ok, [problem.describe() for problem in verdict.problems]
