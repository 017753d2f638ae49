"""The `ledger` command line, and the composition root.

This is the one place concrete adapters are chosen: the store from
`--store` / `LEDGER_STORE`. Every error a user can cause ends as one line
on stderr and a non-zero exit code:

    0  success
    1  the ledger refused the request (invalid value, insufficient funds, ...)
    2  the command line itself was wrong (unknown option, missing argument)
    3  the store could not be opened or read
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import msgspec
import typer

from adapters.store import DEFAULT_STORE_URL, Store, StoreError
from ledger.errors import LedgerError

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


def fail(message: str, code: int) -> NoReturn:
    """Print one line on stderr and exit with `code`."""
    typer.echo(f"ledger: {message}", err=True)
    raise typer.Exit(code)


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
