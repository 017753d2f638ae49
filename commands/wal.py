"""`ledger wal ...`: the write-ahead intent log."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

import msgspec
import typer

from adapters.store import DEFAULT_STORE_URL
from commands.shared import JsonOption, StoreOption, errors_as_exit_codes, open_store, show
from commands.views import view_errors
from projections import catch_up, queries

wal_app = typer.Typer(help="The write-ahead intent log.", no_args_is_help=True)


class PendingIntent(msgspec.Struct, frozen=True, kw_only=True):
    intent_id: UUID
    kind: str
    status: str
    account: str
    client_id: str
    recorded_at: datetime
    age_seconds: int
    """How long ago it was recorded, when the command ran."""
    epoch: int
    reservation: Decimal | None
    currency: str | None
    reason: str | None
    """Why it awaits an operator's review, when it does."""


@wal_app.command("pending")
@errors_as_exit_codes
@view_errors
def pending(store: StoreOption = DEFAULT_STORE_URL, as_json: JsonOption = False) -> None:  # noqa: FBT002
    """Intents not yet completed, failed or rolled back: what recovery must resolve."""
    with open_store(store) as opened:
        catch_up(opened)
        rows = queries.pending_intents(opened)
    now = datetime.now(UTC)
    intents = [
        PendingIntent(
            intent_id=row.intent_id,
            kind=row.kind,
            status=row.status,
            account=row.account,
            client_id=row.client_id,
            recorded_at=row.recorded_at,
            age_seconds=max(0, int((now - row.recorded_at).total_seconds())),
            epoch=row.epoch,
            reservation=row.reservation,
            currency=row.currency,
            reason=row.reason,
        )
        for row in rows
    ]
    columns = ["intent_id", "kind", "status", "account", "client_id", "age_seconds"]
    show(intents, columns, as_json=as_json)
