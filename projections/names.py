"""Account names, for views whose rows show them: each such view keeps its own copy.

Events name accounts by id (derived from the name, so it cannot be
reversed); `account.opened` carries the name. A view that shows names
keeps them in a table of its own, so it can be rebuilt alone.
"""

from __future__ import annotations

from uuid import UUID

import msgspec

from ledger.account import AccountOpened
from projections.rows import Rows, Table


class AccountName(msgspec.Struct, frozen=True, kw_only=True):
    account_id: UUID
    name: str
    currency: str


def names_table(view_table: str) -> Table[AccountName]:
    return Table(f"{view_table}_accounts", AccountName, ("account_id",))


def remember(names: Rows[AccountName], event: AccountOpened) -> None:
    names.put(AccountName(account_id=event.originator_id, name=event.name, currency=event.currency))


def name_of(names: Rows[AccountName], account_id: UUID) -> str:
    """The account's name; its id if the log never opened it (it shows, it is not guessed)."""
    known = names.get(account_id)
    return str(account_id) if known is None else known.name
