"""`ledger replay`, `ledger statement`, `ledger wal show`: what the ledger recorded, and when.

They read the event log itself, not the views, and write nothing. Times
given to them are ISO 8601 with a timezone (2026-05-01T20:00:00Z) and
compare with recorded times, the ledger's own clock. Exit codes are those
of every command; a stored event that cannot be decoded is exit code 3.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from decimal import Decimal
from typing import Annotated

import msgspec
import typer

from adapters.store import DEFAULT_STORE_URL
from audit.lifecycle import Lifecycle, lifecycle
from audit.problems import LogBroken
from audit.records import Record
from audit.replay import Replay
from audit.state import State
from audit.statement import Line, statement
from commands.shared import (
    EXIT_AUDIT_FAILED,
    JsonOption,
    StoreOption,
    errors_as_exit_codes,
    fail,
    open_store,
    print_json,
    show,
)
from commands.views import progress_bar, view_errors
from ledger.account import validate_account_name
from ledger.errors import InvalidValue
from ledger.ids import parse_id
from ledger.origin import Origin
from projections.rebuild import Progress

FromOption = Annotated[
    int | None,
    typer.Option(
        "--from",
        min=1,
        help="Show the events from this sequence number on; the state still counts every one.",
        show_default=False,
    ),
]
UntilOption = Annotated[
    str | None,
    typer.Option(
        "--until",
        help="End at this sequence number, or before the first event recorded after this ISO "
        "time (recorded times are the ledger's clock).",
        show_default=False,
    ),
]
AccountOption = Annotated[
    str | None,
    typer.Option(
        "--account",
        help="Only this account's events, its positions' and intents', and reports naming it.",
        show_default=False,
    ),
]
PositionOption = Annotated[
    str | None,
    typer.Option(
        "--position",
        help="Only this position, the intents that name it, and its account's events about it.",
        show_default=False,
    ),
]
StartTimeOption = Annotated[
    str | None,
    typer.Option(
        "--from", help="From this ISO time on, after an opening balance line.", show_default=False
    ),
]
UntilTimeOption = Annotated[
    str | None,
    typer.Option("--until", help="Up to this ISO time, included.", show_default=False),
]
CsvOption = Annotated[
    bool, typer.Option("--csv", help="Print CSV: a header, then one row per line.")
]

BALANCE_COLUMNS = [
    "account",
    "currency",
    "total",
    "reserved",
    "committed",
    "available",
    "realised_pnl",
    "fees",
]
POSITION_COLUMNS = [
    "position_id",
    "account",
    "symbol",
    "side",
    "quantity",
    "entry_price",
    "stop_loss",
    "take_profit",
    "broker_ref",
]
LINE_COLUMNS = [
    "sequence",
    "recorded_at",
    "type",
    "total_change",
    "available_change",
    "total",
    "reserved",
    "committed",
    "available",
    "intent_id",
    "broker_ref",
]
EVIDENCE_COLUMNS = ["source", "observed_at", "broker_ref", "heuristic", "detail"]


def parse_time(text: str, field: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidValue(field, f"{text!r} is not an ISO 8601 time") from None
    if moment.utcoffset() is None:
        raise InvalidValue(field, f"{text!r} has no timezone: add one, e.g. Z or +00:00")
    return moment


def parse_until(text: str) -> int | datetime:
    """A sequence number (digits alone) or a time."""
    if text.isascii() and text.isdigit():
        if int(text) < 1:
            raise InvalidValue("until", "a sequence number is 1 or more")
        return int(text)
    if text.isascii() and text.lstrip("-").isdigit():
        raise InvalidValue("until", f"{text!r}: a sequence number is 1 or more")
    return parse_time(text, "until")


def describe(record: Record) -> str:
    """One event on one line: sequence, times, type, aggregate, and its payload as JSON."""
    venue = "-" if record.venue_time is None else record.venue_time.isoformat()
    payload = msgspec.json.encode(record.payload).decode()
    return (
        f"{record.sequence:>8}  {record.recorded_at.isoformat()}  {venue}  {record.type:<28}  "
        f"{record.aggregate} {record.aggregate_id}  {payload}"
    )


def replay_progress() -> AbstractContextManager[Progress | None]:
    # Events shown on the terminal are progress enough; a bar is for
    # output going to a file or a pipe.
    return nullcontext() if sys.stdout.isatty() else progress_bar("replaying")


@errors_as_exit_codes
@view_errors
def replay(
    start: FromOption = None,
    until: UntilOption = None,
    account: AccountOption = None,
    position: PositionOption = None,
    store: StoreOption = DEFAULT_STORE_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Every event in commit order, then the balances and open positions as of the last one.

    Each event shows its sequence number, recorded and venue times,
    aggregate, type and payload. The state counts every event up to the
    end, whatever --from, --account and --position show. With --json the
    output is JSON Lines, written as the log is read (memory stays the
    same however long it is): one object per event, then one
    {"state": ...} object. With the output going to a file or a pipe, a
    progress bar shows on the terminal.
    """
    end = None if until is None else parse_until(until)
    target = None if position is None else parse_id(position, "position")
    if account is not None:
        validate_account_name(account)
    with open_store(store) as opened, replay_progress() as progress:
        history = Replay(
            opened, start=start or 1, until=end, account=account, position=target, progress=progress
        )
        try:
            for record in history.records():
                if as_json:
                    print_json(record)
                else:
                    sys.stdout.write(describe(record) + "\n")
        except LogBroken as error:
            fail(str(error), EXIT_AUDIT_FAILED)
        state = history.state()
    if as_json:
        print_json({"state": state})
    else:
        show_state(state)


def show_state(state: State) -> None:
    moment = "-" if state.recorded_at is None else state.recorded_at.isoformat()
    typer.echo(f"state after event {state.sequence} (recorded {moment})")
    typer.echo("balances")
    show(state.balances, BALANCE_COLUMNS, as_json=False)
    typer.echo("open positions")
    show(state.positions, POSITION_COLUMNS, as_json=False)


@errors_as_exit_codes
@view_errors
def account_statement(
    account: Annotated[str, typer.Argument(help="The account's name.")],
    start: StartTimeOption = None,
    until: UntilTimeOption = None,
    store: StoreOption = DEFAULT_STORE_URL,
    as_json: JsonOption = False,  # noqa: FBT002
    as_csv: CsvOption = False,  # noqa: FBT002
) -> None:
    """Every change of an account's balance, with the running balance and the intent and broker
    reference behind it."""
    if as_json and as_csv:
        raise InvalidValue("format", "say --json or --csv, not both")
    validate_account_name(account)
    since = None if start is None else parse_time(start, "from")
    up_to = None if until is None else parse_time(until, "until")
    if since is not None and up_to is not None and up_to < since:
        raise InvalidValue("until", f"{until} comes before --from {start}")
    with open_store(store) as opened:
        heading, lines = statement(opened, account, start=since, until=up_to)
        if as_csv:
            write_csv(lines)
        elif as_json:
            write_json(heading, lines)
        else:
            typer.echo(f"statement of {heading.account} ({heading.currency})")
            show(list(lines), LINE_COLUMNS, as_json=False)


def write_json(heading: msgspec.Struct, lines: Iterator[Line]) -> None:
    """One JSON object, the heading's fields and "lines", written line by line as they are
    read: memory stays the same however long the statement."""
    head = msgspec.json.encode({**msgspec.structs.asdict(heading), "lines": []})
    sys.stdout.write(head[: -len(b"[]}")].decode() + "[")
    for index, line in enumerate(lines):
        sys.stdout.write(("," if index else "") + msgspec.json.encode(line).decode())
    sys.stdout.write("]}\n")


def write_csv(lines: Iterator[Line]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(Line.__struct_fields__)
    for line in lines:
        writer.writerow(_csv_cell(getattr(line, name)) for name in Line.__struct_fields__)


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")  # plain notation, never an exponent
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


@errors_as_exit_codes
@view_errors
def show_intent(
    intent_id: Annotated[str, typer.Argument(help="The intent's id.")],
    store: StoreOption = DEFAULT_STORE_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """An intent's whole lifecycle: its timings, the broker's evidence and the events it wrote."""
    target = parse_id(intent_id, "intent")
    with open_store(store) as opened:
        found = lifecycle(opened, target)
    if as_json:
        print_json(found)
    else:
        show_lifecycle(found)


def show_lifecycle(found: Lifecycle) -> None:
    reservation = "-" if found.reservation is None else str(found.reservation)
    facts = [
        ("intent", f"{found.intent_id} {found.kind} {found.status}"),
        ("account", found.account),
        ("asked by", _asked_by(found.origin)),
        ("client id", found.client_id),
        ("request", msgspec.json.encode(found.payload).decode()),
        ("reservation", reservation),
        ("recorded", found.recorded_at.isoformat()),
        ("submitted", _after(found.submitted_at, found.recorded_to_submitted_seconds, "recorded")),
        ("resolved", _after(found.resolved_at, found.submitted_to_resolved_seconds, "submitted")),
        ("broker ref", found.broker_ref or "-"),
        ("review", found.review_reason or "-"),
    ]
    if found.resolution is not None:
        done = found.resolution
        facts.append(("operator", f"{done.actor}: {done.outcome} ({done.reason})"))
    for label, text in facts:
        typer.echo(f"{label + ':':<13}{text}")
    typer.echo("evidence")
    show(found.evidence, EVIDENCE_COLUMNS, as_json=False)
    typer.echo("intent events")
    for record in found.steps:
        typer.echo(describe(record))
    typer.echo("ledger events it produced")
    for record in found.produced:
        typer.echo(describe(record))
    if not found.produced:
        typer.echo("(none)")


def _asked_by(origin: Origin | None) -> str:
    if origin is None:
        return "-"
    asked = origin.actor if origin.operator is None else f"{origin.operator} via {origin.actor}"
    return asked + ("" if origin.key is None else f" (idempotency key {origin.key!r})")


def _after(moment: datetime | None, seconds: float | None, since: str) -> str:
    if moment is None:
        return "-"
    return moment.isoformat() + ("" if seconds is None else f" ({seconds} s after {since})")


def register(app: typer.Typer, wal_app: typer.Typer) -> None:
    app.command("replay")(replay)
    app.command("statement")(account_statement)
    wal_app.command("show")(show_intent)
