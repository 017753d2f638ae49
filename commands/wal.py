"""`ledger wal ...`: the write-ahead intent log."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec
import typer

from adapters.store import DEFAULT_STORE_URL
from commands.shared import JsonOption, StoreOption, errors_as_exit_codes, open_store, show
from ledger.account import Account
from ledger.intent import Intent

wal_app = typer.Typer(help="The write-ahead intent log.", no_args_is_help=True)


class PendingIntent(msgspec.Struct, frozen=True, kw_only=True):
    intent_id: UUID
    kind: str
    status: str
    account: str
    client_id: str
    recorded_at: datetime


@wal_app.command("pending")
@errors_as_exit_codes
def pending(store: StoreOption = DEFAULT_STORE_URL, as_json: JsonOption = False) -> None:  # noqa: FBT002
    """Intents not yet completed, failed or rolled back: what recovery must resolve."""
    rows: list[PendingIntent] = []
    with open_store(store) as opened:
        names: dict[UUID, str] = {}
        for intent_id in opened.unfinished_intents():
            intent = opened.get(Intent, intent_id)
            if intent is None:  # pragma: no cover - listed because it has events
                continue
            if intent.account_id not in names:
                account = opened.get(Account, intent.account_id)
                names[intent.account_id] = account.name if account else str(intent.account_id)
            rows.append(
                PendingIntent(
                    intent_id=intent.id,
                    kind=intent.kind.value,
                    status=intent.status.value,
                    account=names[intent.account_id],
                    client_id=intent.client_id,
                    recorded_at=intent.recorded_at,
                )
            )
    columns = ["intent_id", "kind", "status", "account", "client_id", "recorded_at"]
    show(rows, columns, as_json=as_json)
