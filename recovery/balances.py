"""Balances: the ledger's against the broker's, explained, never adjusted.

A difference is explained, as far as it can be, by the broker fills the
ledger has not recorded yet (their P&L and fees); the rest is reported
as unexplained. No pass ever writes a balance correction.
"""

from __future__ import annotations

from decimal import Decimal

from ledger.account import Account, account_id
from ledger.reconciliation import Finding
from recovery.context import Pass


async def reconcile_balances(run: Pass) -> None:
    for balance in await run.engine.broker.account():
        name = balance.account
        ledger_account = await run.read(Account, account_id(name))
        if ledger_account is None:
            detail = f"the broker holds {balance.balance}; the ledger has no such account"
            run.found(Finding.UNKNOWN_ACCOUNT, name, name, detail)
            continue
        if balance.balance.currency != ledger_account.currency:
            detail = (
                f"the broker holds {balance.balance.currency}, the ledger {ledger_account.currency}"
            )
            run.found(Finding.BALANCE_DIFFERENCE, name, name, detail)
            continue
        difference = balance.balance.amount - ledger_account.total.amount
        if difference == 0:
            continue
        explained = run.unrecorded.get(name, Decimal(0))
        detail = (
            f"ledger {ledger_account.total}, broker {balance.balance}: "
            f"{explained} explained by broker fills not recorded yet, "
            f"{difference - explained} unexplained"
        )
        run.found(Finding.BALANCE_DIFFERENCE, name, name, detail)
