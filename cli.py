"""The `ledger` command line, and the composition root.

This is the one place concrete adapters are chosen: the store from
`--store` / `LEDGER_STORE`, the broker from `--broker` / `LEDGER_BROKER`.
Every error a user can cause ends as one line on stderr and a non-zero
exit code:

    0  success
    1  the ledger refused the request (invalid value, insufficient funds, ...)
    2  the command line itself was wrong (unknown option, missing argument)
    3  the store or the broker could not be opened or read
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, NoReturn

import anyio
import msgspec
import typer
from typer.exceptions import TyperException

from adapters.paper.books import PaperBrokerError
from adapters.paper.broker import PaperBroker
from adapters.paper.settings import DEFAULT_BROKER_URL, BrokerURLError
from adapters.sqlite_store import NotDurableError
from adapters.store import DEFAULT_STORE_URL, Store, StoreError
from ledger.errors import LedgerError
from ledger.money import Money

EXIT_REFUSED = 1
EXIT_STORE = 3

app = typer.Typer(
    name="ledger",
    help="An event-sourced trading ledger with a write-ahead intent log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def ledger() -> None:
    """An event-sourced trading ledger with a write-ahead intent log."""


StoreOption = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="LEDGER_STORE",
        help="Store URL: sqlite:///path.db or postgresql://user:pass@host:port/db.",
        show_default=True,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
BrokerOption = Annotated[
    str,
    typer.Option(
        "--broker",
        envvar="LEDGER_BROKER",
        help="Broker URL: paper:///path.db[?seed=N&scope=forever|open_only|none&faults=...].",
        show_default=True,
    ),
]
AllOption = Annotated[
    bool, typer.Option("--all", help="Include finished orders and closed positions.")
]

broker_app = typer.Typer(
    help="What the broker itself says: its positions, orders, fills and balances.",
    no_args_is_help=True,
)
app.add_typer(broker_app, name="broker")


def fail(message: str, code: int) -> NoReturn:
    """Print one line on stderr and exit with `code`."""
    typer.echo(f"ledger: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def open_broker(url: str) -> Iterator[PaperBroker]:
    try:
        broker = PaperBroker.open(url)
    except (BrokerURLError, PaperBrokerError, NotDurableError) as error:
        fail(str(error), EXIT_STORE)
    with broker:
        yield broker


@contextmanager
def open_store(url: str) -> Iterator[Store]:
    try:
        store = Store.open(url)
    except StoreError as error:
        fail(str(error), EXIT_STORE)
    with store:
        yield store


def print_json(value: object) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def errors_as_exit_codes(command: Callable[..., None]) -> Callable[..., None]:
    """Turn the ledger's own errors into one line and an exit code, not a traceback."""
    import functools  # noqa: PLC0415 - only needed while building the app

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> None:
        try:
            command(*args, **kwargs)
        except LedgerError as error:
            fail(str(error), EXIT_REFUSED)
        except StoreError as error:
            fail(str(error), EXIT_STORE)

    return wrapper


@app.command()
@errors_as_exit_codes
def info(store: StoreOption = DEFAULT_STORE_URL, as_json: JsonOption = False) -> None:  # noqa: FBT002
    """Show the store's kind and location, event count, last sequence number and schema version."""
    with open_store(store) as opened:
        details = opened.info()
    if as_json:
        print_json(details)
        return
    for field in details.__struct_fields__:
        typer.echo(f"{field.replace('_', ' ')}: {getattr(details, field)}")


def show(rows: Sequence[msgspec.Struct], columns: Sequence[str], *, as_json: bool) -> None:
    """Print rows as JSON (money and prices as strings) or as an aligned table."""
    if as_json:
        print_json(list(rows))
        return
    if not rows:
        typer.echo("(none)")
        return
    cells = [[_cell(getattr(row, column)) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)
    ]
    typer.echo(
        "  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True))
    )
    for line in cells:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


@broker_app.command("positions")
@errors_as_exit_codes
def broker_positions(
    broker: BrokerOption = DEFAULT_BROKER_URL,
    include_closed: AllOption = False,  # noqa: FBT002
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """The broker's open positions, with its stop-loss and take-profit levels."""
    with open_broker(broker) as opened:
        rows = anyio.run(opened.all_positions if include_closed else opened.positions)
    columns = ["broker_ref", "account", "symbol", "side", "quantity", "entry_price"]
    show(rows, [*columns, "stop_loss", "take_profit", "client_id"], as_json=as_json)


@broker_app.command("orders")
@errors_as_exit_codes
def broker_orders(
    broker: BrokerOption = DEFAULT_BROKER_URL,
    include_done: AllOption = False,  # noqa: FBT002
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Working orders; with --all, every order the broker ever accepted."""
    with open_broker(broker) as opened:
        rows = anyio.run(opened.all_orders if include_done else opened.open_orders)
    columns = ["broker_ref", "client_id", "account", "action", "symbol", "side", "quantity"]
    show(rows, [*columns, "filled_quantity", "status"], as_json=as_json)


@broker_app.command("fills")
@errors_as_exit_codes
def broker_fills(
    broker: BrokerOption = DEFAULT_BROKER_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Every execution, with its stable fill id, fee, P&L and reason."""
    with open_broker(broker) as opened:
        rows = anyio.run(opened.fills)
    columns = ["fill_id", "order_ref", "position_ref", "account", "symbol", "side", "quantity"]
    show(rows, [*columns, "price", "fee", "pnl", "reason", "client_id"], as_json=as_json)


@broker_app.command("balance")
@errors_as_exit_codes
def broker_balance(
    broker: BrokerOption = DEFAULT_BROKER_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Each account's balance, funds held by open positions, and what is available."""
    with open_broker(broker) as opened:
        rows = anyio.run(opened.account)
    show(rows, ["account", "currency", "balance", "used", "available"], as_json=as_json)


@broker_app.command("fund")
@errors_as_exit_codes
def broker_fund(
    account: Annotated[str, typer.Argument(help="The paper account to credit.")],
    amount: Annotated[str, typer.Argument(help="How much, e.g. 10000 or 2500.50.")],
    currency_code: Annotated[str, typer.Option("--currency", help="The account's currency.")],
    broker: BrokerOption = DEFAULT_BROKER_URL,
) -> None:
    """Credit a paper broker account (creating it in that currency if it is new)."""
    money = Money.parse(amount, currency_code, positive=True)
    with open_broker(broker) as opened:
        anyio.run(opened.fund, account, money)
    typer.echo(f"funded {account} with {money}")


@broker_app.command("advance")
@errors_as_exit_codes
def broker_advance(
    steps: Annotated[
        int, typer.Argument(min=1, max=86_400, help="Price steps (broker seconds) to move on.")
    ] = 1,
    broker: BrokerOption = DEFAULT_BROKER_URL,
) -> None:
    """Let the paper broker's time pass: prices move, stops and targets trigger."""
    with open_broker(broker) as opened:
        anyio.run(opened.advance, steps)
        now = anyio.run(opened.server_time)
    typer.echo(f"advanced {steps} steps; broker time is {now.isoformat()}")


def main() -> None:
    """Run the CLI; a usage error is one line on stderr and exit code 2, like any other error."""
    try:
        code = app(standalone_mode=False)
    except TyperException as error:  # the command line was wrong: usage errors are these
        typer.echo(f"ledger: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except typer.Abort:
        typer.echo("ledger: aborted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
