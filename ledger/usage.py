"""The risk controls as they stand: each account's limits and use of them, and the kill switches.

What `ledger limits show` and `ledger kill-switch status` print, and the
API answers; read from the store, outside the writer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

import msgspec

from ledger.account import Account
from ledger.controls import RiskControls, controls_id
from ledger.limits import Limits
from ledger.ports import LedgerStore
from ledger.risk import exposure
from ledger.writer import UnitOfWork


class LimitsRow(msgspec.Struct, frozen=True, kw_only=True):
    """An account's limits and what it uses of them today, in flight counted at worst case."""

    account: str
    currency: str
    limits: Limits
    trades_today: int
    open_positions: int
    loss_today: Decimal
    at_risk: Decimal
    """What open positions and opens in flight could still lose, at their stops."""
    equity: Decimal
    unbounded: list[str]
    """Positions and opens in flight that nothing bounds the loss of (no stop-loss)."""


class SwitchRow(msgspec.Struct, frozen=True, kw_only=True):
    scope: str
    engaged: bool
    actor: str | None = None
    reason: str | None = None
    engaged_at: datetime | None = None
    flatten: bool = False


def stored_controls(store: LedgerStore, account: UUID | None) -> RiskControls:
    """The controls over `account` (None: over every account), blank if never set."""
    return store.get(RiskControls, controls_id(account)) or RiskControls.start(account)


def limits_row(store: LedgerStore, held: Account) -> LimitsRow:
    used = exposure(UnitOfWork({}, store), held, datetime.now(UTC).date())
    return LimitsRow(
        account=held.name,
        currency=held.currency,
        limits=stored_controls(store, held.id).limits,
        trades_today=used.trades_today,
        open_positions=used.open_positions,
        loss_today=used.loss_today.amount,
        at_risk=used.at_risk.amount,
        equity=used.equity.amount,
        unbounded=list(used.unbounded),
    )


def every_limits_row(store: LedgerStore) -> list[LimitsRow]:
    rows = []
    for identity in store.accounts():
        held = store.get(Account, identity)
        if held is not None:
            rows.append(limits_row(store, held))
    return rows


def switch_rows(store: LedgerStore) -> list[SwitchRow]:
    """The switch over every account, then each account's, engaged or not."""
    scopes: list[tuple[UUID | None, str]] = [(None, "all")]
    for identity in store.accounts():
        held = store.get(Account, identity)
        if held is not None:
            scopes.append((identity, held.name))
    rows = []
    for scope, name in scopes:
        engaged = stored_controls(store, scope).kill_switch
        if engaged is None:
            rows.append(SwitchRow(scope=name, engaged=False))
        else:
            rows.append(
                SwitchRow(
                    scope=name,
                    engaged=True,
                    actor=engaged.actor,
                    reason=engaged.reason,
                    engaged_at=engaged.engaged_at,
                    flatten=engaged.flatten,
                )
            )
    return rows
